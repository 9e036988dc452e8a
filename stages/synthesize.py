"""Stage `*_synthesize`: features for every label-only class from one seed's generator, and their quality."""

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
    from pipeline.synthesize_seed import synthesize_seed

    synthesize_seed(params, protocol, dataset, seed, target, layout)


def synthesize(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    target: Target = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Synthesize features for every label-only class (z ~ N(0, I), seeded) and describe their quality: the new
    classes (base_to_new), the unseen classes (gzsl), or the target's classes (cross_dataset with --target)."""
    p = load(params, overrides)
    check_seed(p, seed)
    run_step(lambda: run(p, protocol.value, dataset, seed, target, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(synthesize)()
