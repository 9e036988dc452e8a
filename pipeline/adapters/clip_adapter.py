"""CLIP-Adapter: a bottleneck MLP on the image feature, blended residually, against the frozen text classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, TrainingData, train_dassl_sgd
from pipeline.features import TaskFeatures
from pipeline.params.finetune import ClipAdapterParams
from pipeline.text_tower import TextTower


class VisualAdapter(nn.Module):
    """f -> normalize(ratio * MLP(f) + (1 - ratio) * f), MLP = Linear-ReLU-Linear-ReLU, no biases (the paper's).

    f is the cached, L2-normalised feature: the released code blends the encoder's unnormalised output, here the
    MLP output is blended with a unit vector (the cache holds nothing else).
    """

    def __init__(self, dim: int, reduction: int, ratio: float, generator: torch.Generator):
        super().__init__()
        self.ratio = ratio
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(),
        )
        # nn.Linear's default init, but from our generator: the same weights for a seed whatever ran before.
        for layer in self.fc:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ratio * self.fc(f) + (1.0 - self.ratio) * f, dim=-1)


class ClipAdapter(Adapter):
    """CLIP-Adapter (and CLIP-Adapter+SHIP with `use_synthetic=True`: synthetic features join the training data).

    logits = scale * adapter(f) W_text^T with the frozen zero-shot classifier W_text; only the adapter trains
    (SGD + Dassl's warm-up/cosine schedule, per epoch).

    Model selection: the epoch with the best accuracy on `task.val` (labelled classes, scored in the training label
    space) is kept; test features are never touched.

    Scoring: any class set, own or foreign — the adapted image feature against the target's text classifier.
    """

    name = "clip_adapter"

    def __init__(self, params: ClipAdapterParams, use_synthetic: bool = False):
        super().__init__(use_synthetic)
        self.params = params
        self.adapter: VisualAdapter | None = None

    def _fit(self, task: TaskFeatures, tower: TextTower, seed: int, on_epoch: EpochCallback | None) -> FitResult:
        p = self.params
        dim = task.text_classifier.shape[1]
        self.adapter = VisualAdapter(dim, p.reduction, p.ratio, torch.Generator().manual_seed(seed)).to(self.device)
        weights = task.text_classifier[self.label_space].to(self.device, torch.float32)

        def forward(features: torch.Tensor) -> torch.Tensor:
            return self.logit_scale * self.adapter(features) @ weights.T

        data = TrainingData(task, self.label_space, self.use_synthetic, p.batch_size, seed, self.device)
        return train_dassl_sgd(self.adapter, forward, p, data, on_epoch)

    def _scorer(self, target: ClassSet, own: bool) -> Scorer:
        assert self.adapter is not None
        weights = target.text_classifier.to(self.device, torch.float32)
        return lambda f: self.logit_scale * self.adapter(f) @ weights.T
