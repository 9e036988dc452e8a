"""Stage `demo_world`: generate the embedded demo dataset, when the params use it."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.atomic_files import replace_dir
from pipeline.demo.world import generate_world
from pipeline.params import Params

log = logging.getLogger(__name__)


def demo_backbone_in_use(params: Params, backbone_dir: Path = Path("data/demo/backbone")) -> bool:
    return Path(params.backbone.pretrained).resolve().parent == backbone_dir.resolve()


def write_marker(out: Path, reason: str) -> None:
    """A DVC out must exist even when a stage has nothing to do; the marker says why it is empty."""
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "NOT_USED.txt").write_text(reason + "\n")
    replace_dir(tmp, out)


def run(params: Params, out: Path) -> None:
    if params.dataset.kind != "demo" and not demo_backbone_in_use(params):
        log.info("demo world not needed (dataset.kind=%s, real backbone weights)", params.dataset.kind)
        write_marker(out, f"not generated: dataset.kind={params.dataset.kind} and backbone weights are not the demo's")
        return
    log.info("generating demo world into %s", out)
    generate_world(params.demo.world, out)
