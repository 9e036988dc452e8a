"""Dataset loaders: `load_dataset` reads a dataset's full splits from disk; `build_protocol_splits` samples the
few-shot / base-to-new subsets the extract stage encodes."""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.coop import load_coop_dataset, load_demo_dataset
from pipeline.datasets.fewshot import build_protocol_splits, sample_few_shot
from pipeline.datasets.imagefolder import load_imagefolder_dataset
from pipeline.datasets.records import DatasetError, DatasetSplits, ImageRecord
from pipeline.params.dataset import COOP_DATASETS, DatasetParams

__all__ = [
    "DatasetSplits",
    "ImageRecord",
    "build_protocol_splits",
    "load_dataset",
    "sample_few_shot",
]


def load_dataset(params: DatasetParams) -> DatasetSplits:
    """The full train/val/test lists of the dataset `params` points at (no few-shot sampling yet)."""
    root = Path(params.root)
    if params.kind == "demo":
        return load_demo_dataset(params.name, root)
    if params.kind == "coop":
        if params.name not in COOP_DATASETS:
            raise DatasetError(
                f"dataset.name={params.name!r} is not a CoOp dataset (dataset.kind='coop'); "
                f"valid names: {', '.join(COOP_DATASETS)}"
            )
        return load_coop_dataset(params.name, root)
    if params.kind == "imagefolder":
        return load_imagefolder_dataset(params.name, root)
    raise DatasetError(f"dataset.kind={params.kind!r} is not one of demo, coop, imagefolder")
