"""CoOp: a learned context "[V1..VL] {classname}." shared by all classes, through CLIP's frozen text tower."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.adapters.base import Adapter, ClassSet, EpochCallback, FitResult, Scorer, TrainingData, train_dassl_sgd
from pipeline.features import TaskFeatures
from pipeline.params.finetune import CoOpParams
from pipeline.text_tower import TextTower


class PromptContext(nn.Module):
    """The only trainable state of CoOp: L context vectors in token-embedding space."""

    def __init__(self, ctx: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class CoOp(Adapter):
    """CoOp (and CoOp+SHIP with `use_synthetic=True`).

    Training: the class prompts of the label space go through the frozen `TextTower` at every step (the gradient
    reaches only the context); logits = scale * f t^T; SGD + Dassl's warm-up/cosine schedule (per epoch). With SHIP
    the label space holds the label-only classes too and every batch carries as many synthetic features as real
    ones (SHIP's CoOp+SHIP recipe).

    Model selection: the epoch with the best accuracy on `task.val` (labelled classes, scored in the training label
    space) is kept; test features are never touched.

    Scoring: any class set, own or foreign — the learned context is spliced in front of the target's class names.
    """

    name = "coop"

    def __init__(self, params: CoOpParams, use_synthetic: bool = False):
        super().__init__(use_synthetic)
        self.params = params
        self.context: PromptContext | None = None
        self.tower: TextTower | None = None
        self._own_text: torch.Tensor | None = None  # [C, E] text features of the fitted task's classes

    def _fit(self, task: TaskFeatures, tower: TextTower, seed: int, on_epoch: EpochCallback | None) -> FitResult:
        p = self.params
        self.tower = tower
        if p.ctx_init:
            ctx = tower.context_init(p.ctx_init, p.n_ctx)
        else:  # CoOp's generic init: N(0, 0.02^2)
            gen = torch.Generator().manual_seed(seed)
            ctx = 0.02 * torch.randn(p.n_ctx, tower.width, generator=gen)
        self.context = PromptContext(ctx.to(tower.device, torch.float32))
        prompts, eot = tower.context_prompts([task.classnames[c] for c in self.label_space], p.n_ctx)

        def forward(features: torch.Tensor) -> torch.Tensor:
            text = tower.encode_embeddings(tower.splice_context(prompts, self.context.ctx), eot)
            return self.logit_scale * features @ text.T

        data = TrainingData(task, self.label_space, self.use_synthetic, p.batch_size, seed, self.device)
        result = train_dassl_sgd(self.context, forward, p, data, on_epoch)
        self._own_text = self.text_features(task.classnames)
        return result

    @torch.no_grad()
    def text_features(self, classnames: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """[C, E] normalised text features of "[learned context] {name}." for each name."""
        assert self.tower is not None and self.context is not None
        out = []
        for i in range(0, len(classnames), batch_size):
            prompts, eot = self.tower.context_prompts(classnames[i : i + batch_size], self.params.n_ctx)
            out.append(self.tower.encode_embeddings(self.tower.splice_context(prompts, self.context.ctx), eot))
        return torch.cat(out).float()

    def _scorer(self, target: ClassSet, own: bool) -> Scorer:
        text = self._own_text if own else self.text_features(target.classnames)
        assert text is not None
        return lambda f: self.logit_scale * f @ text.T
