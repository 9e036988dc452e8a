"""The few-shot / base-to-new protocol: which images of a loaded dataset the extract stage encodes.

The draw is CoOp's, image for image. CoOp (train.py) seeds Python's global `random` with the run's seed, then its
dataset classes call Dassl's `DatasetBase.generate_fewshot_dataset` (Dassl >= e3a15da, `repeat=False`) twice on
that one stream: on the train split with k = shots, then on the val split with k = min(shots, 4). Each call groups
the items by label in a dict, i.e. labels in the order they FIRST APPEAR in the list and items in list order, and
per label takes `random.sample(items, k)` if the label has at least k items, else all of them (no random call);
the output follows the group order. Only after both draws does CoCoOp's `subsample_classes` keep the base classes
(the first ceil(n/2) labels), so the base-to-new draw is the all-class draw filtered to the base labels.

We run the same algorithm on a private `random.Random(seed)`, whose stream is the one `random.seed(seed)` gives
the global functions, so nothing else in the process can shift it. Records must come in the loader's order (the
split file's order; ImageNet: the folder listing order), never re-sorted.

ImageNet has no val split (CoOp validates on test). Our model selection needs validation images, so — our
addition, not CoOp's — val is drawn from the train images NOT chosen for train: right after the train draw, on the
same stream, the same algorithm runs on the train list with the chosen images removed (list order kept, k =
val_shots). The train draw is therefore still CoOp's, and val is deterministic and disjoint from train.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from pipeline.datasets.records import DatasetError, DatasetSplits, ImageRecord
from pipeline.features import base_new_split

log = logging.getLogger(__name__)

COOP_MAX_VAL_SHOTS = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
VAL_FROM_TRAIN = "train images not drawn for train (the dataset has no val split)"


def default_val_shots(shots: int) -> int:
    """CoOp's validation shots for a `shots`-shot run: min(shots, 4)."""
    return min(shots, COOP_MAX_VAL_SHOTS)


def dassl_fewshot(records: Sequence[ImageRecord], shots: int, rng: random.Random) -> list[ImageRecord]:
    """Dassl's `generate_fewshot_dataset(records, num_shots=shots)` with `repeat=False`, drawing from `rng`.

    Labels in order of first appearance, items in list order; per label `rng.sample(items, shots)` if it has at
    least `shots` items, else all of its items without touching `rng`; output in that label order.
    """
    if shots < 1:
        # Dassl returns the list unchanged for num_shots < 1 (no few-shot run); we never want that silently
        raise DatasetError(f"shots must be >= 1, got {shots}")
    groups: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.label].append(record)
    drawn: list[ImageRecord] = []
    for items in groups.values():
        drawn.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return drawn


def coop_draw(
    splits: DatasetSplits, shots: int, val_shots: int, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, val) few-shot draws of every class, as CoOp draws them for `seed`.

    One `random.Random(seed)` stream: the train draw (k = shots) on `splits.train`, then the val draw
    (k = val_shots; CoOp uses min(shots, 4), see `default_val_shots`) on `splits.val`. If `splits.val` is empty
    (ImageNet), val is drawn instead, on the same stream right after the train draw, from `splits.train` minus
    the images chosen for train (compared by path; list order kept) — our addition, see the module docstring.
    """
    if val_shots < 1:
        raise DatasetError(f"val_shots must be >= 1, got {val_shots}")
    rng = random.Random(seed)
    train = dassl_fewshot(splits.train, shots, rng)
    if splits.val:
        val = dassl_fewshot(splits.val, val_shots, rng)
    else:
        chosen = {record.path for record in train}
        remaining = [record for record in splits.train if record.path not in chosen]
        val = dassl_fewshot(remaining, val_shots, rng)
    return train, val


def labeled_class_indices(num_classes: int, labeled_classes: str) -> list[int]:
    """Classes that get training images: the base half for base-to-new, every class otherwise."""
    if labeled_classes == "base":
        return base_new_split(num_classes)[0]
    if labeled_classes == "all":
        return list(range(num_classes))
    raise DatasetError(f"labeled classes must be 'base' or 'all', got {labeled_classes!r}")


def compact_labels(labels: Iterable[int]) -> str:
    """Sorted labels as ranges, e.g. [0, 1, 2, 5] -> '0-2,5' (short enough for store metadata)."""
    parts: list[str] = []
    ordered = sorted(set(labels))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)


def _warn_short_classes(
    splits: DatasetSplits, pool: Sequence[ImageRecord], k: int, labeled: set[int], split: str
) -> None:
    counts = Counter(record.label for record in pool)
    short = sorted(label for label in labeled if 0 < counts[label] < k)
    if short:
        listed = ", ".join(f"{splits.classnames[label]!r} ({counts[label]})" for label in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        log.warning(
            "dataset %r: %d labelled class(es) have fewer than %d %s images; keeping all of them (as CoOp): %s%s",
            splits.name,
            len(short),
            k,
            split,
            listed,
            more,
        )


def build_protocol_splits(
    splits: DatasetSplits, shots: int, val_shots: int, seed: int, labeled: Sequence[int]
) -> DatasetSplits:
    """The splits the extract stage encodes for one seed.

    train/val: CoOp's draw over ALL classes (`coop_draw`), then only the `labeled` classes kept (CoCoOp's
    `subsample_classes` comes after the draw, so a base-only run gets exactly the base-class part of the all-class
    draw); classes outside `labeled` never appear, so model selection cannot peek at them. test: the full test
    split of every class. A labelled class without train images is a DatasetError; one with fewer images than
    shots keeps all of them (as CoOp) and is logged.
    """
    num_classes = len(splits.classnames)
    keep = set(labeled)
    outside = sorted(label for label in keep if not 0 <= label < num_classes)
    if outside:
        raise DatasetError(f"dataset {splits.name!r}: labelled classes {outside[:10]} are not in 0..{num_classes - 1}")
    if len(keep) != len(labeled):
        raise DatasetError(f"dataset {splits.name!r}: labelled classes are listed more than once: {list(labeled)}")
    if shots < 1:
        raise DatasetError(f"shots must be >= 1, got {shots}")

    no_train = sorted(keep - {record.label for record in splits.train})
    if no_train:
        names = [splits.classnames[label] for label in no_train[:10]]
        raise DatasetError(
            f"dataset {splits.name!r}: labelled classes {no_train[:10]} ({names}) have no train images"
            + (f" ({len(no_train)} in all)" if len(no_train) > 10 else "")
        )

    train, val = coop_draw(splits, shots, val_shots, seed)
    train = [record for record in train if record.label in keep]
    val = [record for record in val if record.label in keep]

    _warn_short_classes(splits, splits.train, shots, keep, "train")
    if splits.val:
        _warn_short_classes(splits, splits.val, val_shots, keep, "val")
    no_val = sorted(keep - {record.label for record in val})
    if no_val:
        log.warning(
            "dataset %r: labelled classes %s have no val images%s",
            splits.name,
            no_val[:10],
            "" if splits.val else " (every train image of the class was drawn for train)",
        )

    return DatasetSplits(
        name=splits.name,
        classnames=list(splits.classnames),
        train=train,
        val=val,
        test=list(splits.test),
        meta={
            **splits.meta,
            "shots": str(shots),
            "val_shots": str(val_shots),
            "seed": str(seed),
            "labeled_classes": compact_labels(keep),
            "draw": "CoOp/Dassl generate_fewshot_dataset (random.Random(seed); train then val)",
            **({} if splits.val else {"val_source": VAL_FROM_TRAIN}),
        },
    )
