"""Generalized zero-shot datasets in the xlsa17 "proposed splits" format (Xian et al., "Zero-Shot Learning - The
Good, the Bad and the Ugly"). A writer for the same format is `pipeline/demo/xlsa17_writer.py` (the offline demo
writes its GZSL dataset with it).

Layout of a dataset root (one per dataset, as released: xlsa17/data/CUB, .../AWA2; FLO from the same authors'
CVPR'18 release uses the same files):

- `att_splits.mat`: `trainval_loc`, `test_seen_loc`, `test_unseen_loc` (also `train_loc`, `val_loc`): 1-based row
  indices into res101.mat's image list, shape (n, 1) (uint16 in AWA2's release); `att` (class
  embeddings, attributes x classes; not read here); for CUB, AWA2 and SUN `allclasses_names`, a MATLAB cell array
  (n_classes, 1) of class names in label order ('001.Black_footed_Albatross', 'grizzly+bear', ...).
- `res101.mat`: `image_files`, a cell array (n_images, 1) of absolute paths on the authors' machines, e.g.
  '/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.Black_footed_Albatross/<file>.jpg' or
  '/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg'; `labels` (n_images, 1),
  1-based class labels (uint8 in AWA2's release); `features` (2048 x n_images ResNet-101 features, never read).

Seen classes are the labels of the trainval images, unseen classes those of the test-unseen images; the two
must be disjoint and every test-seen image must belong to a seen class. All seen-class trainval images are
returned (GZSL trains on all of them); `holdout_validation` carves a seeded per-class validation set out of them,
because xlsa17's `val_loc` holds other (validation-unseen) classes.

Image paths. A listed path is mapped onto the user's `image_root` by dropping the authors' prefix:

- datasets with a known anchor directory (name, case-insensitive: cub -> 'images', awa2 -> 'JPEGImages',
  flo -> 'jpg', sun -> 'images'): the path relative to image_root is what follows the LAST anchor component,
  so image_root is CUB_200_2011/images, Animals_with_Attributes2/JPEGImages, or Oxford's Flowers-102 jpg/;
- any other name, or a listed path without the anchor: the same number k of leading components is dropped from
  every such path, k being the smallest for which the first such path exists under image_root (the longest
  trailing part of it that exists).

(FLO's own listed prefix appears in no public source found; its images are Oxford's flat jpg/image_NNNNN.jpg,
which either rule maps onto Oxford's jpg/ folder.)

Every mapped path must stay inside image_root: a '..' component or a symlink that leaves image_root is an error
naming the entry and res101.mat. Only images the three splits reference are checked, with one lstat each (plus
one realpath per directory); missing images are reported together (count and the first few).

Class names for prompts: '001.Black_footed_Albatross' -> 'black footed albatross', 'grizzly+bear' ->
'grizzly bear' (a leading 'NNN.' is dropped, '_' and '+' become spaces, lowercase, runs of spaces collapse). They
come from, in order of precedence:

1. `classnames_file`: one name per line in label order (blank lines ignored), cleaned the same way;
2. `allclasses_names` in att_splits.mat (CUB, AWA2, SUN);
3. for FLO only, whose att_splits.mat holds no names (its `att` is a 1024-d text embedding per class): the 102
   Oxford Flowers names in Oxford's category order (`oxford_flowers_102_names()`, read from the package's
   `flowers102_classnames.txt`, one name per line). That list is the one torchvision
   (`Flowers102.classes`, whose labels are imagelabels.mat - 1), CoOp's cat_to_name.json and TFDS agree on; public
   GZSL code (e.g. EmDepart, ACM MM'24) indexes it by FLO's res101 labels, i.e. FLO labels follow Oxford's order.
   Because that last link is established by use rather than by the release itself, the loader checks it whenever
   Oxford's own `imagelabels.mat` lies in image_root or beside it (Oxford's layout: jpg/ and imagelabels.mat side
   by side): every listed image_NNNNN.jpg must carry Oxford's label for that image, or loading stops.

Otherwise the loader stops and asks for `classnames_file`. The number of names must equal the number of classes
the labels use (1..C, each with at least one image).
"""

from __future__ import annotations

import functools
import importlib.resources
import operator
import os
import random
import re
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from pipeline.datasets.records import DatasetError, GzslSplits, ImageRecord

ATT_SPLITS_FILE = "att_splits.mat"
RES101_FILE = "res101.mat"
SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
XLSA17_LAYOUT = (
    "<root>/att_splits.mat (trainval_loc, test_seen_loc, test_unseen_loc[, allclasses_names]) and "
    "<root>/res101.mat (image_files, labels); images under image_root"
)

# Directory after which a listed path is relative to image_root, per dataset name (lowercase).
ANCHOR_DIRS: dict[str, str] = {"cub": "images", "awa2": "JPEGImages", "flo": "jpg", "sun": "images"}
MISSING_SHOWN = 5  # missing images named in the error message

# Oxford Flowers-102 category names, line k = Oxford label k (see the module docstring for the sources).
OXFORD_FLOWERS_102_FILE = "flowers102_classnames.txt"
OXFORD_LABELS_FILE = "imagelabels.mat"
_OXFORD_IMAGE = re.compile(r"image_(\d+)\.jpg")


@functools.cache
def oxford_flowers_102_names() -> tuple[str, ...]:
    """The 102 Oxford Flowers names, index = Oxford label - 1 (package data: read once)."""
    text = importlib.resources.files("pipeline.datasets").joinpath(OXFORD_FLOWERS_102_FILE).read_text(encoding="utf-8")
    return tuple(text.splitlines())


def clean_classname(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'; 'grizzly+bear' -> 'grizzly bear'."""
    name = re.sub(r"^\s*\d+\.", "", raw)
    return " ".join(name.replace("_", " ").replace("+", " ").lower().split())


# ---------------------------------------------------------------------------------------------------------------
# Reading .mat files


def _loadmat(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """Only `keys` (res101.mat's features run to hundreds of MB and are never needed); absent keys are absent."""
    try:
        return scipy.io.loadmat(str(path), variable_names=list(keys))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DatasetError(f"{path}: cannot read this MAT-file version ({err}); save it as a v5 MAT-file") from err
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, ... on damaged files
        raise DatasetError(f"{path}: not a readable MATLAB v5 .mat file ({type(err).__name__}: {err})") from err


def _require_key(mat: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in mat:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: variable {key!r} is missing (read: {present}); expected layout: {XLSA17_LAYOUT}")
    return mat[key]


def _integer_vector(value: Any, key: str, path: Path) -> np.ndarray:
    """A MATLAB column/row vector of integers as int64 (the real files use uint8/uint16: subtracting 1 from an
    unsigned 0 would wrap around, so everything is widened first)."""
    array = np.asarray(value)
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) > 1):
        raise DatasetError(f"{path}: {key!r} must be a vector (n x 1), got shape {array.shape}")
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        raise DatasetError(f"{path}: {key!r} must hold integers, got dtype {array.dtype}")
    flat = array.reshape(-1)
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))
        if bad.size:
            raise DatasetError(f"{path}: {key}[{bad[0]}] = {flat[bad[0]]!r} is not an integer")
    return flat.astype(np.int64)


def _cell_strings(value: Any, key: str, path: Path) -> list[str]:
    """A MATLAB cell array of strings (or a char matrix, rows padded with spaces) as Python strings."""
    array = np.asarray(value)
    if array.dtype.kind == "U":  # char matrix: one row per entry
        return [str(s).rstrip() for s in array.reshape(-1)]
    if array.dtype != object:
        raise DatasetError(f"{path}: {key!r} must be a cell array of strings, got dtype {array.dtype}")
    if array.ndim == 2 and min(array.shape) > 1:
        raise DatasetError(f"{path}: {key!r} must be an n x 1 cell array, got shape {array.shape}")
    strings = []
    for index, cell in enumerate(array.reshape(-1)):
        item = np.asarray(cell)
        if item.dtype.kind != "U" or item.size > 1:
            raise DatasetError(f"{path}: {key}[{index}] is not a single string (got {item.dtype}, shape {item.shape})")
        strings.append(str(item.reshape(-1)[0]).rstrip() if item.size else "")
    return strings


def _read_locs(att: Mapping[str, Any], att_path: Path, n_images: int) -> dict[str, np.ndarray]:
    """The three split index vectors, checked (1..n_images, no repeats) and made 0-based."""
    locs = {}
    for key in SPLIT_KEYS:
        loc = _integer_vector(_require_key(att, key, att_path), key, att_path)
        if loc.size == 0:
            raise DatasetError(f"{att_path}: {key!r} is empty")
        out_of_range = np.flatnonzero((loc < 1) | (loc > n_images))
        if out_of_range.size:
            j = int(out_of_range[0])
            raise DatasetError(
                f"{att_path}: {key}[{j}] = {loc[j]} is out of range: indices are 1-based and res101.mat lists "
                f"{n_images} images (1..{n_images}); {out_of_range.size} entries out of range"
            )
        values, counts = np.unique(loc, return_counts=True)
        if np.any(counts > 1):
            raise DatasetError(f"{att_path}: {key!r} lists image {int(values[counts > 1][0])} more than once")
        locs[key] = loc - 1
    both = np.intersect1d(locs["trainval_loc"], locs["test_seen_loc"])
    if both.size:
        raise DatasetError(
            f"{att_path}: {both.size} images are both in trainval_loc and test_seen_loc (first: {int(both[0]) + 1}); "
            "test images must not be training images"
        )
    return locs


# ---------------------------------------------------------------------------------------------------------------
# Class names


def _read_names_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"classnames_file {path} does not exist or is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from err
    return [line.strip() for line in lines if line.strip()]


def _classnames(
    name: str,
    att: Mapping[str, Any],
    att_path: Path,
    classnames_file: Path | None,
    root: Path,
) -> tuple[list[str], str, str]:
    """(cleaned names in label order, where they came from (for meta), that source in words (for messages))."""
    from_att = (
        _cell_strings(att["allclasses_names"], "allclasses_names", att_path) if "allclasses_names" in att else None
    )
    if classnames_file is not None:
        raw = _read_names_file(classnames_file)
        if from_att is not None and len(from_att) != len(raw):
            raise DatasetError(
                f"{classnames_file}: lists {len(raw)} class names but {att_path} allclasses_names lists {len(from_att)}"
            )
        source, words = f"classnames_file:{_relative_or_given(classnames_file, root)}", str(classnames_file)
    elif from_att is not None:
        raw, source, words = from_att, f"{ATT_SPLITS_FILE}:allclasses_names", f"{att_path} allclasses_names"
    elif name.lower() == "flo":
        raw, source, words = list(oxford_flowers_102_names()), "default:oxford_flowers_102", "the Oxford Flowers names"
    else:
        raise DatasetError(
            f"{att_path}: has no 'allclasses_names' and dataset {name!r} has no default class names; "
            "pass classnames_file (one class name per line, in label order)"
        )
    names = [clean_classname(n) for n in raw]
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise DatasetError(f"{words}: class name {empty[0]} ({raw[empty[0]]!r}) is empty once cleaned")
    first_label: dict[str, int] = {}
    for label, cleaned in enumerate(names):
        if cleaned in first_label:
            raise DatasetError(
                f"{words}: classes {first_label[cleaned]} ({raw[first_label[cleaned]]!r}) and {label} ({raw[label]!r}) "
                f"both read as {cleaned!r} in prompts"
            )
        first_label[cleaned] = label
    return names, source, words


def _relative_or_given(path: Path, root: Path) -> str:
    """`path` relative to the dataset root when inside it, else as the caller gave it (meta must not embed the
    checkout's location)."""
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _describe(labels_1based: np.ndarray, classnames: Sequence[str]) -> str:
    """Up to 10 classes as "['name', ...] (0-based labels [...])" for messages."""
    shown = [int(c) for c in labels_1based[:10]]
    more = f" and {labels_1based.size - 10} more" if labels_1based.size > 10 else ""
    return f"{[classnames[c - 1] for c in shown]} (0-based labels {[c - 1 for c in shown]}){more}"


def _check_class_count(labels: np.ndarray, n_classes: int, res_path: Path, names_source: str) -> None:
    """Labels (1-based) must be 1..C with every class present, C = the number of names."""
    low, high = int(labels.min()), int(labels.max())
    if low < 1:
        first = int(np.flatnonzero(labels < 1)[0])
        raise DatasetError(f"{res_path}: labels[{first}] = {labels[first]}; labels are 1-based class numbers")
    used = np.unique(labels)
    if high > n_classes or used.size != n_classes:
        unused = sorted(set(range(1, n_classes + 1)) - set(used.tolist()))[:10]
        raise DatasetError(
            f"{res_path}: labels use {used.size} classes (values {low}..{high}, 1-based) but {names_source} names "
            f"{n_classes} classes"
            + (f"; label values without images: {unused}" if unused and high <= n_classes else "")
        )


# ---------------------------------------------------------------------------------------------------------------
# Image paths


def _components(listed: str) -> list[str]:
    return [part for part in listed.replace("\\", "/").split("/") if part not in ("", ".")]


class _PathMapper:
    """Listed path -> path relative to image_root (see the module docstring)."""

    def __init__(self, name: str, image_root: Path, res_path: Path) -> None:
        self.anchor = ANCHOR_DIRS.get(name.lower())
        self.image_root = image_root
        self.res_path = res_path
        self.strip: int | None = None  # k of the generic rule, fixed by the first path that needs it

    def describe(self) -> str:
        parts = []
        if self.anchor:
            parts.append(f"the part after the last '{self.anchor}/' directory")
        if self.strip is not None:
            parts.append(f"the listed path without its first {self.strip} components")
        return " or ".join(parts) or "the listed path"

    def relative(self, index: int, listed: str) -> list[str]:
        parts = _components(listed)
        if self.anchor and self.anchor in parts:
            last = len(parts) - 1 - parts[::-1].index(self.anchor)
            return parts[last + 1 :]
        if self.strip is None:
            self.strip = self._find_strip(index, listed, parts)
        return parts[self.strip :]

    def _find_strip(self, index: int, listed: str, parts: list[str]) -> int:
        tried = []
        for k in range(len(parts)):
            candidate = parts[k:]
            if ".." in candidate:
                continue
            tried.append("/".join(candidate))
            if os.path.isfile(os.path.join(self.image_root, *candidate)):
                return k
        anchor = f" and has no '{self.anchor}/' directory" if self.anchor else ""
        raise DatasetError(
            f"{self.res_path}: image_files[{index}] = {listed!r} does not exist under image_root {self.image_root}"
            f"{anchor} (tried {tried[:3]}{' ...' if len(tried) > 3 else ''}); check image_root"
        )


def _resolve_images(
    image_files: list[str], indices: np.ndarray, mapper: _PathMapper, res_path: Path
) -> dict[int, Path]:
    """Absolute path of every referenced image, each checked to exist inside image_root."""
    image_root = mapper.image_root
    root_real = os.path.realpath(image_root)
    inside_cache: dict[str, bool] = {}

    def inside(real: str) -> bool:
        return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)

    def escape(index: int, listed: str, why: str) -> DatasetError:
        return DatasetError(
            f"{res_path}: image_files[{index}] = {listed!r} {why}; images must stay inside image_root {image_root}"
        )

    paths: dict[int, Path] = {}
    missing: list[str] = []
    for index in indices.tolist():
        listed = image_files[index]
        rel = mapper.relative(index, listed)
        if not rel:
            raise DatasetError(f"{res_path}: image_files[{index}] = {listed!r} names no file after {mapper.describe()}")
        if ".." in rel:
            raise escape(index, listed, f"maps to {'/'.join(rel)!r}, which climbs out with '..'")
        path = os.path.join(image_root, *rel)
        parent = os.path.dirname(path)
        parent_inside = inside_cache.get(parent)
        if parent_inside is None:
            parent_inside = inside_cache[parent] = inside(os.path.realpath(parent))
        if not parent_inside:
            raise escape(index, listed, f"maps to {path}, whose folder is a symlink leading out of image_root")
        try:
            mode = os.lstat(path).st_mode
        except OSError:  # FileNotFoundError, NotADirectoryError (a file where a folder should be), ...
            missing.append(f"image_files[{index}] {listed!r} -> {path}")
            continue
        if stat.S_ISLNK(mode):
            if not inside(os.path.realpath(path)):
                raise escape(index, listed, f"maps to {path}, a symlink leading out of image_root")
            if not os.path.isfile(path):
                missing.append(f"image_files[{index}] {listed!r} -> {path} (broken symlink)")
                continue
        elif not stat.S_ISREG(mode):
            missing.append(f"image_files[{index}] {listed!r} -> {path} (not a file)")
            continue
        paths[index] = Path(path)
    if missing:
        raise DatasetError(
            f"{res_path}: {len(missing)} of {len(indices)} listed images do not exist under image_root {image_root} "
            f"(paths read as {mapper.describe()}): {'; '.join(missing[:MISSING_SHOWN])}"
            + (" ..." if len(missing) > MISSING_SHOWN else "")
        )
    return paths


def _check_oxford_label_order(image_root: Path, paths: Mapping[int, Path], labels: np.ndarray, res_path: Path) -> None:
    """FLO with the shipped Oxford names: where Oxford's imagelabels.mat is at hand, FLO's labels must match it."""
    for candidate in (image_root / OXFORD_LABELS_FILE, image_root.parent / OXFORD_LABELS_FILE):
        if candidate.is_file():
            break
    else:
        return
    oxford = _integer_vector(_require_key(_loadmat(candidate, ["labels"]), "labels", candidate), "labels", candidate)
    for index, path in paths.items():
        match = _OXFORD_IMAGE.fullmatch(path.name)
        if match is None:
            continue
        image_id = int(match.group(1))
        if 1 <= image_id <= oxford.size and oxford[image_id - 1] != labels[index]:
            raise DatasetError(
                f"{res_path}: image_files[{index}] ({path.name}) has label {labels[index]} but Oxford's {candidate} "
                f"gives it {oxford[image_id - 1]}: FLO's labels do not follow Oxford's category order, so the "
                "built-in Oxford Flowers names do not apply; pass classnames_file (one name per line, in label order)"
            )


# ---------------------------------------------------------------------------------------------------------------
# Public API


def load_xlsa17_dataset(name: str, root: Path, image_root: Path, classnames_file: Path | None = None) -> GzslSplits:
    """A GZSL dataset in xlsa17 layout: `root` holds att_splits.mat and res101.mat, `image_root` the images.

    Record paths are absolute; labels are 0-based (res101's label - 1); `meta` names the files read relative to
    `root` (and where the class names came from), never an absolute path.
    """
    root = Path(root).expanduser().absolute()
    image_root = Path(image_root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset root {root} does not exist or is not a directory; layout: {XLSA17_LAYOUT}")
    att_path, res_path = root / ATT_SPLITS_FILE, root / RES101_FILE
    for path in (att_path, res_path):
        if not path.is_file():
            raise DatasetError(f"{name}: {path} does not exist or is not a file; expected layout: {XLSA17_LAYOUT}")
    if not image_root.is_dir():
        raise DatasetError(f"{name}: image_root {image_root} does not exist or is not a directory")

    res = _loadmat(res_path, ["image_files", "labels"])
    image_files = _cell_strings(_require_key(res, "image_files", res_path), "image_files", res_path)
    labels = _integer_vector(_require_key(res, "labels", res_path), "labels", res_path)
    if labels.size != len(image_files):
        raise DatasetError(f"{res_path}: {len(image_files)} image_files but {labels.size} labels")
    if not image_files:
        raise DatasetError(f"{res_path}: image_files is empty")

    att = _loadmat(att_path, [*SPLIT_KEYS, "allclasses_names"])
    locs = _read_locs(att, att_path, len(image_files))
    classnames_path = None if classnames_file is None else Path(classnames_file).expanduser()
    classnames, names_source, names_words = _classnames(name, att, att_path, classnames_path, root)
    _check_class_count(labels, len(classnames), res_path, names_words)

    seen = np.unique(labels[locs["trainval_loc"]])
    unseen = np.unique(labels[locs["test_unseen_loc"]])
    overlap = np.intersect1d(seen, unseen)
    if overlap.size:
        raise DatasetError(
            f"{att_path}: classes {_describe(overlap, classnames)} have "
            "images in both trainval_loc (seen) and test_unseen_loc (unseen); seen and unseen classes must be disjoint"
        )
    stray = np.setdiff1d(np.unique(labels[locs["test_seen_loc"]]), seen)
    if stray.size:
        raise DatasetError(
            f"{att_path}: test_seen_loc holds images of classes {_describe(stray, classnames)}, "
            "which have no trainval images (not seen classes)"
        )
    neither = np.setdiff1d(np.arange(1, len(classnames) + 1), np.union1d(seen, unseen))
    if neither.size:
        raise DatasetError(
            f"{att_path}: classes {_describe(neither, classnames)} are "
            "neither seen (in trainval_loc) nor unseen (in test_unseen_loc)"
        )

    referenced = np.unique(np.concatenate([locs[key] for key in SPLIT_KEYS]))
    paths = _resolve_images(image_files, referenced, _PathMapper(name, image_root, res_path), res_path)
    if names_source.startswith("default:"):
        _check_oxford_label_order(image_root, paths, labels, res_path)

    def records(key: str) -> list[ImageRecord]:
        out = []
        for index in locs[key].tolist():
            label = int(labels[index]) - 1
            out.append(ImageRecord(paths[index], label, classnames[label]))
        return out

    return GzslSplits(
        name=name,
        classnames=classnames,
        seen=[int(c) - 1 for c in seen],
        unseen=[int(c) - 1 for c in unseen],
        trainval=records("trainval_loc"),
        test_seen=records("test_seen_loc"),
        test_unseen=records("test_unseen_loc"),
        meta={"att_splits": ATT_SPLITS_FILE, "res101": RES101_FILE, "classnames": names_source},
    )


def holdout_validation(
    records: Sequence[ImageRecord], per_class: int, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split seen-class training images into (train, val) with `per_class` val images per class.

    A class with at most `per_class` images gives all but one to val (it keeps a training image). Each class is
    drawn with its own generator seeded by (seed, label), over its images sorted by path, so the split depends
    neither on the input order nor on which other classes are present. Both lists come sorted by (label, path).
    """
    try:
        count = operator.index(per_class)
    except TypeError:
        count = -1
    if isinstance(per_class, bool) or count < 0:
        raise DatasetError(f"holdout_validation: per_class must be an integer >= 0, got {per_class!r}")
    groups: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.label].append(record)
    train: list[ImageRecord] = []
    val: list[ImageRecord] = []
    for label in sorted(groups):
        group = sorted(groups[label], key=lambda r: str(r.path))
        n_val = min(count, len(group) - 1)
        rng = random.Random(f"xlsa17-holdout/{seed}/{label}")
        held = set(rng.sample(range(len(group)), n_val))
        train += [r for i, r in enumerate(group) if i not in held]
        val += [r for i, r in enumerate(group) if i in held]
    return train, val
