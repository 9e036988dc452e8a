"""Stage `demo_world`: generate the embedded demo world (web corpus + the shapes, patterns and zoo datasets),
when the params use it."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.atomic_files import replacing_dir
from pipeline.demo.world import generate_world, write_manifest
from pipeline.params import Params

log = logging.getLogger(__name__)


def demo_backbone_in_use(params: Params, backbone_dir: Path = Path("data/demo/backbone")) -> bool:
    return Path(params.backbone.pretrained).resolve().parent == backbone_dir.resolve()


def write_marker(out: Path, reason: str, *, manifest: bool = False) -> None:
    """A DVC out must exist even when a stage has nothing to do; the marker says why it is empty. `manifest`: also
    the world's manifest.json, which the stages downstream depend on."""
    with replacing_dir(out) as tmp:
        (tmp / "NOT_USED.txt").write_text(reason + "\n")
        if manifest:
            write_manifest(tmp)


def demo_datasets_in_use(params: Params, world: Path) -> list[str]:
    """The datasets of the params that live inside the demo world."""
    inside = []
    for name, spec in params.datasets.items():
        root = Path(spec.root).resolve()
        if root == world.resolve() or world.resolve() in root.parents:
            inside.append(name)
    return inside


def run(params: Params, out: Path) -> None:
    if not demo_datasets_in_use(params, out) and not demo_backbone_in_use(params):
        log.info("demo world not needed (no dataset lives in %s, real backbone weights)", out)
        reason = f"not generated: no dataset of the params lives in {out}, and the weights are not the demo's"
        write_marker(out, reason, manifest=True)
        return
    log.info("generating demo world into %s", out)
    generate_world(params.demo.world, out)
