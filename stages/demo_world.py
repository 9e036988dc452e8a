"""Stage `demo_world`: generate the embedded demo world's benchmark datasets (shapes, patterns, zoo), when the params
use them. The web domain, which only the demo backbone's pre-training reads, is left out: the backbone is pre-trained
once, outside the DAG (`ship pretrain-demo`), and shipped in git."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.atomic_files import replace_dir
from pipeline.demo.world import generate_world, write_manifest
from pipeline.params import Params

log = logging.getLogger(__name__)


def write_marker(out: Path, reason: str, *, manifest: bool = False) -> None:
    """A DVC out must exist even when a stage has nothing to do; the marker says why it is empty. `manifest`: also
    the world's manifest.json, which the stages downstream depend on."""
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "NOT_USED.txt").write_text(reason + "\n")
    if manifest:
        write_manifest(tmp)
    replace_dir(tmp, out)


def demo_datasets_in_use(params: Params, world: Path) -> list[str]:
    """The datasets of the params that live inside the demo world."""
    inside = []
    for name, spec in params.datasets.items():
        root = Path(spec.root).resolve()
        if root == world.resolve() or world.resolve() in root.parents:
            inside.append(name)
    return inside


def run(params: Params, out: Path) -> None:
    if not demo_datasets_in_use(params, out):
        log.info("demo world not needed (no dataset lives in %s)", out)
        write_marker(out, f"not generated: no dataset of the params lives in {out}", manifest=True)
        return
    log.info("generating demo world (benchmark domain) into %s", out)
    generate_world(params.demo.world, out, web=False)
