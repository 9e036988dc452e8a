"""Tip-Adapter-F: a key-value cache of training features (learnable keys) added to zero-shot CLIP's logits."""

from __future__ import annotations

import math

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
from pipeline.features import TaskFeatures
from pipeline.params.finetune import TipAdapterFParams
from pipeline.text_tower import TextTower


class CacheKeys(nn.Module):
    """The only trainable state of Tip-Adapter-F: the cache keys [K, D], initialised with the cached features."""

    def __init__(self, keys: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(keys.clone())


class TipAdapterF(Adapter):
    """Tip-Adapter-F (and Tip-Adapter-F+SHIP with `use_synthetic=True`).

    logits = scale * f W_text^T + alpha * exp(-beta * (1 - f K^T)) V, where K (learnable, initialised with the clean
    view of every training image) are the cache keys and V their one-hot labels over all task classes. With SHIP
    the cache also holds synthetic features of the label-only classes (`synthetic_cache_per_class` of each), and
    the synthetic features join the training batches. A class without cache entries gets no cache term.

    Training: AdamW + per-step cosine, alpha/beta fixed at their initial values (as in the released code).

    Model selection: the epoch with the best accuracy on `task.val` is kept; then alpha and beta are grid-searched
    on `task.val` (the initial pair is kept unless a grid pair is strictly better). Both in the training label
    space; test features are never touched.

    Scoring a foreign class set (cross-dataset transfer): the cache's values are labels of the fitted task's
    classes, so they say nothing about other classes; the cache term is dropped and the scores are the text term
    alone, i.e. zero-shot CLIP with the target's classifier (the learned keys are the only trained state).
    """

    name = "tip_adapter_f"

    def __init__(self, params: TipAdapterFParams, use_synthetic: bool = False):
        super().__init__(use_synthetic)
        self.params = params
        self.alpha = params.alpha
        self.beta = params.beta
        self.keys: CacheKeys | None = None
        self.values: torch.Tensor | None = None  # [K, C] one-hot over all task classes

    def build_cache(self, task: TaskFeatures, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [K, D], global labels [K]): clean training features, + synthetic ones with SHIP."""
        clean = task.train.clean()
        keys, labels = [clean.features.cpu()], [clean.labels.cpu()]
        if self.use_synthetic and task.synthetic is not None:
            per_class = self.params.synthetic_cache_per_class or int(torch.bincount(labels[0]).max().item())
            syn_features, syn_labels = task.synthetic.features.cpu(), task.synthetic.labels.cpu()
            for c in syn_labels.unique().tolist():
                rows = torch.nonzero(syn_labels == c).squeeze(1)
                rows = rows[torch.randperm(len(rows), generator=generator)[:per_class]]
                keys.append(syn_features[rows])
                labels.append(syn_labels[rows])
        return torch.cat(keys).float(), torch.cat(labels)

    def _cache_logits(self, features: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
        assert self.keys is not None
        affinity = features @ self.keys.weight.T
        return torch.exp(-beta * (1.0 - affinity)) @ values

    def _fit(self, task: TaskFeatures, tower: TextTower, seed: int, on_epoch: EpochCallback | None) -> FitResult:
        p = self.params
        self.alpha, self.beta = p.alpha, p.beta
        keys, key_labels = self.build_cache(task, torch.Generator().manual_seed(seed))
        self.keys = CacheKeys(keys.to(self.device))
        self.values = F.one_hot(key_labels, len(task.classnames)).float().to(self.device)
        values = self.values[:, self.label_space]
        weights = task.text_classifier[self.label_space].to(self.device, torch.float32)

        def forward(features: torch.Tensor) -> torch.Tensor:
            text = self.logit_scale * features @ weights.T
            return text + self.alpha * self._cache_logits(features, values, self.beta)

        data = TrainingData(task, self.label_space, self.use_synthetic, p.batch_size, seed, self.device)
        optimizer = torch.optim.AdamW(self.keys.parameters(), lr=p.lr, eps=p.eps, weight_decay=p.weight_decay)
        total_steps = p.epochs * len(data)
        result = train(
            self.keys,
            forward,
            optimizer,
            lambda _epoch, step: 0.5 * p.lr * (1.0 + math.cos(math.pi * step / total_steps)),
            data,
            p.epochs,
            on_epoch,
        )

        # alpha/beta search on validation features, with the selected keys.
        val = task.val.features.to(self.device, torch.float32)
        val_labels = local_labels(task.val.labels.to(self.device), self.label_space, len(task.classnames))
        best_acc = result.best_val_acc
        with torch.no_grad():
            text = self.logit_scale * val @ weights.T
            for beta in p.search_beta:
                cache = self._cache_logits(val, values, beta)
                for alpha in p.search_alpha:
                    acc = 100.0 * ((text + alpha * cache).argmax(dim=-1) == val_labels).float().mean().item()
                    if acc > best_acc:
                        best_acc, self.alpha, self.beta = acc, alpha, beta
        result.info = {"alpha": self.alpha, "beta": self.beta, "searched_val_acc": best_acc}
        return result

    def _scorer(self, target: ClassSet, own: bool) -> Scorer:
        weights = target.text_classifier.to(self.device, torch.float32)
        if not own:
            return lambda f: self.logit_scale * f @ weights.T
        assert self.values is not None
        values = self.values
        return lambda f: self.logit_scale * f @ weights.T + self.alpha * self._cache_logits(f, values, self.beta)
