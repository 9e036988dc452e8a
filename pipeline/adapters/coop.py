"""CoOp: a learned context "[V1..VL] {classname}." shared by all classes, through CLIP's frozen text tower."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.adapters.base import (
    Adapter,
    ClassSet,
    EpochCallback,
    FitResult,
    Loss,
    Scorer,
    TrainingData,
    train,
)
from pipeline.features import Task
from pipeline.params.finetune import CoOpParams
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower


class PromptContext(nn.Module):
    """The only trainable state of CoOp: L context vectors in token-embedding space."""

    def __init__(self, ctx: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class CoOp(Adapter):
    """CoOp (and CoOp+SHIP with `use_synthetic=True`).

    Training: the class prompts of the label space go through the frozen `TextTower` at every step (the gradient
    reaches only the context); logits = scale * f t^T. With SHIP the label space holds the label-only classes too and
    every batch carries as many synthetic features as real ones (SHIP's CoOp+SHIP). The recipe (optimizer, schedule,
    epochs, batch size) is the method's params section: CoOp's Dassl config for `coop`, SHIP's for `coop_ship`.

    Scoring: any class set, own or foreign — the learned context is spliced in front of the class names.
    """

    name = "coop"
    params: CoOpParams

    def __init__(self, params: CoOpParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)
        self.context: PromptContext | None = None
        self._own_text: torch.Tensor | None = None  # [C, E] text features of the fitted task's classes

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
        if p.ctx_init:
            ctx = tower.context_init(p.ctx_init, p.n_ctx)
        else:  # CoOp's generic init: N(0, 0.02^2)
            ctx = 0.02 * torch.randn(p.n_ctx, tower.width, generator=torch.Generator().manual_seed(seed))
        self.context = PromptContext(ctx.to(tower.device, torch.float32))
        prompts, eot = tower.context_prompts([task.classnames[c] for c in self.label_space], p.n_ctx)

        def encode() -> torch.Tensor:
            assert self.context is not None
            return tower.encode_prompts(prompts, eot, self.context.ctx)

        def forward(features: torch.Tensor) -> torch.Tensor:
            return self.logit_scale * features @ encode().T

        data = TrainingData(task, self.label_space, p, seed, self.device, synthetic)
        loss = self._loss(task, tower, encode)
        result = train(
            self.context, forward, p, data, select=select, method=self.method, seed=seed, on_epoch=on_epoch, loss=loss
        )
        self._own_text = self.text_features(tower, task.classnames)
        return result

    def _loss(self, task: Task, tower: TextTower, encode: Callable[[], torch.Tensor]) -> Loss | None:
        """The training objective on a batch (features, local labels); None: cross-entropy of the logits (CoOp).
        `encode()` gives the label space's text features [L, E] under the current context."""
        return None

    @torch.no_grad()
    def text_features(self, tower: TextTower, classnames: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """[C, E] normalised text features of "[learned context] {name}." for each name."""
        assert self.context is not None
        out = []
        for i in range(0, len(classnames), batch_size):
            prompts, eot = tower.context_prompts(classnames[i : i + batch_size], self.params.n_ctx)
            out.append(tower.encode_prompts(prompts, eot, self.context.ctx))
        return torch.cat(out).float()

    def _scorer(self) -> Scorer:
        text = self._own_text
        assert text is not None
        return lambda f: self.logit_scale * f @ text.T

    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        text = self.text_features(tower, target.classnames)
        return lambda f: self.logit_scale * f @ text.T

    def export(self) -> dict[str, Any]:
        assert self.context is not None
        return {**super().export(), "ctx": self.context.ctx.detach().cpu()}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        self.context = PromptContext(state["ctx"].to(device, torch.float32))
