"""TaskRes: a learned, scaled residual on the frozen zero-shot text classifier.

Yu et al., "Task Residual for Tuning Vision-Language Models" (CVPR 2023), code geekyutao/TaskRes:
trainers/taskres.py, configs/trainers/TaskRes/*.yaml, train_regular.sh, trainers/imagenet_templates.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, TrainingData, train
from pipeline.features import Task
from pipeline.params.finetune import TaskResParams
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)


def default_epochs(shots: int) -> int:
    """train_regular.sh: the ep100 configs for 1, 2 and 4 shots, the ep200 ones for 8 and 16."""
    return 100 if shots <= 4 else 200


@torch.no_grad()
def base_text_features(
    tower: TextTower, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """TaskRes's base classifier (`_get_base_text_features`): per class the mean over the templates of the
    *unnormalised* text features [C, E]; they are normalised only after the residual is added."""
    tower.check_templates_fit(classnames, templates)
    texts = [t.format(c) for c in classnames for t in templates]
    out = [
        tower.encode_tokens(tower.tokenize(texts[i : i + batch_size]), normalize=False).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out).view(len(classnames), len(templates), -1).mean(dim=1)


class TaskResidual(nn.Module):
    """The only trainable state of TaskRes: one residual row per class of the label space, initialised at 0."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, dim))


class TaskRes(Adapter):
    """TaskRes (and TaskRes+SHIP with `use_synthetic=True`).

    classifier = normalize(t + alpha x), logits = scale * f classifier^T (trainers/taskres.py, TaskResLearner and
    CustomCLIP.forward), t the base text features: the unnormalised text features averaged over TaskRes's templates
    (the dataset's CoOp template; ImageNet: the 7 IMAGENET_TEMPLATES_SELECT + "a photo of a {}."), x the residual,
    one row per class of the label space, initialised at 0; only x trains. Recipe (train_regular.sh and
    configs/trainers/TaskRes/adam_lr2e-3_B256_ep{100,200}.yaml): Dassl's Adam (weight decay 5e-4 as an L2 term,
    eps 1e-8), lr 2e-3 (ImageNet 2e-4), batch 256, one constant warm-up epoch at 1e-5 then per-epoch cosine, 100
    epochs up to 4 shots and 200 beyond (`epochs: null`), alpha 0.5 (Flowers 1.0), CLIP's learned logit scale.
    Without `templates` (tasks built in memory) the base is the task's unit zero-shot classifier.

    Classes outside the label space have no residual: their row is the normalised base (zero-shot CLIP with TaskRes's
    templates), e.g. the new classes of plain TaskRes in base-to-new. TaskRes+SHIP: the label-only classes join the
    label space, so their residual rows train on the synthetic features that join every batch (as the other *_ship
    methods; no reference code exists for the combination).

    Scoring a foreign class set: a class named like one of the fitted label space keeps its fitted row (what the
    reference's domain-generalisation runs do for ImageNet's variants, loading the ImageNet residual); any other
    class has no residual and gets the target's zero-shot classifier row.
    """

    name = "taskres"
    params: TaskResParams

    def __init__(self, params: TaskResParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)
        self.alpha = 1.0
        self.residual: TaskResidual | None = None
        self.base: torch.Tensor | None = None  # [C, E] base text features of every class of the fitted task
        self.space_base: torch.Tensor | None = None  # [L, E] those of the label space (all a restored fit keeps)
        self.space_names: list[str] = []

    def base_features(self, task: Task, tower: TextTower) -> torch.Tensor:
        if self.params.templates:
            return base_text_features(tower, task.classnames, self.params.templates).to(self.device)
        log.debug("%s: no templates given; the base is the task's zero-shot classifier", self.method)
        return task.text_classifier.to(self.device, torch.float32)

    def classifier(self, base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """normalize(t + alpha x), row by row."""
        return F.normalize(base + self.alpha * residual, dim=-1)

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
        if p.alpha is None or p.lr is None:
            raise ValueError("taskres params are not resolved for a dataset (alpha/lr null)")
        recipe = p if p.epochs is not None else p.model_copy(update={"epochs": default_epochs(task.shots)})
        self.alpha = p.alpha
        self.base = self.base_features(task, tower)
        base = self.space_base = self.base[self.label_space]
        self.residual = TaskResidual(*base.shape).to(self.device)
        self.space_names = [task.classnames[c] for c in self.label_space]

        def forward(features: torch.Tensor) -> torch.Tensor:
            assert self.residual is not None
            return self.logit_scale * features @ self.classifier(base, self.residual.weight).T

        data = TrainingData(task, self.label_space, recipe, seed, self.device, synthetic)
        return train(
            self.residual, forward, recipe, data, select=select, method=self.method, seed=seed, on_epoch=on_epoch
        )

    def _scorer(self) -> Scorer:
        assert self.base is not None and self.residual is not None
        residual = torch.zeros_like(self.base)
        residual[self.label_space] = self.residual.weight.detach()
        weights = self.classifier(self.base, residual)
        return lambda f: self.logit_scale * f @ weights.T

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        assert self.space_base is not None and self.residual is not None
        weights = target.classifier().to(self.device, torch.float32).clone()
        known = {name: i for i, name in enumerate(self.space_names)}
        matched = [c for c, name in enumerate(target.classnames) if name in known]
        if matched:
            rows = [known[target.classnames[c]] for c in matched]
            weights[matched] = self.classifier(self.space_base[rows], self.residual.weight.detach()[rows])
        return lambda f: self.logit_scale * f @ weights.T

    def export(self) -> dict[str, Any]:
        assert self.space_base is not None and self.residual is not None
        return {
            **super().export(),
            "alpha": self.alpha,
            "classnames": list(self.space_names),
            "base": self.space_base.cpu(),
            "residual": self.residual.weight.detach().cpu(),
        }

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        self.alpha = float(state["alpha"])
        self.space_names = list(state["classnames"])
        self.space_base = state["base"].to(device, torch.float32)
        self.residual = TaskResidual(*self.space_base.shape).to(device)
        self.residual.weight.data.copy_(state["residual"].to(device, torch.float32))
