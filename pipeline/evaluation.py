"""Scoring fitted adapters on a task's test splits; the per-protocol summaries.

Every accuracy is a percentage. An `EvalSplit` is scored against its own label space: top-1 over images, or (GZSL)
the mean over classes of per-class top-1 accuracy (Xian et al.'s metric). Summaries:
- base-to-new: base, new, hm (harmonic mean);
- GZSL: seen (S), unseen (U), hm;
- cross-dataset: source, and one entry per target.
A split without test images has accuracy NaN, and so has any H that needs it.
"""

from __future__ import annotations

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
    if len(labels) == 0:
        return float("nan")
    hit = (pred.cpu() == labels.cpu()).double()
    if not per_class_mean:
        return 100.0 * float(hit.mean())
    classes, inverse = torch.unique(labels.cpu(), return_inverse=True)
    per_class = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, hit)
    per_class /= torch.bincount(inverse, minlength=len(classes)).double()
    return 100.0 * float(per_class.mean())


def predict(adapter: Adapter, test: LabeledFeatures, classes: list[int]) -> torch.Tensor:
    """Task class index predicted for each test feature, choosing only among `classes`."""
    logits = adapter.logits(test.features, classes)
    return torch.as_tensor(classes, dtype=torch.long, device=logits.device)[logits.argmax(dim=-1)].cpu()


def score_split(adapter: Adapter, split: EvalSplit) -> float:
    return accuracy(predict(adapter, split.test, split.classes), split.test.labels, split.per_class_mean)


def score_task(adapter: Adapter, task: Task) -> dict[str, float]:
    """{split name: accuracy} plus the protocol's harmonic mean (base-to-new and GZSL)."""
    scores = {split.name: score_split(adapter, split) for split in task.evals}
    if task.protocol == "base_to_new":
        scores["hm"] = harmonic_mean(scores["base"], scores["new"])
    elif task.protocol == "gzsl":
        scores["hm"] = harmonic_mean(scores["seen"], scores["unseen"])
    return scores


def score_foreign(adapter: Adapter, test: LabeledFeatures, target: ClassSet, tower: TextTower) -> float:
    """Accuracy of a source-only fit on a foreign dataset: its test images vs all of its classes."""
    logits = adapter.logits(test.features, target=target, tower=tower)
    return accuracy(logits.argmax(dim=-1), test.labels)


def per_class_accuracy(adapter: Adapter, task: Task) -> pl.DataFrame:
    """One row per class with test images, each scored within its split's label space."""
    rows = []
    for split in task.evals:
        if len(split.test) == 0:
            continue
        pred, labels = predict(adapter, split.test, split.classes), split.test.labels.cpu()
        for c in sorted(set(labels.tolist())):
            mask = labels == c
            rows.append(
                {
                    "class": c,
                    "classname": task.classnames[c],
                    "split": split.name,
                    "accuracy": 100.0 * float((pred[mask] == c).double().mean()),
                    "n_test": int(mask.sum()),
                }
            )
    return pl.DataFrame(rows, schema=PER_CLASS_SCHEMA)
