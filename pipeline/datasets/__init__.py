"""Dataset loaders: `load_dataset` reads a dataset's full splits from disk; `build_protocol_splits` makes CoOp's
few-shot draw of one seed (all classes drawn, then the labelled ones kept) that the extract stage encodes."""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.coop import load_coop_dataset, load_demo_dataset
from pipeline.datasets.fewshot import (
    build_protocol_splits,
    coop_draw,
    dassl_fewshot,
    default_val_shots,
    labeled_class_indices,
)
from pipeline.datasets.imagefolder import load_imagefolder_dataset
from pipeline.datasets.records import DatasetError, DatasetSplits, GzslSplits, ImageRecord
from pipeline.datasets.xlsa17 import holdout_validation, load_xlsa17_dataset
from pipeline.params.dataset import COOP_DATASETS, DatasetSpec

__all__ = [
    "DatasetError",
    "DatasetSplits",
    "GzslSplits",
    "ImageRecord",
    "build_protocol_splits",
    "coop_draw",
    "dassl_fewshot",
    "default_val_shots",
    "holdout_validation",
    "labeled_class_indices",
    "load_dataset",
    "load_splits",
    "load_xlsa17_dataset",
]


def load_splits(kind: str, name: str, root: str | Path) -> DatasetSplits:
    """The full train/val/test lists of a dataset of `kind` (demo, coop, imagefolder) at `root`."""
    root = Path(root)
    if kind == "demo":
        return load_demo_dataset(name, root)
    if kind == "coop":
        if name not in COOP_DATASETS:
            raise DatasetError(
                f"dataset.name={name!r} is not a CoOp dataset (dataset.kind='coop'); "
                f"valid names: {', '.join(COOP_DATASETS)}"
            )
        return load_coop_dataset(name, root)
    if kind == "imagefolder":
        return load_imagefolder_dataset(name, root)
    raise DatasetError(f"dataset.kind={kind!r} is not one of demo, coop, imagefolder")


def load_dataset(spec: DatasetSpec, key: str) -> DatasetSplits | GzslSplits:
    """The dataset a params spec points at, as laid out on disk (no few-shot draw yet); `key` is the name the
    params list it under (the default for `spec.name`)."""
    name = spec.name or key
    if spec.kind == "xlsa17":
        assert spec.image_root is not None  # the params schema requires it for xlsa17
        classnames = Path(spec.classnames_file) if spec.classnames_file else None
        return load_xlsa17_dataset(name, Path(spec.root), Path(spec.image_root), classnames)
    return load_splits(spec.kind, name, spec.root)
