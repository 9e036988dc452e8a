"""KgCoOp: CoOp whose learned class text embeddings are pulled toward the hand-crafted prompt's embeddings.

Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization" (CVPR 2023), code
htyao89/KgCoOp: KgCoOp/trainers/kgcoop.py, configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, scripts/*.sh.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.adapters.base import Loss
from pipeline.adapters.coop import CoOp
from pipeline.features import Task
from pipeline.params.finetune import KgCoOpParams
from pipeline.text_tower import TextTower


def knowledge_guided_term(text: torch.Tensor, hand_crafted: torch.Tensor) -> torch.Tensor:
    """KgCoOp's `score`: 1 - the mean over classes of cos(learned text feature, hand-crafted text feature)
    (CosineSimilarity(dim=1, eps=1e-7)). The paper writes it as the mean squared L2 distance of the unit vectors,
    which is twice this; the reference's lambda (W = 8.0) weighs this form."""
    return 1.0 - F.cosine_similarity(text, hand_crafted, dim=1, eps=1e-7).mean()


class KgCoOp(CoOp):
    """KgCoOp (and KgCoOp+SHIP with `use_synthetic=True`): CoOp's learned context "[V1..V4] {classname}.", trained
    with

        loss = CE(scale f t^T, y) + lambda * (1 - mean_i cos(t_i, t_i^clip)),

    t_i the text feature of class i under the learned context and t_i^clip that of the hand-crafted prompt (the
    dataset's template, CoOp's per-dataset one except DTD's "a photo of a {}, a type of texture.": the `templates`
    preset; null = the task's zero-shot classifier), over the classes of the label space (trainers/kgcoop.py,
    CustomCLIP.forward). Recipe (vit_b16_ep100_ctxv1.yaml, base2new_train.sh): context from "a photo of a" (4
    tokens), SGD lr 2e-3 momentum 0.9 weight decay 5e-4, batch 128, one constant warm-up epoch at 1e-5 then
    per-epoch cosine, 100 epochs for every dataset, lambda 8.0, CLIP's learned logit scale; the reference evaluates
    the last epoch (`--load-epoch 100`, `finetune.select: last`).

    KgCoOp+SHIP: the label space holds the label-only classes too (their names get the learned context and the
    knowledge-guided pull), and every batch of real features is joined by as many synthetic features of uniformly
    drawn label-only classes, as CoOp+SHIP (decoded from fresh latents at every step unless `synthetic: pool`); the
    recipe is KgCoOp's (no reference code exists for the combination).

    Scoring (own or foreign class sets) and the exported state are CoOp's: the learned context before any names.
    """

    name = "kgcoop"
    params: KgCoOpParams

    def __init__(self, params: KgCoOpParams, use_synthetic: bool = False):
        super().__init__(params, use_synthetic)

    def hand_crafted(self, task: Task, tower: TextTower) -> torch.Tensor:
        """[L, E] unit text features of the hand-crafted prompts of the label space's classes."""
        names = [task.classnames[c] for c in self.label_space]
        if self.params.templates:
            rows = tower.zero_shot_classifier(names, self.params.templates)
        else:
            rows = task.text_classifier[self.label_space]
        return F.normalize(rows.to(self.device, torch.float32), dim=-1)

    def _loss(self, task: Task, tower: TextTower, encode: Callable[[], torch.Tensor]) -> Loss | None:
        hand_crafted = self.hand_crafted(task, tower)
        weight = self.params.weight

        def loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = encode()  # one pass through the text tower serves both terms
            logits = self.logit_scale * features @ text.T
            return F.cross_entropy(logits, labels) + weight * knowledge_guided_term(text, hand_crafted)

        return loss
