"""Stage `demo_backbone`: pre-train the demo CLIP on the web domain of all demo datasets, when the params use it.

Its metrics file holds the timings and each demo dataset's zero-shot top-1 on its benchmark test split
(`demo_backbone.zero_shot.<dataset>.{base,new,hm}` for base-to-new, `{seen,unseen,h}` for GZSL).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.layout import DEFAULT_LAYOUT
from pipeline.params import Params
from stages.command import Debug, Overrides, ParamsPath, load, run_step, stage_app

log = logging.getLogger(__name__)


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 4) for k, v in figures.items()}


def run(params: Params, world: Path, out: Path, metrics: Path) -> None:
    from pipeline.atomic_files import replace_dir, write_text_atomic
    from pipeline.demo.pretrain import pretrain_backbone
    from pipeline.demo.usage import demo_backbone_in_use, write_marker

    if not demo_backbone_in_use(params, out):
        log.info("demo backbone not needed: backbone.pretrained=%s", params.backbone.pretrained)
        write_marker(out, f"not trained: backbone.pretrained={params.backbone.pretrained} (real weights)")
        write_text_atomic(metrics, json.dumps({"demo_backbone": {"trained": False}}, indent=2) + "\n")
        return
    checkpoint = Path(params.backbone.pretrained)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    figures = pretrain_backbone(params.demo.backbone, world, tmp / checkpoint.name)
    replace_dir(tmp, out)
    # Timings vary run to run, so they live in a metrics file, not next to the (cached) checkpoint.
    figures = {"trained": True, **_rounded(figures)}
    write_text_atomic(metrics, json.dumps({"demo_backbone": figures}, indent=2) + "\n")
    log.info("demo backbone written to %s: %s", checkpoint, figures)


def demo_backbone(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    world: Annotated[
        Path, typer.Option(help="Demo datasets directory (demo-world's output).")
    ] = DEFAULT_LAYOUT.demo_world,
    out: Annotated[Path, typer.Option(help="Directory the checkpoint goes to.")] = DEFAULT_LAYOUT.demo_backbone,
    metrics: Annotated[Path, typer.Option(help="Pre-training figures: zero-shot accuracy, timings.")] = Path(
        "metrics/demo_backbone.json"
    ),
    debug: Debug = False,
) -> None:
    """Pre-train the demo CLIP backbone contrastively on the demo's web domain. It runs only when
    backbone.pretrained points into OUT (the default params); with real weights it writes a marker only."""
    p = load(params, overrides)
    run_step(lambda: run(p, world, out, metrics), debug)


if __name__ == "__main__":
    stage_app(demo_backbone)()
