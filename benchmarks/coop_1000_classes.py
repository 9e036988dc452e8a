"""CoOp at ImageNet size: seconds per training step/epoch and peak memory of the text tower's variants.

One CoOp training step = the frozen text tower over all 1000 ImageNet class prompts "X X X X {name}." (4 learned
context vectors spliced in) + logits of a batch of 32 cached image features + cross-entropy + backward to the
context + an SGD step. The tower is open_clip's ViT-B-16 text tower with RANDOM weights (same FLOPs as the real
model, no download). Variants, all equal up to float error:

  full        all 77 context positions (the reference code's way)
  truncated   one pass truncated at the longest EOT of the batch (18 tokens)
  grouped     prompts grouped by length, each group truncated to its own longest EOT
              (`TextTower.encode_embeddings`)
  prefix      grouped + the start token and context computed once and shared by all prompts
              (`TextTower.encode_prompts(prompts, eot, ctx)`)

Time: every variant runs in ONE process, steps interleaved round by round (so load from other processes on a
shared machine hits all variants alike); the first round is a warm-up; the median of the other rounds is
reported. Memory: each variant runs one step in a FRESH subprocess; "peak RSS" is that process's
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the high-water mark of its resident set: Python + torch + the text
tower's weights + the step), "step" is peak RSS minus the RSS right before the step. The full context needs
~77/18 the truncated memory, more than this machine has at 1000 classes, so `full` runs on every 10th class
(100 prompts) and its time and step memory are scaled x10 (both are linear in the number of prompts: every prompt
is an independent row), as printed.

    .venv/bin/python benchmarks/coop_1000_classes.py            # ~5 minutes on 2 idle cores, ~10 at a load of 6
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Annotated

import typer

MODEL = "ViT-B-16"
N_CTX = 4
BATCH = 32  # cached image features per step (CoOp's batch size)
SHOTS = 16
VARIANTS = ("full", "truncated", "grouped", "prefix")
FULL_EVERY = 10  # `full` runs on every 10th class, scaled x10


def _worker(spec: dict) -> dict:
    """Runs in a subprocess: times steps (interleaved) or measures one variant's memory; returns a JSON dict."""
    import resource

    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from pipeline.text_tower import TextTower

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    clip = open_clip.create_model(MODEL)
    del clip.visual  # CoOp trains on cached image features: the image tower is not used
    tower = TextTower(clip.eval(), open_clip.get_tokenizer(MODEL))
    names = list(IMAGENET_CLASSNAMES)[: spec["classes"]]
    prompts, eot = tower.context_prompts(names, N_CTX)
    init = tower.context_init("a photo of a", N_CTX)
    images = F.normalize(torch.randn(BATCH, clip.text_projection.shape[1]), dim=-1)
    labels = torch.randint(len(names), (BATCH,))

    def text(variant: str, ctx: torch.Tensor) -> torch.Tensor:
        if variant == "full":
            sub = slice(None, None, FULL_EVERY)
            return tower.encode_embeddings(tower.splice_context(prompts[sub], ctx), eot[sub], truncate=False)
        if variant == "prefix":
            return tower.encode_prompts(prompts, eot, ctx)
        return tower.encode_embeddings(tower.splice_context(prompts, ctx), eot, group=variant == "grouped")

    ctx = torch.nn.Parameter(init.clone())
    optimizer = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)

    def step(variant: str) -> tuple[float, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ctx.copy_(init)  # every step does the same computation, so variants' outputs can be compared
        t0 = time.perf_counter()
        feats = text(variant, ctx)
        y = labels // FULL_EVERY if variant == "full" else labels  # `full` scores every 10th class only
        loss = F.cross_entropy(100.0 * images @ feats.T, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad = ctx.grad.detach().clone()
        optimizer.step()
        return time.perf_counter() - t0, feats.detach(), grad

    if spec["mode"] == "memory":
        before = _rss_kb()
        seconds, _, _ = step(spec["variant"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"before_kb": before, "peak_kb": peak, "seconds": seconds}

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    feats: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    for r in range(spec["rounds"] + 1):  # round 0 = warm-up
        for v in VARIANTS:
            seconds, f, g = step(v)
            if r == 0:
                feats[v], grads[v] = f, g
            else:
                times[v].append(seconds)
        last = "  ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS) if r else "warm-up"
        print(f"  round {r}: {last}", file=sys.stderr, flush=True)
    ref = feats["truncated"]
    diffs = {v: float((feats[v] - ref).abs().max()) for v in ("grouped", "prefix")}
    diffs["full"] = float((feats["full"] - ref[::FULL_EVERY]).abs().max())
    grad_diffs = {v: float((grads[v] - grads["truncated"]).abs().max()) for v in ("grouped", "prefix")}
    lengths = (eot + 1).float()
    return {
        "times": times,
        "feature_diff": diffs,
        "grad_diff": grad_diffs,
        "grad_scale": float(grads["truncated"].abs().max()),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        "context_length": tower.context_length,
    }


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _spawn(spec: dict, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(
    threads: Annotated[int, typer.Option(help="torch intra-op threads (this machine has 2 cores)")] = 2,
    rounds: Annotated[int, typer.Option(help="timed rounds (one step per variant each) after a warm-up round")] = 2,
    classes: Annotated[
        int, typer.Option(help="first N ImageNet classes (1000 = ImageNet; fewer for a smoke run)")
    ] = 1000,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    if worker is not None:
        print(json.dumps(_worker(json.loads(worker))))
        return
    env = dict(os.environ)
    # libgomp threads spin while waiting; on a shared machine that steals cores from the other thread.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")]
    )
    print(f"{MODEL} text tower, random weights; torch threads {threads}; OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    load_before = os.getloadavg()[0]
    memory = {}
    for v in VARIANTS:
        memory[v] = _spawn({"mode": "memory", "variant": v, "threads": threads, "classes": classes}, env)
        print(f"  memory run {v}: peak RSS {memory[v]['peak_kb'] / 2**20:.2f} GiB", file=sys.stderr, flush=True)
    timing = _spawn({"mode": "time", "threads": threads, "rounds": rounds, "classes": classes}, env)

    steps = SHOTS * classes // BATCH
    print(
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    scale = {v: FULL_EVERY if v == "full" else 1 for v in VARIANTS}
    per_step = {v: statistics.median(timing["times"][v]) * scale[v] for v in VARIANTS}
    print(
        f"{classes} ImageNet classes, prompt 'X X X X {{name}}.': EOT+1 mean {timing['mean_length']:.2f}, "
        f"max {timing['max_length']}, context {timing['context_length']}; batch {BATCH} cached image features"
    )
    print(f"epoch = {SHOTS} shots x {classes} classes / batch {BATCH} = {steps} steps; s/epoch = {steps} x s/step")
    print(f"s/step = median of {rounds} interleaved steps after a warm-up round")
    print(f"{'variant':12s}{'s/step':>9s}{'s/epoch':>10s}{'peak RSS GiB':>14s}{'step GiB':>10s}  note")
    for v in VARIANTS:
        m = memory[v]
        step_gib = (m["peak_kb"] - m["before_kb"]) / 2**20 * scale[v]
        peak_gib = m["before_kb"] / 2**20 + step_gib
        note = (
            f"measured on {len(range(0, classes, FULL_EVERY))} classes, time and step memory x{FULL_EVERY}"
            if v == "full"
            else ""
        )
        print(f"{v:12s}{per_step[v]:9.2f}{steps * per_step[v]:10.0f}{peak_gib:14.2f}{step_gib:10.2f}  {note}")
    t, g, p, f = (per_step[v] for v in ("truncated", "grouped", "prefix", "full"))
    print(f"speed-up vs truncated: grouped {t / g:.2f}x, prefix {t / p:.2f}x")
    print(f"speed-up vs full context: truncated {f / t:.2f}x, grouped {f / g:.2f}x, prefix {f / p:.2f}x")
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in timing["feature_diff"].items())
    print(f"max |feature - truncated|: {diffs} (full: on its every-{FULL_EVERY}th class)")
    grad = ", ".join(f"{k} {v:.1e}" for k, v in timing["grad_diff"].items())
    print(f"max |context grad - truncated|: {grad} (largest |grad| {timing['grad_scale']:.1e})")


if __name__ == "__main__":
    typer.run(main)
