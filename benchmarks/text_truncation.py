"""Time CLIP's text tower on SHIP/CoOp-style prompts: full 77-token context vs truncated at the longest EOT.

The reference code always runs the full context; the causal mask makes every position after the end-of-text
token irrelevant to the feature pooled there, so `TextTower` stops at the longest EOT in the batch. This script
measures the speed-up on a (randomly initialised) ViT-B-16 text tower, checks the outputs agree, and prints the
ratio. No weights are needed: the cost does not depend on the weights' values.

    .venv/bin/python benchmarks/text_truncation.py
"""

from __future__ import annotations

import time
from typing import Annotated

import open_clip
import torch
import typer

from pipeline.text_tower import TextTower

# Typical class names of the 11 benchmark datasets: short, a few words.
NAMES = ["golden retriever", "Boeing 737-800", "annual crop land", "apple pie", "playing daniel drum", "sunflower"]


def main(
    model: Annotated[str, typer.Option(help="open_clip architecture whose text tower is timed")] = "ViT-B-16",
    batch: Annotated[int, typer.Option(help="prompts per forward pass (SHIP's batch is 256)")] = 256,
    repeats: Annotated[int, typer.Option(help="timed forward+backward passes per variant")] = 3,
) -> None:
    torch.manual_seed(0)
    clip = open_clip.create_model(model)
    tower = TextTower(clip, open_clip.get_tokenizer(model))
    names = [NAMES[i % len(NAMES)] for i in range(batch)]
    prompts, eot = tower.context_prompts(names, n_ctx=4)
    ctx = torch.zeros(batch, 4, tower.width, requires_grad=True)

    def step(truncate: bool) -> torch.Tensor:
        out = tower.encode_embeddings(tower.splice_context(prompts, ctx), eot, truncate=truncate)
        out.sum().backward()  # SHIP and CoOp backpropagate through the tower to the prompt vectors
        return out.detach()

    results = {}
    for truncate in (False, True):
        step(truncate)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = step(truncate)
        results[truncate] = ((time.perf_counter() - t0) / repeats, out)
    full, cut = results[False], results[True]
    diff = (full[1] - cut[1]).abs().max().item()
    print(f"{model} text tower, {batch} prompts, context {tower.context_length}, longest EOT {int(eot.max()) + 1}")
    print(f"full context: {full[0] * 1000:8.1f} ms/step   truncated: {cut[0] * 1000:8.1f} ms/step")
    print(f"speed-up: {full[0] / cut[0]:.2f}x   max |difference|: {diff:.2e}")


if __name__ == "__main__":
    typer.run(main)
