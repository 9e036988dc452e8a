"""CLIP-Adapter: a bottleneck MLP on the image feature, blended residually, against the frozen text classifier."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, TrainingData, train
from pipeline.features import Task
from pipeline.params.finetune import ClipAdapterParams
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower


class VisualAdapter(nn.Module):
    """f -> normalize(ratio * MLP(f) + (1 - ratio) * f), MLP = Linear-ReLU-Linear-ReLU without biases (the paper's).

    The released code applies it to the encoder's raw output x; a bias-free Linear/ReLU MLP is positively homogeneous
    (MLP(c x) = c MLP(x) for c > 0), so normalize(ratio MLP(x) + (1 - ratio) x) equals the same expression on
    x / |x|: running it on the cached L2-normalised features gives the reference's result.
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

    logits = scale * adapter(f) W^T with the frozen zero-shot classifier W; only the adapter trains (CoOp's Dassl
    recipe, the method's params section).

    Scoring: any class set, own or foreign — the adapted image feature against the set's zero-shot classifier.
    """

    name = "clip_adapter"
    params: ClipAdapterParams

    def __init__(self, params: ClipAdapterParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)
        self.adapter: VisualAdapter | None = None

    def _fit(
        self,
        task: Task,
        tower: TextTower,
        seed: int,
        select: str,
        synthetic: SyntheticSource | None,
        on_epoch: EpochCallback | None,
    ) -> FitResult:
        p = self.params
        dim = task.text_classifier.shape[1]
        self.adapter = VisualAdapter(dim, p.reduction, p.ratio, torch.Generator().manual_seed(seed)).to(self.device)
        weights = task.text_classifier[self.label_space].to(self.device, torch.float32)

        def forward(features: torch.Tensor) -> torch.Tensor:
            assert self.adapter is not None
            return self.logit_scale * self.adapter(features) @ weights.T

        data = TrainingData(task, self.label_space, p, seed, self.device, synthetic)
        return train(self.adapter, forward, p, data, select=select, method=self.method, seed=seed, on_epoch=on_epoch)

    def _score_with(self, weights: torch.Tensor) -> Scorer:
        adapter = self.adapter
        assert adapter is not None
        weights = weights.to(self.device, torch.float32)
        return lambda f: self.logit_scale * adapter(f) @ weights.T

    def _scorer(self) -> Scorer:
        assert self.classes is not None
        return self._score_with(self.classes.classifier())

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        return self._score_with(target.classifier())

    def export(self) -> dict[str, Any]:
        assert self.adapter is not None
        return {**super().export(), "adapter": {k: v.cpu() for k, v in self.adapter.state_dict().items()}}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        weights = state["adapter"]
        dim, hidden = weights["fc.0.weight"].shape[1], weights["fc.0.weight"].shape[0]
        self.adapter = VisualAdapter(dim, dim // hidden, self.params.ratio, torch.Generator()).to(device)
        self.adapter.load_state_dict(weights)
        self.adapter.eval()
