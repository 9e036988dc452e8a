"""Time CLIP's text tower on SHIP-generator-style prompts: full context vs truncated vs grouped by length.

The reference code always runs the full 77-token context. The causal mask makes every position after a prompt's
end-of-text (EOT) token irrelevant to the feature pooled there, so `TextTower` skips them: prompts run in groups of
similar length, each truncated to its own longest EOT (`plan_groups` picks the groups from a per-pass overhead,
`GROUP_OVERHEAD_TOKENS`). Timed against the full context and against one pass truncated at the batch's longest EOT.

The batch is a SHIP generator step: `batch` prompts "[p1+r .. p4+r] {name}." with a per-prompt context (so no
shared prefix), class names drawn from 100 ImageNet classes, forward + backward to the context. Also measured:
the fixed cost of one transformer pass in tokens' worth of work, which is what the grouping trades against
padding. Open_clip ViT-B-16 with random weights (cost does not depend on the weights' values).

    .venv/bin/python benchmarks/text_truncation.py        # ~3-5 minutes on 2 cores
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from typing import Annotated

import typer


def main(
    model: Annotated[str, typer.Option(help="open_clip architecture whose text tower is timed")] = "ViT-B-16",
    batch: Annotated[int, typer.Option(help="prompts per forward pass (SHIP's generator batch is 256)")] = 256,
    repeats: Annotated[int, typer.Option(help="timed interleaved rounds after a warm-up round (median)")] = 3,
    threads: Annotated[int, typer.Option(help="torch intra-op threads (this machine has 2 cores)")] = 2,
) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP runtime starts (import below)
    import open_clip
    import torch
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from pipeline import text_tower
    from pipeline.text_tower import TextTower, plan_groups

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    clip = open_clip.create_model(model)
    del clip.visual
    tower = TextTower(clip.eval(), open_clip.get_tokenizer(model))
    names = list(IMAGENET_CLASSNAMES)[::10]
    labels = torch.randint(len(names), (batch,)).tolist()
    prompts, eot = tower.context_prompts([names[i] for i in labels], n_ctx=4)
    ctx = torch.zeros(batch, 4, tower.width, requires_grad=True)
    lengths = (eot + 1).tolist()
    cpu_overhead = text_tower.GROUP_OVERHEAD_TOKENS["cpu"]

    def step(truncate: bool, group: bool, overhead: float) -> torch.Tensor:
        text_tower.GROUP_OVERHEAD_TOKENS["cpu"] = overhead
        ctx.grad = None
        out = tower.encode_embeddings(tower.splice_context(prompts, ctx), eot, truncate=truncate, group=group)
        out.sum().backward()  # SHIP and CoOp backpropagate through the tower to the prompt vectors
        text_tower.GROUP_OVERHEAD_TOKENS["cpu"] = cpu_overhead
        return out.detach()

    variants = {
        "full context": (False, False, cpu_overhead),
        "truncated, one pass": (True, False, cpu_overhead),
        "grouped, exact lengths": (True, True, 0.0),
        f"grouped, planned ({cpu_overhead:g})": (True, True, cpu_overhead),
    }
    groups = {
        "full context": [tower.context_length],
        "truncated, one pass": [max(lengths)],
        "grouped, exact lengths": plan_groups(lengths, 0.0),
        f"grouped, planned ({cpu_overhead:g})": plan_groups(lengths, cpu_overhead),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    for r in range(repeats + 1):  # round 0 = warm-up; interleaved so machine load hits all variants alike
        for name, args in variants.items():
            t0 = time.perf_counter()
            outputs[name] = step(*args)
            if r:
                times[name].append(time.perf_counter() - t0)
        print(f"  round {r} done", file=sys.stderr, flush=True)

    # The fixed cost of one pass, in tokens of work: fit time = a * tokens + b over passes of 64 prompts.
    def pass_seconds(n: int, length: int) -> float:
        x = torch.randn(n, length, tower.width, requires_grad=True)
        e = torch.full((n,), length - 1)
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            tower.encode_embeddings(x, e, group=False).sum().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    short, long = pass_seconds(64, 4), pass_seconds(64, 16)
    per_token = (long - short) / (64 * 12)
    overhead_tokens = (short - 64 * 4 * per_token) / per_token
    single_tokens = pass_seconds(1, 1) / per_token

    mean_len = sum(lengths) / len(lengths)
    print(
        f"{model} text tower, random weights; torch threads {threads}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{batch} prompts 'X X X X {{name}}.' (per-prompt context, 100 ImageNet classes): EOT+1 mean {mean_len:.2f},"
        f" max {max(lengths)}, context {tower.context_length}; forward + backward, median of {repeats}"
    )
    base = statistics.median(times["full context"])
    trunc = statistics.median(times["truncated, one pass"])
    print(f"{'variant':28s}{'ms/step':>9s}{'tokens':>8s}{'passes':>8s}{'vs full':>9s}{'vs 1 pass':>10s}  max|diff|")
    for name in variants:
        t = statistics.median(times[name])
        cuts = groups[name]
        tokens = sum(c * sum(1 for n in lengths if lo < n <= c) for lo, c in itertools.pairwise([0, *cuts]))
        diff = (outputs[name] - outputs["full context"]).abs().max().item()
        print(f"{name:28s}{t * 1000:9.0f}{tokens:8d}{len(cuts):8d}{base / t:8.2f}x{trunc / t:9.2f}x  {diff:.1e}")
    print(
        f"one pass costs about {overhead_tokens:.0f} tokens' work beyond its tokens (64 prompts x 4 vs x 16 tokens);"
        f" a 1-token pass costs {single_tokens:.0f} tokens' work; GROUP_OVERHEAD_TOKENS['cpu'] = {cpu_overhead:g}"
    )


if __name__ == "__main__":
    typer.run(main)
