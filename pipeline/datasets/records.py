"""Plain records every dataset loader returns: a list of labelled image files per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute path of the image file
    label: int  # index into DatasetSplits.classnames
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset as loaded from disk: class names (index = label) and the full train/val/test lists."""

    name: str
    classnames: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    meta: dict[str, str] = field(default_factory=dict)  # e.g. the split file used, for store metadata


class DatasetError(ValueError):
    """A dataset on disk does not match its layout; the message names the file or folder and the entry."""
