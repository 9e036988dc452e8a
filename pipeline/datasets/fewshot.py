"""The few-shot / base-to-new protocol: which images of a loaded dataset the extract stage encodes."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable

from pipeline.datasets.records import DatasetError, DatasetSplits, ImageRecord
from pipeline.features import base_new_split
from pipeline.params.dataset import DatasetParams

log = logging.getLogger(__name__)


def _by_class(records: Iterable[ImageRecord]) -> dict[int, list[ImageRecord]]:
    """Records grouped by label, labels ascending, each group sorted by path: the draw must not depend on
    the order a loader happened to list files in."""
    groups: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.label].append(record)
    return {label: sorted(groups[label], key=lambda r: str(r.path)) for label in sorted(groups)}


def sample_few_shot(records: Iterable[ImageRecord], shots: int, seed: int) -> list[ImageRecord]:
    """`shots` images per class drawn with random.Random(seed); a class with fewer keeps all of them.

    Classes are drawn in ascending label order from one generator, so the draw for the first k classes is the
    same whether or not later classes are included (base-only vs all-labelled runs share base-class shots).
    """
    if shots < 1:
        raise DatasetError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    sampled: list[ImageRecord] = []
    for label, group in _by_class(records).items():
        if len(group) < shots:
            log.warning(
                "class %r (label %d) has only %d images, fewer than shots=%d: keeping all of them",
                group[0].classname,
                label,
                len(group),
                shots,
            )
            sampled += group
        else:
            sampled += sorted(rng.sample(group, shots), key=lambda r: str(r.path))
    return sampled


def labeled_class_indices(num_classes: int, labeled_classes: str) -> list[int]:
    """Classes that get training images: the base half for base-to-new, every class otherwise."""
    if labeled_classes == "base":
        return base_new_split(num_classes)[0]
    if labeled_classes == "all":
        return list(range(num_classes))
    raise DatasetError(f"dataset.labeled_classes must be 'base' or 'all', got {labeled_classes!r}")


def build_protocol_splits(splits: DatasetSplits, params: DatasetParams) -> DatasetSplits:
    """The splits the extract stage encodes.

    train: `shots` per labelled class; val: `val_shots` per labelled class (label-only classes never appear,
    so model selection cannot peek at them); test: the full test split of every class.
    """
    labeled = set(labeled_class_indices(len(splits.classnames), params.labeled_classes))
    train_pool = [r for r in splits.train if r.label in labeled]
    val_pool = [r for r in splits.val if r.label in labeled]

    no_train = sorted(labeled - {r.label for r in train_pool})
    if no_train:
        names = [splits.classnames[label] for label in no_train[:10]]
        raise DatasetError(
            f"dataset {splits.name!r}: labelled classes {no_train[:10]} ({names}) have no train images "
            f"(dataset.labeled_classes={params.labeled_classes!r})"
        )
    no_val = sorted(labeled - {r.label for r in val_pool})
    if no_val:
        log.warning("dataset %r: labelled classes %s have no val images", splits.name, no_val[:10])

    return DatasetSplits(
        name=splits.name,
        classnames=list(splits.classnames),
        train=sample_few_shot(train_pool, params.shots, params.seed),
        val=sample_few_shot(val_pool, params.val_shots, params.seed),
        test=list(splits.test),
        meta={
            **splits.meta,
            "shots": str(params.shots),
            "val_shots": str(params.val_shots),
            "seed": str(params.seed),
            "labeled_classes": params.labeled_classes,
        },
    )
