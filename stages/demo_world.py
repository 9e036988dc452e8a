"""Stage `demo_world`: generate the embedded demo's datasets, when the params use them (else a NOT_USED marker)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import DEFAULT_LAYOUT
from pipeline.params import Params
from stages.command import Debug, Overrides, ParamsPath, load, run_step, stage_app

log = logging.getLogger(__name__)


def run(params: Params, out: Path) -> None:
    from pipeline.demo.usage import demo_backbone_in_use, demo_datasets_in_use, write_marker
    from pipeline.demo.world import generate_world

    if not demo_datasets_in_use(params, out) and not demo_backbone_in_use(params):
        log.info("demo world not needed (no dataset lives in %s, real backbone weights)", out)
        reason = f"not generated: no dataset of the params lives in {out}, and the weights are not the demo's"
        write_marker(out, reason, manifest=True)
        return
    generate_world(params.demo.world, out)


def demo_world(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="Directory the demo datasets are written to.")] = DEFAULT_LAYOUT.demo_world,
    debug: Debug = False,
) -> None:
    """Generate the embedded demo datasets (web and benchmark domains). It runs only when the params use the demo
    (a dataset of kind demo, or the demo backbone); otherwise it writes a marker saying it was not needed."""
    p = load(params, overrides)
    run_step(lambda: run(p, out), debug)


if __name__ == "__main__":
    stage_app(demo_world)()
