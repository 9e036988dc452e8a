"""Tasks of the three experiment families, assembled from feature stores.

- base-to-new (CoCoOp): a dataset's classes; base = first ceil(n/2) with few-shot images, new = label-only; base test
  images are scored against base classes only, new against new only.
- cross-dataset: the source's classes (every one labelled) followed by a target's (label-only, offset by the number
  of source classes); source test against source classes, target test against target classes.
- GZSL: seen classes labelled, unseen label-only; every test image against every class, per-class mean accuracy.
"""

from __future__ import annotations

import torch

from pipeline.feature_store import FeatureStore, StoreError
from pipeline.features import EvalSplit, Task
from pipeline.layout import Protocol


def _check_pair(eval_store: FeatureStore, train_store: FeatureStore) -> None:
    if eval_store.classnames != train_store.classnames:
        raise StoreError(
            f"{train_store.path} and {eval_store.path} list different classes; rebuild them from the same dataset"
        )
    if eval_store.meta["backbone"].get("weights_id") != train_store.meta["backbone"].get("weights_id"):
        raise StoreError(f"{train_store.path} and {eval_store.path} were made with different backbones")


def _classifiers(store: FeatureStore) -> dict[str, torch.Tensor]:
    return {name: store.classifier(name) for name in store.classifier_names}


def _shots(train_store: FeatureStore) -> int:
    counts = torch.bincount(torch.as_tensor(train_store.array("train/labels")))
    return int(counts.max()) if len(counts) else 0


def base_to_new_task(eval_store: FeatureStore, train_store: FeatureStore) -> Task:
    _check_pair(eval_store, train_store)
    base, new = list(eval_store.meta["base"]), list(eval_store.meta["new"])
    if list(train_store.meta["labeled"]) != base:
        raise StoreError(f"{train_store.path} is not a base-class few-shot store (labelled classes differ from base)")
    test = eval_store.split("test")
    return Task(
        protocol="base_to_new",
        classnames=eval_store.classnames,
        labeled=base,
        label_only=new,
        classifiers=_classifiers(eval_store),
        train=train_store.split("train"),
        val=train_store.split("val"),
        evals=[EvalSplit("base", test.of_classes(base), base), EvalSplit("new", test.of_classes(new), new)],
        shots=_shots(train_store),
        logit_scale=eval_store.logit_scale,
    )


def source_task(eval_store: FeatureStore, train_store: FeatureStore) -> Task:
    """A cross-dataset source on its own: every class labelled, scored on its test split."""
    _check_pair(eval_store, train_store)
    classes = list(range(len(eval_store.classnames)))
    if sorted(train_store.meta["labeled"]) != classes:
        raise StoreError(f"{train_store.path} does not label every class (cross-dataset sources must)")
    return Task(
        protocol="cross_dataset",
        classnames=eval_store.classnames,
        labeled=classes,
        label_only=[],
        classifiers=_classifiers(eval_store),
        train=train_store.split("train"),
        val=train_store.split("val"),
        evals=[EvalSplit("source", eval_store.split("test"), classes)],
        shots=_shots(train_store),
        logit_scale=eval_store.logit_scale,
    )


def cross_dataset_task(source: Task, target_store: FeatureStore, target: str) -> Task:
    """The source task extended by a target's classes (label-only, indices offset by the source's class count)."""
    if target_store.meta["backbone"].get("weights_id") is None:
        raise StoreError(f"{target_store.path} has no backbone identity")
    offset = len(source.classnames)
    n_target = len(target_store.classnames)
    target_classes = list(range(offset, offset + n_target))
    theirs = _classifiers(target_store)
    classifiers = {
        name: torch.cat([source.classifier(name), theirs.get(name, theirs["zeroshot"])])
        for name in sorted(set(source.classifiers) | set(theirs))
    }
    return Task(
        protocol="cross_dataset",
        classnames=source.classnames + target_store.classnames,
        labeled=list(source.labeled),
        label_only=target_classes,
        classifiers=classifiers,
        train=source.train,
        val=source.val,
        evals=[
            EvalSplit("source", source.evals[0].test, list(source.labeled)),
            EvalSplit(target, target_store.split("test").relabel(offset), target_classes),
        ],
        shots=source.shots,
        logit_scale=source.logit_scale,
    )


def gzsl_task(eval_store: FeatureStore, train_store: FeatureStore) -> Task:
    _check_pair(eval_store, train_store)
    seen, unseen = list(eval_store.meta["seen"]), list(eval_store.meta["unseen"])
    every = list(range(len(eval_store.classnames)))
    test = eval_store.split("test")
    return Task(
        protocol="gzsl",
        classnames=eval_store.classnames,
        labeled=seen,
        label_only=unseen,
        classifiers=_classifiers(eval_store),
        train=train_store.split("train"),
        val=train_store.split("val"),
        evals=[
            EvalSplit("seen", test.of_classes(seen), every, per_class_mean=True),
            EvalSplit("unseen", test.of_classes(unseen), every, per_class_mean=True),
        ],
        shots=_shots(train_store),
        logit_scale=eval_store.logit_scale,
    )


def label_only_classes(eval_store: FeatureStore, protocol: Protocol) -> list[int]:
    """The classes of `eval_store` that have a name only: new (base-to-new), unseen (GZSL), or every class of a
    cross-dataset target."""
    if protocol == "cross_dataset":
        return list(range(len(eval_store.classnames)))
    return list(eval_store.meta["new" if protocol == "base_to_new" else "unseen"])


def protocol_task(
    protocol: Protocol,
    eval_store: FeatureStore,
    train_store: FeatureStore,
    target_store: FeatureStore | None = None,
    target: str | None = None,
) -> Task:
    """The task a protocol fits on: base-to-new, GZSL, a cross-dataset source alone (no target), or a source with a
    target's classes appended."""
    if protocol == "base_to_new":
        return base_to_new_task(eval_store, train_store)
    if protocol == "gzsl":
        return gzsl_task(eval_store, train_store)
    source = source_task(eval_store, train_store)
    if target_store is None or target is None:
        return source
    return cross_dataset_task(source, target_store, target)
