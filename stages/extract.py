"""Stages `extract_eval`, `b2n_extract`, `xd_extract`, `gzsl_extract`: encode images once with the frozen encoder.

Each runs as one process, or as several ranks of one job (`torchrun ... python -m stages.extract ...`, or
`--nproc N`): every rank loads the backbone on its own device and encodes its share of the store's blocks; the store
is the same as one process makes (pipeline/extract.py)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.layout import Layout, Protocol
from pipeline.params import ExtractParams, Params
from stages.command import (
    DatasetName,
    Debug,
    Overrides,
    ParamsPath,
    ProtocolName,
    ProtocolOption,
    WorkDir,
    check_seed,
    load,
    run_step,
    setup_logging,
    stage_app,
)

if TYPE_CHECKING:
    from pipeline.extraction_plans import ExtractionPlan

Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        envvar="SHIP_EXTRACT_NPROC",
        min=1,
        help="Processes on this machine that share the store's blocks (one per GPU, each on cuda:<local rank>; on "
        "CPUs they share the cores). The store is identical to a one-process one. Under torchrun leave it at 1: "
        "torchrun starts the ranks.",
    ),
]


def _rank_step(fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """One rank of `--nproc N` (a spawned process): the stage, failing as the command fails."""
    try:
        run_step(lambda: fn(*args), debug)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)


def run_ranks(nproc: int, fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """Run an extract stage in this process (also when torchrun started it as one rank of a job), or spawn
    `nproc` ranks of one job on this machine."""
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        if nproc > 1:
            typer.echo("note: started by torchrun (WORLD_SIZE is set): --nproc is ignored", err=True)
        run_step(lambda: fn(*args), debug)
        return
    from pipeline.ranks import RankError, spawn_ranks

    setup_logging()
    logging.getLogger(__name__).info("starting %d ranks on this machine", nproc)
    try:
        spawn_ranks(nproc, _rank_step, fn, args, debug)
    except RankError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


def run_eval(params: Params, dataset: str, layout: Layout) -> None:
    from pipeline.extraction_plans import eval_plan

    settings = params.for_dataset(dataset).extract  # the preset's templates
    _encode(params, lambda: eval_plan(params, dataset), layout.eval_store(dataset), settings)


def run_train(params: Params, protocol: Protocol, dataset: str, seed: int, layout: Layout) -> None:
    from pipeline.extraction_plans import train_plan

    store = layout.train_store(protocol, dataset, seed)
    _encode(params, lambda: train_plan(params, protocol, dataset, seed), store, params.extract)


def _encode(params: Params, plan_of: Callable[[], ExtractionPlan], store: Path, settings: ExtractParams) -> None:
    from pipeline.backbone import load_backbone
    from pipeline.extract import extract_features
    from pipeline.ranks import rank_context

    with rank_context(params.backbone.device) as (ranks, device):
        backbone = load_backbone(params.backbone, device)  # first: unusable weights fail within seconds
        extract_features(plan_of(), backbone, settings, store, progress=ranks.main, ranks=ranks)


def extract_eval(
    dataset: DatasetName,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    nproc: Nproc = 1,
    debug: Debug = False,
) -> None:
    """Encode a dataset's test split (GZSL: test-seen and test-unseen) and build its zero-shot text classifiers
    (the preset's templates) into data/features/<dataset>/eval.zarr, shared by every seed and experiment. Atomic; a
    killed run resumes from its last finished block."""
    run_ranks(nproc, run_eval, (load(params, overrides), dataset, Layout(workdir)), debug)


def extract_train(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Replicate seed: it draws the few-shot images (gzsl takes none: every image)."),
    ] = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    nproc: Nproc = 1,
    debug: Debug = False,
) -> None:
    """Encode one seed's training images (a clean view and augmented views) and validation images: CoOp's few-shot
    draw of the base classes (base_to_new) or of every class (cross_dataset), or every seen-class image (gzsl)."""
    p = load(params, overrides)
    if protocol != ProtocolName.gzsl:
        if seed is None:
            typer.echo(f"error: --seed is required for {protocol.value}", err=True)
            raise typer.Exit(2)
        check_seed(p, seed)
    run_ranks(nproc, run_train, (p, protocol.value, dataset, seed or 0, Layout(workdir)), debug)


def run_oracle(params: Params, dataset: str, seed: int, layout: Layout) -> None:
    from pipeline.extraction_plans import fewshot_plan

    store = layout.oracle_store(dataset, seed)
    _encode(params, lambda: fewshot_plan(params, dataset, seed, "new"), store, params.extract)


def extract_oracle(
    dataset: DatasetName,
    seed: Annotated[int, typer.Option("--seed", help="Replicate seed: it draws the few-shot images.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    nproc: Nproc = 1,
    debug: Debug = False,
) -> None:
    """Encode one seed's few-shot draw of a base-to-new dataset's new classes (train images only, never test): the
    real features the oracle rows (*_ship_oracle methods) use in place of synthetic ones."""
    p = load(params, overrides)
    check_seed(p, seed)
    run_ranks(nproc, run_oracle, (p, dataset, seed, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(
        extract_eval, extract_train, extract_oracle, help_text="Encode images once with the frozen image encoder."
    )()
