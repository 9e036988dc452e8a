"""Tip-Adapter-F: a key-value cache of training features (learnable keys) added to zero-shot CLIP's logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import (
    Adapter,
    ClassSet,
    EpochCallback,
    FitResult,
    Scorer,
    TrainingData,
    local_labels,
    train,
)
from pipeline.features import LabeledFeatures, Task
from pipeline.params.finetune import TipAdapterFParams
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower

CLASSIFIER = "tip_adapter_f"  # the task classifier built from Tip-Adapter's templates


class CacheKeys(nn.Module):
    """The only trainable state of Tip-Adapter-F: the cache keys [K, D], initialised with the cached features."""

    def __init__(self, keys: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(keys.clone())


def cache_keys(train: LabeledFeatures, views: int | None) -> torch.Tensor:
    """Tip-Adapter's keys: per image the L2-normalised mean of the raw encoder outputs of its augmented views
    (build_cache_model averages `augment_epoch` encodings of augmented images, then normalises). Without cached
    augmented views, the clean view."""
    if not train.has_views or train.augmented_views == 0:
        return train.clean().features.float()
    k = train.augmented_views if views is None else min(views, train.augmented_views)
    if train.norms is None:
        raw = train.features[:, 1 : 1 + k].float()  # no norms cached: unit vectors (approximation)
    else:
        raw = train.features[:, 1 : 1 + k].float() * train.norms[:, 1 : 1 + k, None].float()
    return F.normalize(raw.mean(dim=1), dim=-1)


def search_grid(scale: float, steps: int) -> list[float]:
    """Tip-Adapter's search values: `steps` points i (scale - 0.1) / steps + 0.1, i = 0..steps-1 (utils.search_hp)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


class TipAdapterF(Adapter):
    """Tip-Adapter-F (and Tip-Adapter-F+SHIP with `use_synthetic=True`).

    logits = scale * f W^T + alpha * exp(-beta * (1 - f K^T)) V, where W is the zero-shot classifier of Tip-Adapter's
    templates, K (learnable) the cache keys of the training images and V their one-hot labels over the label space.
    With SHIP the cache also holds synthetic features of the label-only classes (`synthetic_cache_per_class` each,
    default the shot count) and the synthetic features join the training batches. A class without cache entries gets
    no cache term.

    Training: AdamW + per-step cosine, alpha/beta fixed at their initial values (as the released code). Model
    selection per `select`; then alpha and beta are searched on `task.val` over Tip-Adapter's grid (the first best
    pair in beta-major order, as utils.search_hp). Test features are never touched.

    Scoring a foreign class set (cross-dataset transfer): the cache's values are labels of the fitted task's classes
    and say nothing about other classes, so the cache term is dropped: zero-shot CLIP with the target's classifier.
    """

    name = "tip_adapter_f"
    params: TipAdapterFParams

    def __init__(self, params: TipAdapterFParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)
        self.alpha = 1.0
        self.beta = 1.0
        self.keys: CacheKeys | None = None
        self.values: torch.Tensor | None = None  # [K, C] one-hot over all task classes

    def _cache_logits(self, features: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
        assert self.keys is not None
        affinity = features @ self.keys.weight.T
        return torch.exp(-beta * (1.0 - affinity)) @ values

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
        if p.init_alpha is None or p.init_beta is None or p.search_scale is None:
            raise ValueError("tip_adapter_f params are not resolved for a dataset (init_alpha/init_beta/search_scale)")
        self.alpha, self.beta = p.init_alpha, p.init_beta
        generator = torch.Generator().manual_seed(seed)
        keys, key_labels = [cache_keys(task.train, p.cache_views).cpu()], [task.train.labels.cpu()]
        if synthetic is not None:
            pool = synthetic.pool(p.synthetic_cache_per_class or task.shots, generator)
            keys.append(F.normalize(pool.features.float().cpu(), dim=-1))
            key_labels.append(pool.labels.cpu())
        self.keys = CacheKeys(torch.cat(keys).to(self.device))
        self.values = F.one_hot(torch.cat(key_labels), len(task.classnames)).float().to(self.device)
        values = self.values[:, self.label_space]
        weights = task.classifier(CLASSIFIER)[self.label_space].to(self.device, torch.float32)

        def forward(features: torch.Tensor) -> torch.Tensor:
            text = self.logit_scale * features @ weights.T
            return text + self.alpha * self._cache_logits(features, values, self.beta)

        data = TrainingData(task, self.label_space, p, seed, self.device, synthetic)
        result = train(self.keys, forward, p, data, select=select, method=self.method, seed=seed, on_epoch=on_epoch)

        # alpha/beta search on validation features, with the kept keys (Tip-Adapter's search_hp).
        val = task.val.features.to(self.device, torch.float32)
        val_labels = local_labels(task.val.labels.to(self.device), self.label_space, len(task.classnames))
        alphas = torch.tensor(search_grid(p.search_scale[1], p.search_steps[1]), device=self.device)
        best_acc = 0.0
        with torch.no_grad():
            text = self.logit_scale * val @ weights.T
            for beta in search_grid(p.search_scale[0], p.search_steps[0]):
                cache = self._cache_logits(val, values, beta)
                logits = text.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)  # [alphas, N, C]
                accs = 100.0 * (logits.argmax(dim=-1) == val_labels).float().mean(dim=1)
                i = int(accs.argmax())  # the first maximum: the reference keeps a pair only if strictly better
                if float(accs[i]) > best_acc:
                    best_acc, self.alpha, self.beta = float(accs[i]), float(alphas[i]), beta
        result.info = {"alpha": self.alpha, "beta": self.beta, "searched_val_acc": best_acc}
        return result

    def _scorer(self) -> Scorer:
        assert self.values is not None and self.classes is not None
        values = self.values
        weights = self.classes.classifier(CLASSIFIER).to(self.device, torch.float32)
        return lambda f: self.logit_scale * f @ weights.T + self.alpha * self._cache_logits(f, values, self.beta)

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        weights = target.classifier(CLASSIFIER).to(self.device, torch.float32)
        return lambda f: self.logit_scale * f @ weights.T

    def export(self) -> dict[str, Any]:
        return {**super().export(), "alpha": self.alpha, "beta": self.beta}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
