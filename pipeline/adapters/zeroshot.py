"""Zero-shot CLIP: the template-ensemble text classifier, nothing trained."""

from __future__ import annotations

import torch

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, local_labels, val_accuracy
from pipeline.features import Task
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower


class ZeroShot(Adapter):
    """logits = scale * f W^T with the dataset's zero-shot classifier, for the task's classes and foreign ones alike.

    `fit` trains nothing; it only records the validation accuracy (one curve row, epoch 0).
    """

    name = "zeroshot"

    def __init__(self) -> None:
        super().__init__(None, use_synthetic=False)

    def _fit(
        self,
        task: Task,
        tower: TextTower,
        seed: int,
        select: str,
        synthetic: SyntheticSource | None,
        on_epoch: EpochCallback | None,
    ) -> FitResult:
        weights = task.text_classifier[self.label_space].to(self.device, torch.float32)
        labels = local_labels(task.val.labels.to(self.device), self.label_space, len(task.classnames))
        val = task.val.features.to(self.device, torch.float32)
        acc = val_accuracy(lambda f: self.logit_scale * f @ weights.T, val, labels)
        if on_epoch is not None:
            on_epoch(0, 0)
        return FitResult(curve=[{"epoch": 0, "train_loss": None, "val_acc": acc}], best_epoch=0, best_val_acc=acc)

    def _score_with(self, weights: torch.Tensor) -> Scorer:
        weights = weights.to(self.device, torch.float32)
        return lambda f: self.logit_scale * f @ weights.T

    def _scorer(self) -> Scorer:
        assert self.classes is not None
        return self._score_with(self.classes.classifier())

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        return self._score_with(target.classifier())
