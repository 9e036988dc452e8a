"""Stages `b2n_finetune`, `xd_source`, `xd_finetune`, `gzsl_finetune`: every method for one seed on one task
(pipeline/finetune_seed.py says which methods each protocol fits), scored; per-seed scores, curves, per-class."""

from __future__ import annotations

from pathlib import Path

from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from stages.command import (
    DatasetName,
    Debug,
    Overrides,
    ParamsPath,
    ProtocolOption,
    Seed,
    Target,
    WorkDir,
    check_seed,
    load,
    run_step,
    stage_app,
)


def run(params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout) -> None:
    from pipeline.finetune_seed import finetune_seed

    outcome = finetune_seed(params, protocol, dataset, seed, target, layout)
    outcome.write(layout.finetune_results(protocol, dataset, seed, target))


def finetune(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    target: Target = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Fine-tune every method in finetune.methods for one seed on cached (and synthetic) features, select on
    validation data only (or take the last epoch), and score the protocol's test splits. cross_dataset without
    --target fits the source-only methods and saves them; with --target it scores them on the target and trains
    the *_ship methods."""
    p = load(params, overrides)
    check_seed(p, seed)
    run_step(lambda: run(p, protocol.value, dataset, seed, target, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(finetune)()
