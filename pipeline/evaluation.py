"""Scoring fitted adapters: base-to-new, joint (generalized zero-shot), per-class and cross-dataset accuracy.

Every accuracy is a percentage over test images. Protocols:
- base-to-new (CoCoOp): base test images vs base classes only, new test images vs new classes only; H = harmonic
  mean of the two.
- joint (GZSL): every test image vs all classes; accuracy reported separately on base- and new-class images.
- transfer (cross-dataset): another dataset's test images vs that dataset's classes (`ClassSet`).
A split without test images has accuracy NaN (e.g. "new" when every class is labelled), and so has its H.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import torch

from pipeline.adapters.base import Adapter, ClassSet
from pipeline.features import LabeledFeatures, TaskFeatures


@dataclass(frozen=True)
class TransferTask:
    """A foreign dataset to score a fitted adapter on: its classes and its test features."""

    name: str
    classes: ClassSet
    test: LabeledFeatures


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent; `labels` are column indices of `logits`. NaN when there are no rows."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (logits.argmax(dim=-1) == labels.to(logits.device)).float().mean().item()


def harmonic_mean(a: float, b: float) -> float:
    """H of two accuracies: 0 if either is 0, NaN if either is NaN."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if a <= 0.0 or b <= 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def predict(adapter: Adapter, features: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Global class index predicted for each feature, choosing only among `classes`."""
    logits = adapter.logits(features, classes)
    return torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)[logits.argmax(dim=-1)]


def _of_classes(feats: LabeledFeatures, classes: Sequence[int]) -> LabeledFeatures:
    """The rows whose label is in `classes` (device-safe, unlike building the class tensor on the CPU)."""
    mask = torch.isin(
        feats.labels, torch.as_tensor(list(classes), dtype=feats.labels.dtype, device=feats.labels.device)
    )
    return LabeledFeatures(feats.features[mask], feats.labels[mask])


def _restricted_accuracy(adapter: Adapter, test: LabeledFeatures, classes: Sequence[int]) -> float:
    """Accuracy on the test images of `classes`, scored against `classes` only."""
    subset = _of_classes(test, classes)
    if len(subset) == 0:
        return float("nan")
    pred = predict(adapter, subset.features, classes)
    return 100.0 * (pred == subset.labels.to(pred.device)).float().mean().item()


def base_to_new(adapter: Adapter, task: TaskFeatures) -> dict[str, float]:
    """{"base", "new", "hm"}: base test vs base classes only, new test vs new classes only."""
    base = _restricted_accuracy(adapter, task.test, task.base)
    new = _restricted_accuracy(adapter, task.test, task.new)
    return {"base": base, "new": new, "hm": harmonic_mean(base, new)}


def joint(adapter: Adapter, task: TaskFeatures) -> dict[str, float]:
    """{"joint_base", "joint_new", "joint_hm"}: all test images vs all classes, accuracy split by true class."""
    classes = list(range(len(task.classnames)))
    pred = predict(adapter, task.test.features, classes).cpu()
    labels = task.test.labels.cpu()
    out = {}
    for key, split in (("joint_base", task.base), ("joint_new", task.new)):
        mask = torch.isin(labels, torch.as_tensor(list(split), dtype=labels.dtype))
        out[key] = 100.0 * (pred[mask] == labels[mask]).float().mean().item() if mask.any() else float("nan")
    out["joint_hm"] = harmonic_mean(out["joint_base"], out["joint_new"])
    return out


def per_class_accuracy(adapter: Adapter, task: TaskFeatures) -> pl.DataFrame:
    """One row per class with test images, under the base-to-new protocol (scored within its own split).

    Columns: class, classname, split ("base"/"new"), accuracy (percent), n_test.
    """
    rows = []
    for split, classes in (("base", task.base), ("new", task.new)):
        subset = _of_classes(task.test, classes)
        if len(subset) == 0:
            continue
        pred = predict(adapter, subset.features, classes).cpu()
        labels = subset.labels.cpu()
        for c in classes:
            mask = labels == c
            n = int(mask.sum())
            if n:
                acc = 100.0 * (pred[mask] == c).float().mean().item()
                rows.append({"class": c, "classname": task.classnames[c], "split": split, "accuracy": acc, "n_test": n})
    schema = {"class": pl.Int64, "classname": pl.String, "split": pl.String, "accuracy": pl.Float64, "n_test": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def transfer(adapter: Adapter, test: LabeledFeatures, target: ClassSet) -> float:
    """Accuracy on a foreign dataset: its test images vs all of its classes (labels index `target`)."""
    return accuracy(adapter.logits(test.features, target=target), test.labels)
