"""Builders of tiny fake dataset trees in each on-disk layout the loaders read (CoOp DATASETS.md, image folder).

The layouts are written out here independently of pipeline/datasets, so a test checks the loader against the
documented layout rather than against itself. Every image is the same tiny real JPEG/PNG (encoded once).
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# CoOp's split-file datasets: (image directory relative to the dataset root, split file name)
COOP_SPLIT_FILE_TREES: dict[str, tuple[str, str]] = {
    "caltech101": ("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("images", "split_zhou_Food101.json"),
    "sun397": ("SUN397", "split_zhou_SUN397.json"),
    "dtd": ("images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("UCF-101-midframes", "split_zhou_UCF101.json"),
}
SPLIT_SIZES = {"train": 5, "val": 2, "test": 3}  # images per class


@dataclass(frozen=True)
class BuiltTree:
    root: Path
    classnames: list[str]  # what the loader should report, index = label
    sizes: dict[str, int]  # expected number of records per split


PIL_FORMAT_OF_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF"}


@functools.cache
def _image_bytes(fmt: str) -> bytes:
    """A 4x4 image encoded once per format: writing hundreds of files stays fast."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(PIL_FORMAT_OF_SUFFIX[path.suffix.lower()]))


def write_split_file_tree(
    root: Path, image_dir: str, split_file: str, raw_classnames: list[str], suffix: str = ".jpg"
) -> dict[str, list[list[object]]]:
    """Images under root/image_dir/<class_dir>/ and a split_zhou-format JSON listing them."""
    images_root = root / image_dir if image_dir else root
    images_root.mkdir(parents=True, exist_ok=True)
    # Stanford Cars keeps images in cars_train/ cars_test/ below the root; the impath carries that prefix
    prefix = "cars_train/" if not image_dir else ""
    split: dict[str, list[list[object]]] = {}
    for name, per_class in SPLIT_SIZES.items():
        split[name] = []
        for label, raw in enumerate(raw_classnames):
            for i in range(per_class):
                impath = f"{prefix}{raw}/{name}_{i:03d}{suffix}"
                write_image(images_root / impath)
                split[name].append([impath, label, raw])
    (root / split_file).write_text(json.dumps(split))
    return split


def build_split_file_tree(root: Path, name: str) -> BuiltTree:
    image_dir, split_file = COOP_SPLIT_FILE_TREES[name]
    raw = (
        ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]
        if name == "eurosat"
        else ["face", "sea_lion", "wild_cat"]
    )
    write_split_file_tree(root, image_dir, split_file, raw)
    classnames = [r.replace("_", " ") for r in raw]
    return BuiltTree(root, classnames, {s: n * len(raw) for s, n in SPLIT_SIZES.items()})


def build_fgvc_aircraft_tree(root: Path) -> BuiltTree:
    """CoOp's DATASETS.md: fgvc-aircraft-2013b's `data/` folder renamed to `fgvc_aircraft/`, so images/,
    variants.txt and images_variant_{train,val,test}.txt sit directly in the dataset folder."""
    variants = ["707-320", "A300B4", "Cessna 172"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for split, per_class in SPLIT_SIZES.items():
        lines = []
        for variant in variants:
            for _ in range(per_class):
                image_id += 1
                write_image(root / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}")
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return BuiltTree(root, variants, {s: n * len(variants) for s, n in SPLIT_SIZES.items()})


IMAGENET_CLASSES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
IMAGENET_TRAIN_PER_CLASS = 6
IMAGENET_TEST_PER_CLASS = 2


def build_imagenet_tree(root: Path) -> BuiltTree:
    """CoOp's DATASETS.md: images/train/<wnid>/, images/val/<wnid>/, classnames.txt. CoOp's ImageNet has no val
    split (train images not drawn for train serve as val at draw time)."""
    # classnames.txt deliberately not in wnid order: labels must still follow sorted wnids
    lines = [f"{wnid} {name}" for wnid, name in sorted(IMAGENET_CLASSES.items(), reverse=True)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(lines) + "\n")
    for wnid in IMAGENET_CLASSES:
        for i in range(IMAGENET_TRAIN_PER_CLASS):
            write_image(root / "images" / "train" / wnid / f"{wnid}_{i:04d}.JPEG")
        for i in range(IMAGENET_TEST_PER_CLASS):
            write_image(root / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i:04d}.JPEG")
    n = len(IMAGENET_CLASSES)
    sizes = {"train": IMAGENET_TRAIN_PER_CLASS * n, "val": 0, "test": IMAGENET_TEST_PER_CLASS * n}
    return BuiltTree(root, [IMAGENET_CLASSES[w] for w in sorted(IMAGENET_CLASSES)], sizes)


def build_coop_tree(root: Path, name: str) -> BuiltTree:
    if name == "fgvc_aircraft":
        return build_fgvc_aircraft_tree(root)
    if name == "imagenet":
        return build_imagenet_tree(root)
    return build_split_file_tree(root, name)


def build_demo_tree(root: Path, num_classes: int = 4) -> BuiltTree:
    raw = [f"class_{i}" for i in range(num_classes)]
    write_split_file_tree(root, "images", "split_demo.json", raw, suffix=".png")
    return BuiltTree(root, [r.replace("_", " ") for r in raw], {s: n * num_classes for s, n in SPLIT_SIZES.items()})


def build_imagefolder_tree(
    root: Path, folders: dict[str, int], test_per_class: int = 2, val_per_class: int | None = None
) -> Path:
    """root/train/<folder>/ with folders[folder] images each (mixed extensions), root/test/, optional root/val/."""
    extensions = [".jpg", ".JPEG", ".png", ".PNG", ".bmp", ".webp", ".tif"]
    splits = {"train": folders, "test": dict.fromkeys(folders, test_per_class)}
    if val_per_class is not None:
        splits["val"] = dict.fromkeys(folders, val_per_class)
    for split, counts in splits.items():
        for folder, count in counts.items():
            for i in range(count):
                write_image(root / split / folder / f"img_{i:03d}{extensions[i % len(extensions)]}")
    # files the loader must skip
    (root / "train" / next(iter(folders)) / "notes.txt").write_text("not an image")
    return root
