"""A writer for the xlsa17 "proposed splits" format of generalized zero-shot datasets (att_splits.mat + res101.mat;
`pipeline/datasets/xlsa17.py` reads it and describes the format). The demo world writes its GZSL dataset with it,
and tests build xlsa17 datasets with it.

It does not import the reader, so that the demo world (and its DVC stage) does not depend on the loader's code.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from pipeline.atomic_files import write_bytes_atomic

# The released files' names; the reader opens the same ones (tests/test_xlsa17.py writes and reads back).
ATT_SPLITS_FILE = "att_splits.mat"
RES101_FILE = "res101.mat"

# The MAT-file header text scipy writes embeds the time of writing; the writer puts this fixed text there instead.
# It names pipeline.datasets.xlsa17, not this module, and stays fixed: changing it would change every file written
# (the demo world's included).
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by pipeline.datasets.xlsa17 (xlsa17 proposed-splits layout)"
MAT_HEADER_TEXT_BYTES = 116  # the descriptive-text field of the 128-byte MAT 5 file header


def _smallest_uint(max_value: int) -> type[np.unsignedinteger]:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _column(values: Sequence[int], what: str, upper: int) -> np.ndarray:
    """0-based ints -> 1-based (n, 1) column of the smallest unsigned type (as the real files: uint8 / uint16)."""
    array = np.asarray(list(values), dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise ValueError(f"write_xlsa17: {what} must lie in 0..{upper - 1}, got {array.min()}..{array.max()}")
    return (array + 1).astype(_smallest_uint(upper)).reshape(-1, 1)


def _cell(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def _mat_bytes(variables: Mapping[str, np.ndarray]) -> bytes:
    """MAT 5 bytes from scipy.io.savemat with the header's text fixed (scipy's embeds the time of writing)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, dict(variables), format="5", do_compression=False, oned_as="column")
    data = bytearray(buffer.getvalue())
    data[:MAT_HEADER_TEXT_BYTES] = MAT_HEADER_TEXT.ljust(MAT_HEADER_TEXT_BYTES, b" ")
    return bytes(data)


def write_xlsa17(
    root: Path,
    classnames: Sequence[str],
    image_files: Sequence[str],
    labels: Sequence[int],
    trainval_loc: Sequence[int],
    test_seen_loc: Sequence[int],
    test_unseen_loc: Sequence[int],
    *,
    path_prefix: str,
) -> None:
    """Write `root`/att_splits.mat and `root`/res101.mat in the structure of the released files.

    Inputs are 0-based (labels index `classnames`, locs index `image_files`); the files hold 1-based (n, 1)
    columns of uint8/uint16 as the real ones do. `image_files` are POSIX paths relative to the image folder and are
    listed as `path_prefix + path` (the prefix ends with '/', e.g. an author-style '/data/zoo/images/'), so the
    loader's prefix mapping is exercised. `allclasses_names` is written as given (a cell array, label order).

    Placeholders, since no consumer of these files here needs them: `att` is the identity (classes x classes,
    one-hot "attributes"); `train_loc` = trainval_loc and `val_loc` is empty; res101.mat has no `features` (a
    tool that needs ResNet features must extract them). The bytes are deterministic: the MAT header's text, where
    scipy writes the time, is fixed.
    """
    n_classes, n_images = len(classnames), len(image_files)
    if len(labels) != n_images:
        raise ValueError(f"write_xlsa17: {n_images} image_files but {len(labels)} labels")
    if path_prefix and not path_prefix.endswith("/"):
        raise ValueError(f"write_xlsa17: path_prefix must end with '/', got {path_prefix!r}")
    for rel in image_files:
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"write_xlsa17: image path {rel!r} must be relative to the image folder, without '..'")
    label_column = _column(labels, "labels", n_classes)
    trainval = _column(trainval_loc, "trainval_loc", n_images)
    att_splits = {
        "allclasses_names": _cell(list(classnames)),
        "att": np.eye(n_classes, dtype=np.float64),
        "train_loc": trainval,
        "val_loc": np.zeros((0, 1), dtype=trainval.dtype),
        "trainval_loc": trainval,
        "test_seen_loc": _column(test_seen_loc, "test_seen_loc", n_images),
        "test_unseen_loc": _column(test_unseen_loc, "test_unseen_loc", n_images),
    }
    res101 = {"image_files": _cell([path_prefix + rel for rel in image_files]), "labels": label_column}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(root / ATT_SPLITS_FILE, _mat_bytes(att_splits))
    write_bytes_atomic(root / RES101_FILE, _mat_bytes(res101))
