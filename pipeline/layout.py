"""Where every artifact of the DAG lives. dvc.yaml spells the same paths (tests/test_dvc_yaml.py checks they agree),
and the `ship` commands take identifiers (protocol, dataset, seed, target) and find their deps and outs here.

    data/features/<dataset>/eval.zarr                 test split(s) + zero-shot classifiers        extract_eval
    data/features/<dataset>/base-seed<k>.zarr         seed k's few-shot draw, base classes        b2n_extract
    data/features/<dataset>/all-seed<k>.zarr          seed k's few-shot draw, every class          xd_extract
    data/features/<dataset>/seen.zarr                 every seen-class image (GZSL; all seeds)     gzsl_extract
    data/features/<dataset>/new-seed<k>.zarr          seed k's few-shot draw, new classes (oracle) b2n_oracle_extract
    data/generators/<protocol>/<dataset>/seed<k>.pt   SHIP generator                               *_generator
    data/synthetic/<protocol>/<dataset>[-<target>]/seed<k>.zarr                                    *_synthesize
    data/fits/cross_dataset/<source>/seed<k>.pt       fitted non-SHIP methods of a source          xd_source
    data/demo/world/                                  the embedded demo's datasets                 demo_world
    data/demo/backbone/                               the demo CLIP's checkpoint                    demo_backbone
    results/<protocol>/<dataset>[/<target>]/seed<k>/{generator,synthesis,finetune}/   per-seed figures

Each stage writes its per-seed figures into a directory of its own, replaced whole (atomically), so a killed stage
never leaves a mix of old and new files behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Protocol = Literal["base_to_new", "cross_dataset", "gzsl"]
PROTOCOLS: tuple[Protocol, ...] = ("base_to_new", "cross_dataset", "gzsl")

# Files inside the per-seed results directories.
SCORES = "scores.json"  # finetune/
CURVES = "curves.csv"  # finetune/
PER_CLASS = "per_class.csv"  # finetune/
PREDICTIONS = "predictions.parquet"  # finetune/: per test image, right or wrong, per method
GENERATOR_QUALITY = "quality.json"  # synthesis/
PROJECTION = "projection.csv"  # synthesis/: 2-D PCA of real and synthetic features of a few label-only classes
GENERATOR_CURVE = "loss.csv"  # generator/


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def demo_world(self) -> Path:
        return self.root / "data" / "demo" / "world"

    @property
    def demo_backbone(self) -> Path:
        return self.root / "data" / "demo" / "backbone"

    def eval_store(self, dataset: str) -> Path:
        return self.root / "data" / "features" / dataset / "eval.zarr"

    def train_store(self, protocol: Protocol, dataset: str, seed: int) -> Path:
        folder = self.root / "data" / "features" / dataset
        if protocol == "gzsl":
            return folder / "seen.zarr"  # every seen image: the same for every seed
        return folder / f"{'base' if protocol == 'base_to_new' else 'all'}-seed{seed}.zarr"

    def oracle_store(self, dataset: str, seed: int) -> Path:
        """Seed k's few-shot draw of the new classes: the oracle rows' stand-in for synthetic features."""
        return self.root / "data" / "features" / dataset / f"new-seed{seed}.zarr"

    def generator(self, protocol: Protocol, dataset: str, seed: int) -> Path:
        return self.root / "data" / "generators" / protocol / dataset / f"seed{seed}.pt"

    def synthetic(self, protocol: Protocol, dataset: str, seed: int, target: str | None = None) -> Path:
        name = dataset if target is None else f"{dataset}-{target}"
        return self.root / "data" / "synthetic" / protocol / name / f"seed{seed}.zarr"

    def fits(self, dataset: str, seed: int) -> Path:
        return self.root / "data" / "fits" / "cross_dataset" / dataset / f"seed{seed}.pt"

    def results(self, protocol: Protocol, dataset: str, seed: int, target: str | None = None) -> Path:
        folder = self.root / "results" / protocol / dataset
        return (folder if target is None else folder / target) / f"seed{seed}"

    def finetune_results(self, protocol: Protocol, dataset: str, seed: int, target: str | None = None) -> Path:
        return self.results(protocol, dataset, seed, target) / "finetune"

    def generator_results(self, protocol: Protocol, dataset: str, seed: int) -> Path:
        return self.results(protocol, dataset, seed) / "generator"

    def synthesis_results(self, protocol: Protocol, dataset: str, seed: int, target: str | None = None) -> Path:
        return self.results(protocol, dataset, seed, target) / "synthesis"

    def protocol_results(self, protocol: Protocol) -> Path:
        return self.root / "results" / protocol


# The stage (as dvc.yaml names its instances) that writes each store: for the "rerun: dvc repro -f -s ..." hint of a
# damaged store. Patterns of the paths the Layout methods above build.
_STORE_WRITERS = (
    (r"data/features/(?P<d>[^/]+)/eval\.zarr", "extract_eval@{d}"),
    (r"data/features/(?P<d>[^/]+)/base-seed(?P<k>\d+)\.zarr", "b2n_extract@{d}-{k}"),
    (r"data/features/(?P<d>[^/]+)/all-seed(?P<k>\d+)\.zarr", "xd_extract@{d}-{k}"),
    (r"data/features/(?P<d>[^/]+)/seen\.zarr", "gzsl_extract@{d}"),
    (r"data/features/(?P<d>[^/]+)/new-seed(?P<k>\d+)\.zarr", "b2n_oracle_extract@{d}-{k}"),
    (r"data/synthetic/base_to_new/(?P<d>[^/]+)/seed(?P<k>\d+)\.zarr", "b2n_synthesize@{d}-{k}"),
    (r"data/synthetic/cross_dataset/(?P<d>[^/]+)/seed(?P<k>\d+)\.zarr", "xd_synthesize@{d}-{k}"),
    (r"data/synthetic/gzsl/(?P<d>[^/]+)/seed(?P<k>\d+)\.zarr", "gzsl_synthesize@{d}-{k}"),
)


def writer_stage(path: str | Path) -> str | None:
    """The dvc.yaml stage instance that writes the store at `path` (e.g. 'b2n_extract@shapes-1'), or None."""
    text = Path(path).as_posix().rstrip("/")
    for pattern, stage in _STORE_WRITERS:
        match = re.search(rf"(?:^|/){pattern}$", text)
        if match:
            return stage.format(**match.groupdict())
    return None


def rebuild_hint(path: str | Path) -> str:
    stage = writer_stage(path)
    return f"rerun: dvc repro -f -s {stage}" if stage else "rebuild it with the stage that writes it (dvc repro)"


def find_stores(path: Path) -> list[Path]:
    """`path` itself if it is a feature store (or names one that should be), else every store under it (outermost
    *.zarr directories), sorted; [] if it holds none."""
    if (path / "zarr.json").exists() or path.suffix == ".zarr" or not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*.zarr") if p.is_dir() and not any(a.suffix == ".zarr" for a in p.parents))


DEFAULT_LAYOUT = Layout()  # paths relative to the repository root, where DVC runs every stage
