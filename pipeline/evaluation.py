"""Scoring fitted adapters on a task's test splits; the per-protocol summaries.

Every accuracy is a percentage. An `EvalSplit` is scored against its own label space: top-1 over images, or (GZSL)
the mean over classes of per-class top-1 accuracy (Xian et al.'s metric). Summaries:
- base-to-new: base, new, hm (harmonic mean);
- GZSL: seen (S), unseen (U), hm;
- cross-dataset: source, and one entry per target.
A split without test images has accuracy NaN, and so has any H that needs it.

Every score is computed from a `SplitPredictions`: which test images the method got right. The same record is
written per seed (`predictions_frame`), so paired per-image statistics (pipeline/claims.py) see exactly the images
behind each published accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl
import torch

from pipeline.adapters.base import Adapter, ClassSet
from pipeline.features import EvalSplit, LabeledFeatures, Task
from pipeline.metrics import harmonic_mean
from pipeline.text_tower import TextTower

PER_CLASS_SCHEMA = {
    "class": pl.Int64,
    "classname": pl.String,
    "split": pl.String,
    "accuracy": pl.Float64,
    "n_test": pl.Int64,
}


def accuracy(pred: torch.Tensor, labels: torch.Tensor, per_class_mean: bool = False) -> float:
    """Top-1 accuracy in percent (NaN without rows); `per_class_mean` averages the per-class accuracies instead."""
    return hit_rate(pred.cpu() == labels.cpu(), labels, per_class_mean)


def hit_rate(correct: torch.Tensor, labels: torch.Tensor, per_class_mean: bool = False) -> float:
    """`accuracy` from the per-image right/wrong record: the fraction right in percent, or the mean over classes."""
    if len(labels) == 0:
        return float("nan")
    hit = correct.cpu().double()
    if not per_class_mean:
        return 100.0 * float(hit.mean())
    classes, inverse = torch.unique(labels.cpu(), return_inverse=True)
    per_class = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, hit)
    per_class /= torch.bincount(inverse, minlength=len(classes)).double()
    return 100.0 * float(per_class.mean())


@dataclass(frozen=True)
class SplitPredictions:
    """One method on one test split, image by image: what its accuracy is computed from.

    Rows follow the split's test images in the store's test order (a split keeps the store's order when it selects
    its classes), so two methods' records of a split pair up row by row.
    """

    correct: torch.Tensor  # [N] bool: the top-1 class within `classes` is the true one
    labels: torch.Tensor  # [N] int64: the true class (task class index)
    classes: list[int]  # the split's label space
    per_class_mean: bool = False

    @property
    def accuracy(self) -> float:
        return hit_rate(self.correct, self.labels, self.per_class_mean)

    def label_positions(self) -> torch.Tensor:
        """The true class of each image as its position in the label space: the same number for a split scored
        within a task (whose target classes are offset past the source's) and scored on its own (`predict_foreign`)."""
        space = torch.as_tensor(self.classes, dtype=torch.long)
        order = torch.argsort(space)
        return order[torch.searchsorted(space[order], self.labels.cpu())]


def predict(adapter: Adapter, test: LabeledFeatures, classes: list[int]) -> torch.Tensor:
    """Task class index predicted for each test feature, choosing only among `classes`."""
    logits = adapter.logits(test.features, classes)
    return torch.as_tensor(classes, dtype=torch.long, device=logits.device)[logits.argmax(dim=-1)].cpu()


def predict_split(adapter: Adapter, split: EvalSplit) -> SplitPredictions:
    labels = split.test.labels.cpu()
    correct = predict(adapter, split.test, split.classes) == labels
    return SplitPredictions(correct, labels, list(split.classes), split.per_class_mean)


def predict_task(adapter: Adapter, task: Task) -> dict[str, SplitPredictions]:
    """{split name: per-image record} for every test split of the task, in the task's order."""
    return {split.name: predict_split(adapter, split) for split in task.evals}


def score_split(adapter: Adapter, split: EvalSplit) -> float:
    return predict_split(adapter, split).accuracy


def task_scores(protocol: str, predictions: Mapping[str, SplitPredictions]) -> dict[str, float]:
    """{split name: accuracy} plus the protocol's harmonic mean (base-to-new and GZSL)."""
    scores = {name: p.accuracy for name, p in predictions.items()}
    if protocol == "base_to_new":
        scores["hm"] = harmonic_mean(scores["base"], scores["new"])
    elif protocol == "gzsl":
        scores["hm"] = harmonic_mean(scores["seen"], scores["unseen"])
    return scores


def score_task(adapter: Adapter, task: Task) -> dict[str, float]:
    """{split name: accuracy} plus the protocol's harmonic mean (base-to-new and GZSL)."""
    return task_scores(task.protocol, predict_task(adapter, task))


def predict_foreign(adapter: Adapter, test: LabeledFeatures, target: ClassSet, tower: TextTower) -> SplitPredictions:
    """A source-only fit on a foreign dataset, image by image: its test images vs all of its classes."""
    logits = adapter.logits(test.features, target=target, tower=tower)
    labels = test.labels.cpu()
    correct = logits.argmax(dim=-1).cpu() == labels
    return SplitPredictions(correct, labels, list(range(len(target.classnames))))


def score_foreign(adapter: Adapter, test: LabeledFeatures, target: ClassSet, tower: TextTower) -> float:
    """Accuracy of a source-only fit on a foreign dataset: its test images vs all of its classes."""
    return predict_foreign(adapter, test, target, tower).accuracy


def per_class_rows(task: Task, predictions: Mapping[str, SplitPredictions]) -> pl.DataFrame:
    """One row per class with test images, each scored within its split's label space."""
    rows = []
    for split in task.evals:
        record = predictions[split.name]
        if len(record.labels) == 0:
            continue
        for c in sorted(set(record.labels.tolist())):
            mask = record.labels == c
            rows.append(
                {
                    "class": c,
                    "classname": task.classnames[c],
                    "split": split.name,
                    "accuracy": 100.0 * float(record.correct[mask].double().mean()),
                    "n_test": int(mask.sum()),
                }
            )
    return pl.DataFrame(rows, schema=PER_CLASS_SCHEMA)


def per_class_accuracy(adapter: Adapter, task: Task) -> pl.DataFrame:
    """One row per class with test images, each scored within its split's label space."""
    return per_class_rows(task, predict_task(adapter, task))


# --- the per-image record on disk ------------------------------------------------------------------------------

PREDICTION_KEYS = {"split": pl.String, "image": pl.Int32, "label": pl.Int32}


def predictions_frame(records: Mapping[str, Mapping[str, SplitPredictions]]) -> pl.DataFrame:
    """{method: {split: record}} as one table: a row per (split, test image), in the split's test order, with `image`
    (its position in the split), `label` (its true class as a position in the split's label space) and one boolean
    column per method (null where the method was not scored on that split, e.g. a cross-dataset source-only fit on
    the source split of a target's directory). Splits appear in the order first met, methods in the order given.

    Two records of one split must describe the same images (same count, same classes in the same order)."""
    methods = list(records)
    splits: dict[str, torch.Tensor] = {}
    for method in methods:
        for name, record in records[method].items():
            positions = record.label_positions()
            if name not in splits:
                splits[name] = positions
            elif not torch.equal(splits[name], positions):
                raise ValueError(f"{method}'s {name!r} split does not list the same test images as the others")
    schema = {**PREDICTION_KEYS, **dict.fromkeys(methods, pl.Boolean)}
    frames = []
    for name, positions in splits.items():
        n = len(positions)
        columns: dict[str, Sequence[object]] = {
            "split": [name] * n,
            "image": list(range(n)),
            "label": positions.tolist(),
        }
        for method in methods:
            record = records[method].get(name)
            columns[method] = [None] * n if record is None else record.correct.tolist()
        frames.append(pl.DataFrame(columns, schema=schema))
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
