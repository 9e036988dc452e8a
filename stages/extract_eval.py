"""Stage `extract_eval`: a dataset's test split(s) and zero-shot classifiers, encoded once for every seed."""

from __future__ import annotations

from pathlib import Path

from pipeline.layout import Layout
from pipeline.params import Params
from stages.command import DatasetName, Debug, Overrides, ParamsPath, WorkDir, load, stage_app
from stages.ranked import Nproc, run_ranks


def run(params: Params, dataset: str, layout: Layout) -> None:
    from pipeline.extract import encode_store
    from pipeline.extraction_plans import eval_plan

    settings = params.for_dataset(dataset).extract  # the preset's templates
    encode_store(params.backbone, lambda: eval_plan(params, dataset), layout.eval_store(dataset), settings)


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
    run_ranks(nproc, run, (load(params, overrides), dataset, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(extract_eval)()
