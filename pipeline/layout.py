"""Where every artifact of the DAG lives. dvc.yaml spells the same paths (tests/test_dvc_yaml.py checks they agree),
and the `ship` commands take identifiers (protocol, dataset, seed, target) and find their deps and outs here.

    data/features/<dataset>/eval.zarr                 test split(s) + zero-shot classifiers        extract_eval
    data/features/<dataset>/base-seed<k>.zarr         seed k's few-shot draw, base classes        b2n_extract
    data/features/<dataset>/all-seed<k>.zarr          seed k's few-shot draw, every class          xd_extract
    data/features/<dataset>/seen.zarr                 every seen-class image (GZSL; all seeds)     gzsl_extract
    data/generators/<protocol>/<dataset>/seed<k>.pt   SHIP generator                               *_generator
    data/synthetic/<protocol>/<dataset>[-<target>]/seed<k>.zarr                                    *_synthesize
    data/fits/cross_dataset/<source>/seed<k>.pt       fitted non-SHIP methods of a source          xd_source
    results/<protocol>/<dataset>[/<target>]/seed<k>/{generator,synthesis,finetune}/   per-seed figures

Each stage writes its per-seed figures into a directory of its own, replaced whole (atomically), so a killed stage
never leaves a mix of old and new files behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Protocol = Literal["base_to_new", "cross_dataset", "gzsl"]
PROTOCOLS: tuple[Protocol, ...] = ("base_to_new", "cross_dataset", "gzsl")

# Files inside the per-seed results directories.
SCORES = "scores.json"  # finetune/
CURVES = "curves.csv"  # finetune/
PER_CLASS = "per_class.csv"  # finetune/
GENERATOR_QUALITY = "quality.json"  # synthesis/
GENERATOR_CURVE = "loss.csv"  # generator/


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    def eval_store(self, dataset: str) -> Path:
        return self.root / "data" / "features" / dataset / "eval.zarr"

    def train_store(self, protocol: Protocol, dataset: str, seed: int) -> Path:
        folder = self.root / "data" / "features" / dataset
        if protocol == "gzsl":
            return folder / "seen.zarr"  # every seen image: the same for every seed
        return folder / f"{'base' if protocol == 'base_to_new' else 'all'}-seed{seed}.zarr"

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
