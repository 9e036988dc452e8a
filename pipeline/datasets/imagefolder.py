"""A generic image-folder dataset: root/{train,test}/<class>/*, optional root/val/<class>/*.

Labels follow class folders sorted by name; the class name is the folder name with '_' and '-' as spaces.
Without a val/ folder, a seeded ~10% of each class's train images (at least one) is held out as val. The
hold-out seed is fixed rather than the few-shot seed, so the dataset itself does not change between
few-shot draws (as with CoOp's fixed split files).

Image lists are sorted by file name (there is no reference order to follow). Every image must stay inside the
dataset root: a class folder or image that is a symlink to somewhere outside it is a DatasetError naming it
(`pipeline.datasets.paths`); folders are read with one `os.scandir` each, no stat per image.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from pipeline.datasets.paths import ImageRoot
from pipeline.datasets.records import DatasetError, DatasetSplits, ImageRecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VAL_HOLDOUT_FRACTION = 0.1
IMAGEFOLDER_LAYOUT = "<root>/train/<class>/*, <root>/test/<class>/*, optional <root>/val/<class>/*"


def folder_classname(folder: str) -> str:
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def _class_folders(images: ImageRoot, split: str) -> list[str]:
    folders = images.list_dir(split, lambda e: e.is_dir(), f"{images.path / split} (class folders)")
    return sorted(folder.name for folder in folders)


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    return os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()


def _images_in(images: ImageRoot, split: str, folder: str) -> list[Path]:
    class_dir = images.path / split / folder
    found = sorted(images.list_dir(f"{split}/{folder}", _is_image_file, f"{class_dir} (directory listing)"))
    if not found:
        raise DatasetError(f"{class_dir}: class folder has no images (extensions {sorted(IMAGE_EXTENSIONS)})")
    return found


def _holdout_val(
    train: dict[str, list[Path]], train_dir: Path, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split each class's train images into (train, val): round(10%) but at least one image to val."""
    rng = random.Random(seed)
    kept: dict[str, list[Path]] = {}
    held: dict[str, list[Path]] = {}
    for folder in sorted(train):
        images = train[folder]
        if len(images) < 2:
            raise DatasetError(
                f"{train_dir / folder}: needs at least 2 images to hold one out as val (found {len(images)}); "
                f"add images or provide a val/ folder"
            )
        n_val = max(1, round(len(images) * VAL_HOLDOUT_FRACTION))
        val_set = set(rng.sample(images, n_val))
        kept[folder] = [p for p in images if p not in val_set]
        held[folder] = [p for p in images if p in val_set]
    return kept, held


def load_imagefolder_dataset(name: str, root: Path, holdout_seed: int = 0) -> DatasetSplits:
    root = Path(root).expanduser().absolute()
    split_dirs = {split: root / split for split in ("train", "val", "test")}
    for split in ("train", "test"):
        if not split_dirs[split].is_dir():
            raise FileNotFoundError(
                f"{name}: {split} folder {split_dirs[split]} does not exist; expected layout: {IMAGEFOLDER_LAYOUT}"
            )
    has_val = split_dirs["val"].is_dir()
    image_root = ImageRoot(root)

    folders = _class_folders(image_root, "train")
    if not folders:
        raise DatasetError(f"{split_dirs['train']}: no class folders; expected layout: {IMAGEFOLDER_LAYOUT}")
    for split in ("val", "test") if has_val else ("test",):
        other = _class_folders(image_root, split)
        if other != folders:
            missing = sorted(set(folders) - set(other))
            extra = sorted(set(other) - set(folders))
            raise DatasetError(
                f"{split_dirs[split]}: class folders differ from {split_dirs['train']}: "
                f"missing {missing}, not in train {extra}"
            )

    images = {
        split: {folder: _images_in(image_root, split, folder) for folder in folders}
        for split in ("train", "val", "test")
        if split != "val" or has_val
    }
    if not has_val:
        images["train"], images["val"] = _holdout_val(images["train"], split_dirs["train"], holdout_seed)

    classnames = [folder_classname(folder) for folder in folders]
    duplicates = sorted({c for c in classnames if classnames.count(c) > 1})
    if duplicates:
        raise DatasetError(f"{split_dirs['train']}: class folders map to the same class name(s) {duplicates}")

    def records(split: str) -> list[ImageRecord]:
        return [
            ImageRecord(path, label, classnames[label])
            for label, folder in enumerate(folders)
            for path in images[split][folder]
        ]

    return DatasetSplits(
        name=name,
        classnames=classnames,
        train=records("train"),
        val=records("val"),
        test=records("test"),
        meta={
            "image_dir": ".",
            "val_source": "val folder" if has_val else f"held out from train (seed {holdout_seed})",
        },
    )
