"""What each extract stage encodes (an `ExtractionPlan`): the images of a split set, the text classifiers, and the
store's metadata.

- `eval_plan`: a dataset's test images (GZSL: test-seen + test-unseen) and its zero-shot classifiers;
- `fewshot_plan`: one seed's CoOp few-shot draw (train with augmented views, val), base classes or every class;
- `gzsl_train_plan`: every seen-class training image of an xlsa17 dataset, minus a fixed held-out validation set.

Metadata holds no absolute paths: the dataset is described by its params (as given, typically repo-relative), so a
store's bytes do not depend on where the repository is checked out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.datasets import load_dataset
from pipeline.datasets.fewshot import build_protocol_splits
from pipeline.datasets.records import DatasetError, DatasetSplits, GzslSplits, ImageRecord
from pipeline.datasets.xlsa17 import holdout_validation
from pipeline.features import base_new_split
from pipeline.params import Params


@dataclass
class SplitPlan:
    name: str
    records: list[ImageRecord]
    views: int  # augmented views (0: the clean view only, stored as [N, D])


@dataclass
class ExtractionPlan:
    """What one extract run encodes: splits of images, text classifiers (name -> templates) and store metadata.
    Its fingerprint keys resumption of a partial store."""

    splits: list[SplitPlan]
    classnames: list[str]
    classifiers: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0  # seeds the augmented views
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None  # dataset root: skipped files are recorded relative to it

    def fingerprint(self) -> str:
        digest = hashlib.sha256(
            json.dumps([self.meta, self.classifiers, self.seed], sort_keys=True, default=str).encode()
        )
        for split in self.splits:
            digest.update(f"{split.name}:{split.views}".encode())
            for r in split.records:
                digest.update(f"{r.path}|{r.label}\n".encode())
        return digest.hexdigest()


def _dataset_meta(params: Params, name: str, loaded: DatasetSplits | GzslSplits) -> dict[str, Any]:
    spec = params.dataset(name)
    return {
        "name": name,
        "kind": spec.kind,
        "dataset": loaded.name,
        "root": spec.root,
        "preset": params.preset_name(name),
        **loaded.meta,
    }


def eval_plan(params: Params, name: str) -> ExtractionPlan:
    """The test images of dataset `name` and its text classifiers ("zeroshot"; "tip_adapter_f" when Tip-Adapter's
    templates differ), with the dataset's preset applied."""
    p = params.for_dataset(name)
    loaded = load_dataset(params.dataset(name), name)
    templates = list(p.extract.templates or ())
    classifiers = {"zeroshot": templates}
    tip = list(p.finetune.tip_adapter_f.templates or templates)
    if tip != templates:
        classifiers["tip_adapter_f"] = tip
    meta: dict[str, Any] = {"kind": "eval", "dataset": _dataset_meta(params, name, loaded)}
    if isinstance(loaded, GzslSplits):
        records = list(loaded.test_seen) + list(loaded.test_unseen)
        meta["seen"], meta["unseen"] = list(loaded.seen), list(loaded.unseen)
    else:
        records = list(loaded.test)
        meta["base"], meta["new"] = base_new_split(len(loaded.classnames))
    if not records:
        raise DatasetError(f"dataset {name!r} has no test images")
    return ExtractionPlan(
        splits=[SplitPlan("test", records, 0)],
        classnames=list(loaded.classnames),
        classifiers=classifiers,
        meta=meta,
        root=Path(params.dataset(name).root).expanduser().absolute(),
    )


def fewshot_plan(params: Params, name: str, seed: int, labeled: Literal["base", "new", "all"]) -> ExtractionPlan:
    """Seed `seed`'s CoOp few-shot draw of dataset `name`: train (`shots` per class, 1 + K views) and val
    (`val_shots` per class), restricted to the base classes (`labeled="base"`), to the new classes ("new": the
    oracle rows' real stand-in for synthetic features; the same draw, so no image is both) or not ("all")."""
    loaded = load_dataset(params.dataset(name), name)
    if isinstance(loaded, GzslSplits):
        raise DatasetError(f"dataset {name!r} is an xlsa17 (GZSL) dataset; few-shot protocols need a CoOp-style one")
    n = len(loaded.classnames)
    classes = {"base": base_new_split(n)[0], "new": base_new_split(n)[1], "all": list(range(n))}[labeled]
    shots, val_shots = params.fewshot.shots, params.fewshot.resolved_val_shots
    protocol = build_protocol_splits(loaded, shots, val_shots, seed, classes)
    meta = {
        "kind": "train",
        "dataset": _dataset_meta(params, name, loaded),
        "labeled": classes,
        "draw": {"protocol": "coop_fewshot", "shots": shots, "val_shots": val_shots, "seed": seed},
    }
    return ExtractionPlan(
        splits=[
            SplitPlan("train", list(protocol.train), params.extract.views),
            SplitPlan("val", list(protocol.val), 0),
        ],
        classnames=list(loaded.classnames),
        seed=seed,
        meta=meta,
        root=Path(params.dataset(name).root).expanduser().absolute(),
    )


def gzsl_train_plan(params: Params, name: str) -> ExtractionPlan:
    """Every seen-class training image of xlsa17 dataset `name` (GZSL uses them all), minus
    `gzsl.val_per_class` per class held out for model selection; the same for every seed."""
    loaded = load_dataset(params.dataset(name), name)
    if not isinstance(loaded, GzslSplits):
        raise DatasetError(f"dataset {name!r} is not an xlsa17 (GZSL) dataset")
    train, val = holdout_validation(loaded.trainval, params.gzsl.val_per_class, seed=0)
    meta = {
        "kind": "train",
        "dataset": _dataset_meta(params, name, loaded),
        "labeled": list(loaded.seen),
        "draw": {"protocol": "gzsl_all_seen", "val_per_class": params.gzsl.val_per_class, "holdout_seed": 0},
    }
    return ExtractionPlan(
        splits=[SplitPlan("train", train, params.extract.views), SplitPlan("val", val, 0)],
        classnames=list(loaded.classnames),
        seed=0,
        meta=meta,
        root=Path(params.dataset(name).image_root or params.dataset(name).root).expanduser().absolute(),
    )


def train_plan(params: Params, protocol: str, name: str, seed: int) -> ExtractionPlan:
    """The training images a protocol encodes for dataset `name`: every seen-class image (gzsl, any seed), or seed
    `seed`'s few-shot draw of the base classes (base_to_new) or of every class (cross_dataset)."""
    if protocol == "gzsl":
        return gzsl_train_plan(params, name)
    return fewshot_plan(params, name, seed, "base" if protocol == "base_to_new" else "all")
