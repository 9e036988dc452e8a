"""Whether the params use the embedded demo's datasets, and the marker the demo stage leaves when they do not."""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic_files import replacing_dir
from pipeline.demo.world import write_manifest
from pipeline.params import Params


def demo_datasets_in_use(params: Params, world: Path) -> list[str]:
    """The datasets of the params that live inside the demo world."""
    inside = []
    for name, spec in params.datasets.items():
        root = Path(spec.root).resolve()
        if root == world.resolve() or world.resolve() in root.parents:
            inside.append(name)
    return inside


def write_marker(out: Path, reason: str, *, manifest: bool = False) -> None:
    """A DVC out must exist even when a stage has nothing to do; the marker says why it is empty. `manifest`: also
    the world's manifest.json, which the stages downstream depend on."""
    with replacing_dir(out) as tmp:
        (tmp / "NOT_USED.txt").write_text(reason + "\n")
        if manifest:
            write_manifest(tmp)
