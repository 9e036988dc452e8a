"""Loaders for the 11 datasets of the CoOp benchmark, in CoOp's on-disk layout (CoOp repo, DATASETS.md).

Nine datasets ship a `split_zhou_*.json` file: {"train"|"val"|"test": [[impath, label, classname], ...]} with
`impath` relative to the dataset's image directory. FGVC-Aircraft and ImageNet have no such file and are read
from their original annotation files / folders. The demo dataset writes the same split format (`split_demo.json`)
so it goes through the same code path.

Record order matters: CoOp's few-shot draw (`pipeline.datasets.fewshot`) groups images by label in the order
they are listed, so every loader keeps CoOp's order (split-file order; ImageNet: the filesystem's listing order).

Every entry must stay inside its image directory (`pipeline.datasets.paths`): `..`, absolute entries and
symlinks leading out are a DatasetError naming the entry and the file that listed it. Images are never opened
or stat-ed one by one (ImageNet has 1.3M): only the first image of each split is checked for existence, which
catches a wrong root or a wrong image-directory prefix. `meta` holds paths relative to the dataset root, so
store metadata does not depend on where the data (or the repository) lives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.datasets.fewshot import VAL_FROM_TRAIN
from pipeline.datasets.imagefolder import IMAGE_EXTENSIONS
from pipeline.datasets.paths import ImageRoot
from pipeline.datasets.records import DatasetError, DatasetSplits, ImageRecord

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFileLayout:
    """Where a split-file dataset keeps its images and its split file, relative to the dataset root."""

    image_dir: str  # "" = the root itself (Stanford Cars: impaths start with cars_train/ or cars_test/)
    split_file: str


SPLIT_FILE_LAYOUTS: dict[str, SplitFileLayout] = {
    "caltech101": SplitFileLayout("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": SplitFileLayout("images", "split_zhou_OxfordPets.json"),
    "stanford_cars": SplitFileLayout("", "split_zhou_StanfordCars.json"),
    "oxford_flowers": SplitFileLayout("jpg", "split_zhou_OxfordFlowers.json"),
    "food101": SplitFileLayout("images", "split_zhou_Food101.json"),
    "sun397": SplitFileLayout("SUN397", "split_zhou_SUN397.json"),
    "dtd": SplitFileLayout("images", "split_zhou_DescribableTextures.json"),
    "eurosat": SplitFileLayout("2750", "split_zhou_EuroSAT.json"),
    "ucf101": SplitFileLayout("UCF-101-midframes", "split_zhou_UCF101.json"),
}
DEMO_LAYOUT = SplitFileLayout("images", "split_demo.json")

FGVC_AIRCRAFT_LAYOUT = "images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt (all in <root>)"
IMAGENET_LAYOUT = "images/train/<wnid>/*.JPEG, images/val/<wnid>/*.JPEG, classnames.txt ('<wnid> <class name>')"


def clean_classname(raw: str) -> str:
    """CoOp stores names like 'american_bulldog' and replaces '_' by ' ' in prompts: 'american bulldog'."""
    return " ".join(raw.replace("_", " ").split())


def describe_layout(layout: SplitFileLayout) -> str:
    image_dir = f"<root>/{layout.image_dir}/" if layout.image_dir else "<root>/"
    return f"images under {image_dir}, split file <root>/{layout.split_file}"


def _require_dir(path: Path, what: str, expected_layout: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} {path} does not exist or is not a directory; expected layout: {expected_layout}"
        )


def _require_file(path: Path, what: str, expected_layout: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a file; expected layout: {expected_layout}")


def _check_first_images_exist(name: str, splits: dict[str, list[ImageRecord]], source: Path, hint: str) -> None:
    """One existence check per split: cheap, and a wrong image-directory prefix fails here, not mid-extraction."""
    for split, records in splits.items():
        if records and not records[0].path.is_file():
            raise FileNotFoundError(
                f"{name}: first {split} image {records[0].path} (listed in {source}) does not exist; {hint}"
            )


def _parse_entry(entry: Any, split_file: Path, split: str, index: int) -> tuple[str, int, str]:
    where = f"{split_file}: entry {split}[{index}] = {entry!r}"
    if not (isinstance(entry, list) and len(entry) == 3):
        raise DatasetError(f"{where}: expected [impath, label, classname]")
    impath, label, classname = entry
    if not isinstance(impath, str) or not impath:
        raise DatasetError(f"{where}: impath must be a non-empty path relative to the image directory")
    # bool is an int subclass; a JSON true/false label is a corrupt file, not label 1/0
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise DatasetError(f"{where}: label must be a non-negative integer")
    if not isinstance(classname, str) or not clean_classname(classname):
        raise DatasetError(f"{where}: classname must be a non-empty string")
    return impath, label, clean_classname(classname)


def _relative_to_root(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


def load_split_file_dataset(name: str, root: Path, layout: SplitFileLayout) -> DatasetSplits:
    """Read a dataset described by a split_zhou-format JSON file (CoOp's nine split-file datasets, and the demo).

    Records keep the split file's order (CoOp's draw depends on it); every impath must stay inside the image
    directory.
    """
    root = Path(root).expanduser().absolute()
    expected = describe_layout(layout)
    _require_dir(root, f"{name}: dataset root", expected)
    image_dir = root / layout.image_dir if layout.image_dir else root
    split_file = root / layout.split_file
    _require_dir(image_dir, f"{name}: image directory", expected)
    _require_file(split_file, f"{name}: split file", expected)

    try:
        data = json.loads(split_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{split_file}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(
            f"{split_file}: expected a JSON object with keys {list(SPLIT_NAMES)}, got {type(data).__name__}"
        )

    # label -> (classname, where it was first seen), and the reverse, to reject inconsistent pairs both ways
    name_of_label: dict[int, tuple[str, str]] = {}
    label_of_name: dict[str, tuple[int, str]] = {}
    parsed: dict[str, list[tuple[str, int, str]]] = {}
    for split in SPLIT_NAMES:
        entries = data.get(split)
        if not isinstance(entries, list):
            raise DatasetError(f"{split_file}: key {split!r} is missing or not a list (found {type(entries).__name__})")
        parsed[split] = []
        for index, entry in enumerate(entries):
            impath, label, classname = _parse_entry(entry, split_file, split, index)
            where = f"{split}[{index}]"
            seen_name, seen_at = name_of_label.setdefault(label, (classname, where))
            if seen_name != classname:
                raise DatasetError(
                    f"{split_file}: entry {where} = {entry!r} names label {label} {classname!r}, "
                    f"but entry {seen_at} named it {seen_name!r}"
                )
            seen_label, seen_at = label_of_name.setdefault(classname, (label, where))
            if seen_label != label:
                raise DatasetError(
                    f"{split_file}: entry {where} = {entry!r} gives class {classname!r} label {label}, "
                    f"but entry {seen_at} gave it label {seen_label}"
                )
            parsed[split].append((impath, label, classname))

    num_classes = max(name_of_label, default=-1) + 1
    missing = sorted(set(range(num_classes)) - set(name_of_label))
    if missing:
        raise DatasetError(
            f"{split_file}: labels must be 0..C-1 without gaps; labels {missing[:10]} are missing "
            f"(found {len(name_of_label)} distinct labels, largest {num_classes - 1})"
        )
    for split in ("train", "test"):
        if not parsed[split]:
            raise DatasetError(f"{split_file}: split {split!r} is empty")

    classnames = [name_of_label[label][0] for label in range(num_classes)]
    images = ImageRoot(image_dir)
    splits: dict[str, list[ImageRecord]] = {}
    for split, entries in parsed.items():

        def where(i: int, split: str = split, entries: list[tuple[str, int, str]] = entries) -> str:
            return f"{split_file}: entry {split}[{i}] = {entries[i][0]!r}"

        paths = images.resolve_listed([impath for impath, _, _ in entries], where)
        splits[split] = [
            ImageRecord(path, label, cname) for path, (_, label, cname) in zip(paths, entries, strict=True)
        ]
    _check_first_images_exist(name, splits, split_file, f"impaths are read relative to {image_dir}")
    return DatasetSplits(
        name=name,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        meta={"split_file": layout.split_file, "image_dir": _relative_to_root(image_dir, root)},
    )


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers (for error messages)."""
    return [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


def load_fgvc_aircraft(root: Path) -> DatasetSplits:
    """FGVC-Aircraft as CoOp reads it (CoOp datasets/fgvc_aircraft.py, DATASETS.md): the `data/` folder of
    fgvc-aircraft-2013b renamed to the dataset folder, so `<root>/images/<id>.jpg`, `<root>/variants.txt` and
    `<root>/images_variant_{train,val,test}.txt`. Label = line index in variants.txt; each split line is
    `<id> <variant>` (the variant may contain spaces); records keep the file's line order."""
    root = Path(root).expanduser().absolute()
    _require_dir(root, "fgvc_aircraft: dataset root", FGVC_AIRCRAFT_LAYOUT)
    image_dir = root / "images"
    _require_dir(image_dir, "fgvc_aircraft: image directory", FGVC_AIRCRAFT_LAYOUT)
    variants_file = root / "variants.txt"
    _require_file(variants_file, "fgvc_aircraft: class list", FGVC_AIRCRAFT_LAYOUT)

    classnames: list[str] = []
    label_of_variant: dict[str, int] = {}
    for number, line in _read_lines(variants_file):
        variant = clean_classname(line)
        if variant in label_of_variant:
            raise DatasetError(f"{variants_file}:{number}: variant {variant!r} is listed twice")
        label_of_variant[variant] = len(classnames)
        classnames.append(variant)
    if not classnames:
        raise DatasetError(f"{variants_file}: no variants listed")

    images = ImageRoot(image_dir)
    splits: dict[str, list[ImageRecord]] = {}
    for split in SPLIT_NAMES:
        split_file = root / f"images_variant_{split}.txt"
        _require_file(split_file, f"fgvc_aircraft: {split} split file", FGVC_AIRCRAFT_LAYOUT)
        lines = _read_lines(split_file)
        image_files: list[str] = []
        labels: list[int] = []
        for number, line in lines:
            image_id, _, variant_raw = line.partition(" ")
            variant = clean_classname(variant_raw)
            if variant not in label_of_variant:
                raise DatasetError(
                    f"{split_file}:{number}: line {line!r} names variant {variant!r}, which is not in {variants_file}"
                )
            image_files.append(f"{image_id}.jpg")
            labels.append(label_of_variant[variant])

        def where(i: int, split_file: Path = split_file, lines: list[tuple[int, str]] = lines) -> str:
            return f"{split_file}:{lines[i][0]}: entry {lines[i][1]!r}"

        paths = images.resolve_listed(image_files, where)
        if not paths and split != "val":
            raise DatasetError(f"{split_file}: no images listed")
        splits[split] = [ImageRecord(path, label, classnames[label]) for path, label in zip(paths, labels, strict=True)]

    _check_first_images_exist("fgvc_aircraft", splits, root, f"images are read as {image_dir}/<id>.jpg")
    return DatasetSplits(
        name="fgvc_aircraft",
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        meta={
            "split_file": "images_variant_{train,val,test}.txt",
            "classes_file": "variants.txt",
            "image_dir": "images",
        },
    )


def _is_image_name(entry: os.DirEntry[str]) -> bool:
    """By extension only: no stat per file (ImageNet's folders hold only JPEGs)."""
    return os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def load_imagenet(root: Path) -> DatasetSplits:
    """ImageNet as CoOp reads it (CoOp datasets/imagenet.py): train = images/train, test = images/val (the
    official validation set), and no val split (`val=[]`).

    Labels follow the sorted class folder names (CoOp sorts them; every folder must be listed in classnames.txt
    and every listed wnid must have a folder in both splits, so this is also sorted wnid order).

    Train images of a class are listed in the filesystem's order, as CoOp's `listdir_nohidden` (os.listdir,
    unsorted) lists them, restricted to non-hidden files with an image extension. CoOp's few-shot draw groups and
    samples in this order, so the draw of a seed depends on the filesystem's listing order exactly as CoOp's
    does: the same tree copied to another filesystem can list, and so draw, differently. Test images are sorted
    by name (their order feeds no draw, and a fixed order makes the evaluation store identical across machines).

    Our model selection needs validation images, which CoOp's ImageNet lacks (it validates on test): the few-shot
    draw takes them from the train images not drawn for train (`pipeline.datasets.fewshot.coop_draw`), which
    `meta["val_source"]` records.

    `images/train` and `images/val` may be symlinks (CoOp's DATASETS.md suggests linking an existing copy): each
    is its own image root, and images must stay inside its resolved location.
    """
    root = Path(root).expanduser().absolute()
    classnames_file = root / "classnames.txt"
    train_dir = root / "images" / "train"
    test_dir = root / "images" / "val"
    _require_file(classnames_file, "imagenet: class list", IMAGENET_LAYOUT)
    _require_dir(train_dir, "imagenet: train image directory", IMAGENET_LAYOUT)
    _require_dir(test_dir, "imagenet: test (official val) image directory", IMAGENET_LAYOUT)

    name_of_wnid: dict[str, str] = {}
    for number, line in _read_lines(classnames_file):
        wnid, _, raw_name = line.partition(" ")
        if not clean_classname(raw_name):
            raise DatasetError(f"{classnames_file}:{number}: line {line!r} is not '<wnid> <class name>'")
        if wnid in name_of_wnid:
            raise DatasetError(f"{classnames_file}:{number}: wnid {wnid!r} is listed twice")
        name_of_wnid[wnid] = clean_classname(raw_name)
    if not name_of_wnid:
        raise DatasetError(f"{classnames_file}: no classes listed")

    roots = {split_dir: ImageRoot(split_dir) for split_dir in (train_dir, test_dir)}
    for split_dir, image_root in roots.items():
        folders = image_root.list_dir("", lambda e: e.is_dir(), f"{split_dir} (class folders)")
        unknown = sorted(f.name for f in folders if f.name not in name_of_wnid)
        if unknown:
            raise DatasetError(f"{split_dir}: class folders {unknown[:10]} are not listed in {classnames_file}")

    wnids = sorted(name_of_wnid)
    classnames = [name_of_wnid[wnid] for wnid in wnids]
    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    for label, wnid in enumerate(wnids):
        classname = classnames[label]
        for split_dir, records, order in ((train_dir, train, "listing"), (test_dir, test, "sorted")):
            _require_dir(split_dir / wnid, f"imagenet: class folder of {wnid} ({classname!r})", IMAGENET_LAYOUT)
            files = roots[split_dir].list_dir(wnid, _is_image_name, f"{split_dir / wnid} (directory listing)")
            if not files:
                raise DatasetError(f"{split_dir / wnid}: no images (extensions {sorted(IMAGE_EXTENSIONS)})")
            if order == "sorted":
                files.sort()
            records += [ImageRecord(path, label, classname) for path in files]

    return DatasetSplits(
        name="imagenet",
        classnames=classnames,
        train=train,
        val=[],
        test=test,
        meta={
            "classnames_file": "classnames.txt",
            "image_dir": "images",
            "train_order": "filesystem listing order (os.listdir, as CoOp)",
            "val_source": VAL_FROM_TRAIN,
        },
    )


def load_coop_dataset(name: str, root: Path) -> DatasetSplits:
    """One of the 11 CoOp datasets, `root` being the dataset's own folder (e.g. $DATA/oxford_pets)."""
    if name == "fgvc_aircraft":
        return load_fgvc_aircraft(root)
    if name == "imagenet":
        return load_imagenet(root)
    if name not in SPLIT_FILE_LAYOUTS:
        valid = sorted([*SPLIT_FILE_LAYOUTS, "fgvc_aircraft", "imagenet"])
        raise DatasetError(f"unknown CoOp dataset {name!r}; valid names: {', '.join(valid)}")
    return load_split_file_dataset(name, root, SPLIT_FILE_LAYOUTS[name])


def load_demo_dataset(name: str, root: Path) -> DatasetSplits:
    """The generated demo dataset: root/images/<class_dir>/<file>.png + root/split_demo.json (split_zhou format)."""
    return load_split_file_dataset(name, root, DEMO_LAYOUT)
