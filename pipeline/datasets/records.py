"""Plain records every dataset loader returns: a list of labelled image files per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ExpectedError


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


@dataclass(frozen=True)
class GzslSplits:
    """A generalized zero-shot dataset (xlsa17 "proposed splits"): seen classes have training images, unseen
    classes only a name; test images of both are scored jointly against all classes."""

    name: str
    classnames: list[str]  # all classes, index = label
    seen: list[int]  # sorted labels of the classes with training images
    unseen: list[int]  # sorted labels of the classes without
    trainval: list[ImageRecord]  # every seen-class training image (GZSL uses all of them, not a few-shot draw)
    test_seen: list[ImageRecord]
    test_unseen: list[ImageRecord]
    meta: dict[str, str] = field(default_factory=dict)  # files read, relative to the dataset root


class DatasetError(ExpectedError, ValueError):
    """A dataset on disk does not match its layout; the message names the file or folder and the entry."""
