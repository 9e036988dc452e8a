"""Stage `report`: aggregate every per-seed result of the current params into tables, metrics and plot data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import Layout
from pipeline.params import Params
from stages.command import Debug, Overrides, ParamsPath, WorkDir, load, run_step, stage_app

log = logging.getLogger(__name__)


def run(params: Params, layout: Layout, out: Path) -> None:
    from pipeline.atomic_files import write_dir_atomic
    from pipeline.publish import build_report

    files = build_report(params, layout)
    # One directory, replaced whole: a killed report never leaves a mix of old and new tables, metrics and plots.
    write_dir_atomic(out, files)
    for name in sorted(files):
        if name.endswith(".md"):
            log.info("wrote %s", out / name)
            print(files[name])


def report(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    out: Annotated[Path, typer.Option(help="Directory for the tables, metrics and plot data.")] = Path("reports"),
    debug: Debug = False,
) -> None:
    """Aggregate every per-seed result of the current params: Markdown tables (base-to-new in Table 1's shape,
    cross-dataset, GZSL, generator quality), DVC metrics (reports/metrics/*.json) and plot data."""
    p = load(params, overrides)
    run_step(lambda: run(p, Layout(workdir), out), debug)


if __name__ == "__main__":
    stage_app(report)()
