"""Stages `b2n_extract`, `xd_extract`, `gzsl_extract`: one seed's training and validation images (a clean view and
augmented views of each training image), encoded once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import Layout, Protocol
from pipeline.params import Params
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
    stage_app,
)
from stages.ranked import Nproc, run_ranks


def run(params: Params, protocol: Protocol, dataset: str, seed: int, layout: Layout) -> None:
    from pipeline.extract import encode_store
    from pipeline.extraction_plans import train_plan

    store = layout.train_store(protocol, dataset, seed)
    encode_store(params.backbone, lambda: train_plan(params, protocol, dataset, seed), store, params.extract)


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
    run_ranks(nproc, run, (p, protocol.value, dataset, seed or 0, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(extract_train)()
