"""Stage `b2n_oracle_extract`: one seed's few-shot draw of a base-to-new dataset's new classes (training images
only), the real features the oracle rows use in place of synthetic ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import Layout
from pipeline.params import Params
from stages.command import DatasetName, Debug, Overrides, ParamsPath, WorkDir, check_seed, load, stage_app
from stages.ranked import Nproc, run_ranks


def run(params: Params, dataset: str, seed: int, layout: Layout) -> None:
    from pipeline.extract import encode_store
    from pipeline.extraction_plans import fewshot_plan

    store = layout.oracle_store(dataset, seed)
    encode_store(params.backbone, lambda: fewshot_plan(params, dataset, seed, "new"), store, params.extract)


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
    run_ranks(nproc, run, (p, dataset, seed, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(extract_oracle)()
