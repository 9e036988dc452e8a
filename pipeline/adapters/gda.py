"""GDA: training-free Gaussian discriminant analysis on cached CLIP features, blended with zero-shot CLIP.

Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (ICLR 2024), code mrflogs/ICLR24:
main_few_shots.py, main_base2new.py, main_robustness.py, configs/*/*.yaml.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, local_labels
from pipeline.features import LabeledFeatures, Task
from pipeline.params.finetune import GdaParams
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

CLASSIFIER = "tip_adapter_f"  # the reference's zero-shot term uses Tip-Adapter's dataset templates (ImageNet: 7)
DEFAULT_ALPHA = 0.1  # kept when no alpha of the grid classifies a validation image correctly (the reference's init)
_CHUNK = 32  # new classes whose D x D precision matrices are inverted at once


def training_samples(train: LabeledFeatures, views: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's samples: the L2-normalised feature of every augmented view of every training image
    (`augment_epoch` passes of the augmenting loader), [N x V, D] with labels; the clean view when none is cached."""
    if not train.has_views or train.augmented_views == 0:
        return train.clean().features.float(), train.labels
    k = train.augmented_views if views is None else min(views, train.augmented_views)
    feats = train.features[:, 1 : 1 + k].float()
    return feats.reshape(-1, feats.shape[-1]), train.labels.repeat_interleave(k)


def _pinv(matrix: torch.Tensor) -> torch.Tensor:
    """torch.linalg.pinv of symmetric matrices with the cut-off the reference's float32 pinv applies
    (max(M, N) x float32 eps x the largest singular value), computed in float64."""
    rtol = matrix.shape[-1] * torch.finfo(torch.float32).eps
    return torch.linalg.pinv(matrix.double(), rtol=rtol, hermitian=True)


def class_mean_precision(groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """main_base2new.py: pinv of the mean over classes of each class's unbiased covariance (torch.cov)."""
    covs = torch.stack([torch.cov(x.double().T) for x in groups])
    return _pinv(covs.mean(dim=0))


def ks_precision(groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """main_few_shots.py / main_robustness.py ("KS estimator"): the class-centred samples Z pooled, S = cov(Z),
    precision = D pinv((N - 1) S + tr(S) I)."""
    centred = torch.cat([x.double() - x.double().mean(dim=0, keepdim=True) for x in groups])
    n, dim = centred.shape
    cov = torch.cov(centred.T)
    eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
    return dim * _pinv((n - 1) * cov + torch.trace(cov) * eye)


def linear_head(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GDA with a shared covariance as a linear classifier: W = mu P [C, D] and the quadratic term -mu P mu^T / 2
    [C] (the class prior is added by the scorer)."""
    weights = means.double() @ precision
    return weights.float(), (-0.5 * (weights * means.double()).sum(dim=-1)).float()


def knn_statistics(
    vecs: torch.Tensor, text: torch.Tensor, k: int, text_weight: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """main_base2new.py's estimate for classes without images, from the training samples `vecs` [N, D] and the
    classes' text embeddings `text` [C, D]: per class the k samples nearest to its text embedding (largest dot
    product); mean = the mean of those k samples and `text_weight` copies of the text embedding; precision = the
    mean over classes of D pinv((k - 1) C_c + tr(C_c) I), C_c = the k samples' covariance about the text embedding
    (divided by k - 1). Returns (means [C, D], the shared precision [D, D])."""
    k = min(k, vecs.shape[0])
    if k < 2:
        raise ValueError(f"the nearest-neighbour estimate needs at least 2 training samples, got {vecs.shape[0]}")
    dim = vecs.shape[1]
    vecs, text = vecs.float(), text.float()
    eye = torch.eye(dim, dtype=torch.float64, device=vecs.device)
    total = torch.zeros(dim, dim, dtype=torch.float64, device=vecs.device)
    means = []
    for start in range(0, len(text), _CHUNK):
        w = text[start : start + _CHUNK]
        nearest = vecs[torch.topk(w @ vecs.T, k=k, dim=1).indices].double()  # [c, k, D], ranked in float32
        w = w.double()
        means.append((nearest.sum(dim=1) + text_weight * w) / (k + text_weight))
        diff = nearest - w[:, None]
        cov = diff.transpose(1, 2) @ diff / (k - 1)
        trace = cov.diagonal(dim1=1, dim2=2).sum(dim=-1)
        total += (dim * _pinv((k - 1) * cov + trace[:, None, None] * eye)).sum(dim=0)
    return torch.cat(means), total / len(text)


class Gda(Adapter):
    """GDA (and GDA+SHIP with `use_synthetic=True`). Training-free: `fit` estimates, then searches alpha.

    Estimation (the reference's, on cached features): the samples are the L2-normalised features of every augmented
    view (the reference encodes `augment_epoch` = 10 augmented passes; `views` caps them); class means; a shared
    precision matrix P by `estimator`: `class_mean`, the pinv of the mean of the per-class covariances (what
    main_base2new.py uses for the base classes), or `ks`, the shrinkage estimator D pinv((N - 1) S + tr(S) I) of the
    pooled class-centred samples (main_few_shots.py, main_robustness.py). Null picks by protocol: class_mean for
    base-to-new (and GZSL, its shape), ks for cross-dataset sources (every class labelled, as the reference's
    few-shot and robustness runs). Then W = mu P, b = log prior - mu P mu^T / 2, and

        logits = scale * f T^T + alpha * (f W^T + b),

    T the zero-shot classifier of Tip-Adapter's templates (the reference's `clip_classifier(dataset.template)`),
    scale 100. The prior is uniform over the task's classes (the reference's 1/C per scored label space differs by
    a constant per label space, which changes no prediction within it).

    Alpha: the first best of (1e-4, ..., 100) on `task.val` (labelled classes, scored in the label space). The
    reference searches on the dataset's full validation split (ImageNet: on test); here it is the few-shot
    validation draw, and test features are never read.

    Label-only classes (plain GDA, base-to-new's new classes and GZSL's unseen ones): the reference's base-to-new
    variant (main_base2new.py, its only base-to-new script) estimates the new classes' statistics by k-nearest
    neighbours, with no new-class image: per new class the k = 64 base training samples with the largest dot
    product with its text embedding; its mean is the mean of those 64 samples and 16 copies of the text embedding;
    the shared precision is the mean over the new classes of D pinv((k - 1) C_c + tr(C_c) I), C_c the neighbours'
    covariance about the text embedding (D is hard-coded as 512, ViT-B/16's width; here the feature width); the
    alpha is the one searched on the base classes (`knn_statistics`).

    GDA+SHIP: the label-only classes join the label space with the samples of SHIP's generator: their means are the
    means of `synthetic_per_class` synthetic features (default: as many as a labelled class has samples), and their
    per-class covariances (class_mean) or centred samples (ks) join the shared estimate (`synthetic_covariance`).
    Alpha is searched over the whole label space. A label-only class without synthetic features keeps the
    nearest-neighbour estimate.

    Scoring a foreign class set: a class named like one of the fitted label space keeps its fitted row (what
    main_robustness.py does for ImageNet's variants, which share its classes); any other class gets the
    nearest-neighbour estimate from the fitted task's training samples, which the fit exports (float16 when that is
    lossless, as for features read from a store).
    """

    name = "gda"
    params: GdaParams

    def __init__(self, params: GdaParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)
        self.alpha = DEFAULT_ALPHA
        self.estimator = "class_mean"
        self.vecs: torch.Tensor | None = None  # [N, D] training samples for nearest-neighbour estimates
        self.space_names: list[str] = []  # class names of the label space, in order
        self.weights: torch.Tensor | None = None  # [L, D] W rows of the label space
        self.quadratic: torch.Tensor | None = None  # [L] -mu P mu^T / 2 of the label space
        self._head: tuple[torch.Tensor, torch.Tensor] | None = None  # (W [C, D], b [C]) of every task class

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
        self.estimator = p.estimator or ("ks" if task.protocol == "cross_dataset" else "class_mean")
        vecs, labels = training_samples(task.train.to(self.device), p.views)
        groups = {c: vecs[labels == c] for c in task.labeled}
        synthetic_groups: dict[int, torch.Tensor] = {}
        if synthetic is not None:
            per_class = p.synthetic_per_class or max(2, len(vecs) // max(len(task.labeled), 1))
            pool = synthetic.pool(per_class, torch.Generator().manual_seed(seed)).to(self.device)
            feats = torch.nn.functional.normalize(pool.features.float(), dim=-1)
            synthetic_groups = {c: feats[pool.labels == c] for c in self.label_space if c not in groups}
        small = [c for c, x in {**groups, **synthetic_groups}.items() if len(x) < 2]
        if small:
            raise ValueError(f"{self.method}: classes {small[:10]} have fewer than 2 samples; a covariance needs 2")
        means = torch.stack([(groups | synthetic_groups)[c].mean(dim=0) for c in self.label_space])
        covariance_groups = list(groups.values())
        if p.synthetic_covariance:
            covariance_groups += list(synthetic_groups.values())
        estimate = ks_precision if self.estimator == "ks" else class_mean_precision
        self.weights, self.quadratic = linear_head(means, estimate(covariance_groups))
        self.vecs = vecs
        self.space_names = [task.classnames[c] for c in self.label_space]
        self._head = self._task_head(task)

        # alpha on validation features only, scored in the label space (the reference's grid search).
        text = task.classifier(CLASSIFIER)[self.label_space].to(self.device, torch.float32)
        val = task.val.clean().features.to(self.device, torch.float32)
        val_labels = local_labels(task.val.labels.to(self.device), self.label_space, len(task.classnames))
        weights, bias = self._head[0][self.label_space], self._head[1][self.label_space]
        zero_shot, gda = self.logit_scale * val @ text.T, val @ weights.T + bias
        best_acc, self.alpha = 0.0, DEFAULT_ALPHA
        for alpha in p.alphas:
            acc = 100.0 * ((zero_shot + alpha * gda).argmax(dim=-1) == val_labels).float().mean().item()
            if acc > best_acc:
                best_acc, self.alpha = acc, alpha
        if on_epoch is not None:
            on_epoch(0, 0)
        curve: list[dict[str, float | int | None]] = [{"epoch": 0, "train_loss": None, "val_acc": best_acc}]
        info = {"alpha": self.alpha, "searched_val_acc": best_acc}
        return FitResult(curve=curve, best_epoch=0, best_val_acc=best_acc, info=info)

    def _task_head(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, D], b [C]) for every class of the fitted task: the label space's estimates, the nearest-neighbour
        estimate for the rest."""
        assert self.weights is not None and self.quadratic is not None and self.vecs is not None
        n = len(task.classnames)
        weights = torch.zeros(n, self.weights.shape[1], device=self.device)
        quadratic = torch.zeros(n, device=self.device)
        weights[self.label_space], quadratic[self.label_space] = self.weights, self.quadratic
        rest = [c for c in range(n) if c not in set(self.label_space)]
        if rest:
            text = task.classifier(CLASSIFIER)[rest].to(self.device, torch.float32)
            weights[rest], quadratic[rest] = self._knn_head(text)
        return weights, quadratic - math.log(n)

    def _knn_head(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.vecs is not None
        means, precision = knn_statistics(self.vecs.float(), text, self.params.knn, self.params.knn_text_weight)
        return linear_head(means, precision)

    def _score_with(self, text: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> Scorer:
        text = text.to(self.device, torch.float32)
        alpha = self.alpha
        return lambda f: self.logit_scale * f @ text.T + alpha * (f @ weights.T + bias)

    def _scorer(self) -> Scorer:
        assert self._head is not None and self.classes is not None
        return self._score_with(self.classes.classifier(CLASSIFIER), *self._head)

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        assert self.weights is not None and self.quadratic is not None
        n, known = len(target), {name: i for i, name in enumerate(self.space_names)}
        text = target.classifier(CLASSIFIER).to(self.device, torch.float32)
        weights = torch.zeros(n, self.weights.shape[1], device=self.device)
        quadratic = torch.zeros(n, device=self.device)
        matched = [c for c, name in enumerate(target.classnames) if name in known]
        rest = [c for c in range(n) if target.classnames[c] not in known]
        if matched:
            rows = [known[target.classnames[c]] for c in matched]
            weights[matched], quadratic[matched] = self.weights[rows], self.quadratic[rows]
        if rest:
            weights[rest], quadratic[rest] = self._knn_head(text[rest])
        return self._score_with(text, weights, quadratic - math.log(n))

    def export(self) -> dict[str, Any]:
        assert self.vecs is not None and self.weights is not None and self.quadratic is not None
        vecs = self.vecs.cpu()
        if torch.equal(vecs.half().float(), vecs):
            vecs = vecs.half()  # lossless for features read from a store (float16 there)
        return {
            **super().export(),
            "alpha": self.alpha,
            "estimator": self.estimator,
            "classnames": list(self.space_names),
            "weights": self.weights.cpu(),
            "quadratic": self.quadratic.cpu(),
            "vecs": vecs,
        }

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        self.alpha, self.estimator = float(state["alpha"]), str(state["estimator"])
        self.space_names = list(state["classnames"])
        self.weights = state["weights"].to(device, torch.float32)
        self.quadratic = state["quadratic"].to(device, torch.float32)
        self.vecs = state["vecs"].to(device, torch.float32)
