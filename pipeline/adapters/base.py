"""The interface every fine-tuning method implements, plus the training loop and data they share.

A method is fitted on a `Task` (cached CLIP features; never the image encoder) and then scores image features against
any subset of the task's classes, or against a foreign class set (cross-dataset transfer of a source-only fit).

Training data (the same for every method, as the references feed their loaders):
- each epoch draws one cached augmented view per training image (augmentation without the encoder), shuffled, in
  batches of `batch_size`; `drop_last` drops a ragged last batch (Dassl's loader does, SHIP's and Tip-Adapter's not);
- without SHIP the label space is the labelled classes only (`task.labeled`);
- with SHIP (`use_synthetic=True`) it is labelled + label-only classes, and every batch of real features is joined by
  as many synthetic features of uniformly drawn label-only classes (from a `SyntheticSource`).

Learning-rate schedules (`TrainingRecipe.schedule`): `dassl_cosine` reproduces Dassl's ConstantWarmupScheduler around
CosineAnnealingLR stepped once per epoch; `cosine_per_step` is CosineAnnealingLR over every step (SHIP, Tip-Adapter).

Model selection (`select`): "val" keeps the epoch with the best accuracy on `task.val` (labelled classes, scored in
the training label space; epoch 0 = the initial state, so a method whose validation accuracy never improves falls
back to its initialisation); "last" keeps the final epoch. Test features are never read while fitting.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ExpectedError
from pipeline.features import Task
from pipeline.params.finetune import TrainingRecipe
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, int], None]  # (epochs done, total epochs)
Scorer = Callable[[torch.Tensor], torch.Tensor]  # L2-normalised features [N, D] -> logits [N, C]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features [B, D], local labels [B]) -> scalar loss


class TrainingDiverged(ExpectedError, FloatingPointError):
    """A training loss became inf or nan; the message names the method, seed and epoch."""


@dataclass(frozen=True)
class ClassSet:
    """Classes a fitted adapter can score: names (for prompt methods) and zero-shot classifier rows [C, E] per
    template set ("zeroshot"; "tip_adapter_f" where Tip-Adapter's templates differ)."""

    classnames: list[str]
    classifiers: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        for name, rows in self.classifiers.items():
            if len(self.classnames) != rows.shape[0]:
                raise ValueError(f"{len(self.classnames)} class names but {rows.shape[0]} {name} classifier rows")

    def __len__(self) -> int:
        return len(self.classnames)

    def classifier(self, name: str = "zeroshot") -> torch.Tensor:
        return self.classifiers.get(name, self.classifiers["zeroshot"])

    @staticmethod
    def of_task(task: Task) -> ClassSet:
        return ClassSet(list(task.classnames), dict(task.classifiers))


@dataclass
class FitResult:
    """Per-epoch curve rows {epoch, train_loss, val_acc} (epoch 0 = initial state, train_loss None) and the epoch
    whose state was kept."""

    curve: list[dict[str, float | int | None]]
    best_epoch: int
    best_val_acc: float
    info: dict[str, float] = field(default_factory=dict)  # method-specific choices, e.g. Tip's searched alpha/beta


class Adapter(ABC):
    """A fine-tuning method on cached features. Subclasses implement `_fit`, `_scorer` and `_foreign_scorer`."""

    name: str = "adapter"
    eval_chunk: int = 4096  # rows scored at once: Tip-Adapter's affinity matrix is [rows, cache size]

    def __init__(self, params: TrainingRecipe | None = None, use_synthetic: bool = False):
        self.params = params
        self.use_synthetic = use_synthetic
        self.classes: ClassSet | None = None  # the fitted task's classes
        self.label_space: list[int] = []  # task class indices trained on
        self.device = torch.device("cpu")
        self.logit_scale = 100.0  # set from the params or the task in fit()

    @property
    def method(self) -> str:
        return f"{self.name}_ship" if self.use_synthetic else self.name

    def fit(
        self,
        task: Task,
        tower: TextTower,
        seed: int,
        *,
        select: str = "val",
        synthetic: SyntheticSource | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        """Train on `task.train` (+ `synthetic` with SHIP); select the epoch on `task.val` only, or the last."""
        check_task(task, self.use_synthetic, synthetic, self.method)
        self.classes = ClassSet.of_task(task)
        self.label_space = list(task.labeled) + (list(synthetic.classes) if self.use_synthetic and synthetic else [])
        self.device = tower.device
        # CoOp's code scales logits by the backbone's own learned temperature (100 for OpenAI's CLIP, the constant
        # SHIP's and Tip-Adapter's code use); a method's params may override it.
        configured = self.params.logit_scale if self.params is not None else None
        self.logit_scale = float(configured if configured is not None else task.logit_scale)
        result = self._fit(task, tower, seed, select, synthetic if self.use_synthetic else None, on_epoch)
        log.info("%s seed %d: kept epoch %d, val acc %.2f", self.method, seed, result.best_epoch, result.best_val_acc)
        return result

    @abstractmethod
    def _fit(
        self,
        task: Task,
        tower: TextTower,
        seed: int,
        select: str,
        synthetic: SyntheticSource | None,
        on_epoch: EpochCallback | None,
    ) -> FitResult: ...

    @abstractmethod
    def _scorer(self) -> Scorer:
        """A function scoring features against every class of the fitted task."""

    @abstractmethod
    def _foreign_scorer(self, target: ClassSet, tower: TextTower) -> Scorer:
        """A function scoring features against a foreign class set, with what the method learned that applies to
        class names it never saw."""

    @torch.no_grad()
    def logits(
        self,
        features: torch.Tensor,
        classes: Sequence[int] | None = None,
        *,
        target: ClassSet | None = None,
        tower: TextTower | None = None,
    ) -> torch.Tensor:
        """Scores [N, len(classes)] of L2-normalised features [N, D] against `classes` (indices into the fitted task's
        classes, or into `target`'s when given; None = all)."""
        if target is None:
            if self.classes is None:
                raise RuntimeError(f"{self.method}: call fit() before logits()")
            score, size = self._scorer(), len(self.classes)
        else:
            if tower is None:
                raise ValueError("scoring a foreign class set needs the text tower")
            score, size = self._foreign_scorer(target, tower), len(target)
        idx = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        out = [
            (s if idx is None else s[:, idx])
            for s in (score(chunk.to(self.device, torch.float32)) for chunk in features.split(self.eval_chunk))
        ]
        if not out:
            return torch.zeros(0, size if idx is None else len(idx), device=self.device)
        return torch.cat(out)

    # --- fitted state, for scoring a source-only fit on cross-dataset targets later --------------------------------

    def export(self) -> dict[str, Any]:
        """Plain tensors and numbers that `restore` needs to score foreign class sets."""
        return {"logit_scale": self.logit_scale}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        self.logit_scale = float(state["logit_scale"])
        self.device = device


# --- task checks and label spaces ------------------------------------------------------------------------------


def check_task(task: Task, use_synthetic: bool, synthetic: SyntheticSource | None, method: str) -> None:
    """Refuse tasks that would let a method see what it must not (label-only classes' images, missing SHIP data)."""
    labeled = set(task.labeled)
    if len(task.val) == 0:
        raise ValueError(f"{method}: task.val is empty, but model selection needs validation features")
    for split, feats in (("train", task.train), ("val", task.val)):
        stray = set(feats.labels.unique().tolist()) - labeled
        if stray:
            raise ValueError(f"{method}: {split} has images of classes outside task.labeled: {sorted(stray)[:10]}")
    if not use_synthetic:
        return
    if synthetic is None:
        raise ValueError(f"{method} needs synthetic features of the label-only classes, but none were given")
    overlap = set(synthetic.classes) & labeled
    if overlap:
        raise ValueError(f"{method}: synthetic features given for labelled classes {sorted(overlap)[:10]}")
    missing = sorted(set(task.label_only) - set(synthetic.classes))
    if missing:
        log.warning("%s: no synthetic features for label-only classes %s: they stay out of training", method, missing)


def local_labels(labels: torch.Tensor, space: Sequence[int], num_classes: int) -> torch.Tensor:
    """Task class indices -> positions in `space` (labels outside it are an error)."""
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    lut[torch.as_tensor(list(space), dtype=torch.long, device=labels.device)] = torch.arange(
        len(space), device=labels.device
    )
    out = lut[labels]
    if (out < 0).any():
        raise ValueError(f"labels {labels[out < 0].unique().tolist()[:10]} are outside the label space")
    return out


# --- training data ---------------------------------------------------------------------------------------------


class TrainingData:
    """Epochs of (features, local labels) batches: one random augmented view per image, shuffled; with SHIP each
    batch is followed by as many synthetic features of uniformly drawn label-only classes."""

    def __init__(
        self,
        task: Task,
        space: Sequence[int],
        recipe: TrainingRecipe,
        seed: int,
        device: torch.device,
        synthetic: SyntheticSource | None = None,
    ):
        if len(task.train) == 0:
            raise ValueError("no training features")
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator: the same draws on any device
        self.batch_size = recipe.batch_size
        n = len(task.classnames)
        self.space, self.num_classes = list(space), n
        self.train = task.train.to(device)
        self.train_labels = local_labels(self.train.labels, space, n)
        self.val = task.val.clean().features.to(device, torch.float32)
        self.val_labels = local_labels(task.val.labels.to(device), space, n)
        self.synthetic = synthetic
        # Dassl drops a ragged last batch only when the set holds at least one full batch.
        self.drop_last = recipe.drop_last and len(self.train) >= self.batch_size

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.train), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        views = self.train.sample_views(self.generator).features
        perm = torch.randperm(len(self.train), generator=self.generator).to(views.device)
        for i, idx in enumerate(perm.split(self.batch_size)):
            if i == len(self):
                break  # the dropped ragged batch
            x, y = views[idx].float(), self.train_labels[idx]
            if self.synthetic is not None:
                xs, ys = self.synthetic.draw(len(idx), self.generator)
                x = torch.cat([x, xs.to(x.device, torch.float32)])
                y = torch.cat([y, local_labels(ys.to(y.device), self.space, self.num_classes)])
            yield x, y


@torch.no_grad()
def val_accuracy(forward: Scorer, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of validation images classified correctly; `labels` are positions in the scored label space."""
    pred = forward(features).argmax(dim=-1)
    return 100.0 * (pred == labels).float().mean().item()


# --- optimisation ------------------------------------------------------------------------------------------------


def build_optimizer(parameters: Any, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    if recipe.lr is None or recipe.weight_decay is None or recipe.optimizer is None:
        raise ValueError("the training recipe is not resolved for a dataset (optimizer/lr/weight_decay null)")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":  # Dassl's "adam": betas (0.9, 0.999), weight decay as an L2 term of the gradient
        return torch.optim.Adam(parameters, lr=recipe.lr, eps=recipe.eps, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(parameters, lr=recipe.lr, eps=recipe.eps, weight_decay=recipe.weight_decay)


def learning_rate(recipe: TrainingRecipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The lr of 0-based `epoch` / run-wide `step` under the recipe's schedule.

    dassl_cosine: Dassl wraps CosineAnnealingLR(T_max=epochs) in a constant warm-up of W epochs (WARMUP_RECOUNT):
    epochs 0..W-1 run at warmup_lr, and epoch e >= W at 0.5 lr (1 + cos(pi (e - W) / epochs)) — the cosine starts
    counting when the warm-up ends. cosine_per_step: 0.5 lr (1 + cos(pi step / (epochs x steps_per_epoch))).
    """
    assert recipe.lr is not None and recipe.epochs is not None
    if recipe.schedule == "cosine_per_step":
        return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / (recipe.epochs * steps_per_epoch)))
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / recipe.epochs))


def train(
    module: nn.Module,
    forward: Scorer,
    recipe: TrainingRecipe,
    data: TrainingData,
    *,
    select: str,
    method: str,
    seed: int,
    on_epoch: EpochCallback | None = None,
    loss: Loss | None = None,
) -> FitResult:
    """Cross-entropy over the label space with the recipe's optimizer and schedule (or `loss(features, labels)`, a
    method's own training objective). Keeps (loads back into `module`) the state of the epoch `select` names: the
    best validation accuracy (epoch 0 = the initial state) or the last."""
    if recipe.epochs is None:
        raise ValueError(f"{method}: epochs are not resolved for a dataset")
    epochs, steps = recipe.epochs, len(data)
    optimizer = build_optimizer(module.parameters(), recipe)
    best_acc = val_accuracy(forward, data.val, data.val_labels)
    best_epoch, best_state = 0, copy.deepcopy(module.state_dict())
    curve: list[dict[str, float | int | None]] = [{"epoch": 0, "train_loss": None, "val_acc": best_acc}]
    step = 0
    for epoch in range(1, epochs + 1):
        module.train()
        total = torch.zeros((), device=data.val.device)  # summed on-device: no host sync per step
        count = 0
        for x, y in data.epoch():
            lr = learning_rate(recipe, epoch - 1, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            value = F.cross_entropy(forward(x), y) if loss is None else loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += value.detach() * len(y)
            count += len(y)
            step += 1
        train_loss = float(total) / max(count, 1)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"{method} seed {seed}: training loss is {train_loss} in epoch {epoch}; lower its lr (now {recipe.lr})"
            )
        module.eval()
        acc = val_accuracy(forward, data.val, data.val_labels)
        curve.append({"epoch": epoch, "train_loss": train_loss, "val_acc": acc})
        log.debug("epoch %d: loss %.4f, val acc %.2f", epoch, train_loss, acc)
        # Strictly better only: on ties the earlier (less fitted) state is kept.
        if (select == "last" and epoch == epochs) or (select == "val" and acc > best_acc):
            best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(module.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, epochs)
    module.load_state_dict(best_state)
    module.eval()
    return FitResult(curve=curve, best_epoch=best_epoch, best_val_acc=best_acc)
