"""Builders for extract tests: tiny PNG datasets and a tiny open_clip checkpoint file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from pipeline.datasets.records import DatasetSplits, ImageRecord
from tests.conftest import TINY_MODEL

CLASSNAMES = ["red circle", "blue square", "green star", "yellow moon"]


def write_images(root: Path, per_class: int, seed: int = 0, prefix: str = "img") -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for label, name in enumerate(CLASSNAMES):
        d = root / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)
            path = d / f"{prefix}{i}.png"
            Image.fromarray(pixels).save(path)
            records.append(ImageRecord(path, label, name))
    return records


def tiny_splits(root: Path) -> DatasetSplits:
    return DatasetSplits(
        name="tiny",
        classnames=list(CLASSNAMES),
        train=write_images(root / "train", 3, seed=1),
        val=write_images(root / "val", 1, seed=2),
        test=write_images(root / "test", 2, seed=3),
    )


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL)
    torch.save({"state_dict": model.state_dict()}, path)
    return path
