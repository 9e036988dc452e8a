"""Stage `demo_world`: generate the embedded demo's benchmark datasets when the params use them (else a NOT_USED
marker). Their web domain, which only the demo CLIP's pre-training reads, is left out: that CLIP is pre-trained once,
outside the DAG (`ship pretrain-demo`), and shipped in git."""

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
    from pipeline.demo.usage import demo_datasets_in_use, write_marker
    from pipeline.demo.world import generate_world

    if not demo_datasets_in_use(params, out):
        log.info("demo world not needed (no dataset lives in %s)", out)
        write_marker(out, f"not generated: no dataset of the params lives in {out}", manifest=True)
        return
    generate_world(params.demo.world, out, web=False)  # the web domain is for `ship pretrain-demo` only


def demo_world(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="Directory the demo datasets are written to.")] = DEFAULT_LAYOUT.demo_world,
    debug: Debug = False,
) -> None:
    """Generate the embedded demo datasets (their benchmark domain). It runs only when a dataset of the params lives
    in OUT; otherwise it writes a marker saying it was not needed."""
    p = load(params, overrides)
    run_step(lambda: run(p, out), debug)


if __name__ == "__main__":
    stage_app(demo_world)()
