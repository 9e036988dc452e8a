"""The interface every fine-tuning method implements, plus the pieces their training loops share.

A method is fitted on a `TaskFeatures` (cached CLIP features; never the image encoder) and then scores image
features against any subset of the task's classes, or against a foreign class set (cross-dataset transfer).

Training data (the same for every method):
- each epoch draws one cached view per training image (augmentation without the encoder);
- without SHIP the label space is the labelled classes only (`task.labeled`);
- with SHIP (`use_synthetic=True`) it is labelled + label-only classes, and every batch of real features is paired
  with as many synthetic features of uniformly drawn label-only classes.

Model selection: after every epoch the model is scored on `task.val` (labelled classes only, scored in the
method's training label space); the best epoch's state is kept (epoch 0 = the initial state, so a method whose
validation accuracy never improves falls back to its initialisation). `task.test` is never read while fitting.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import LabeledFeatures, TaskFeatures
from pipeline.params.finetune import DasslSGDParams
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, int], None]  # (epochs done, total epochs)
Scorer = Callable[[torch.Tensor], torch.Tensor]  # features [N, D] -> logits [N, C]


@dataclass(frozen=True)
class ClassSet:
    """Classes a fitted adapter can score: names (for prompt methods) and zero-shot classifier rows [C, E]."""

    classnames: list[str]
    text_classifier: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.classnames) != self.text_classifier.shape[0]:
            raise ValueError(f"{len(self.classnames)} class names but {self.text_classifier.shape[0]} classifier rows")

    def __len__(self) -> int:
        return len(self.classnames)

    @staticmethod
    def of_task(task: TaskFeatures) -> ClassSet:
        return ClassSet(list(task.classnames), task.text_classifier)


@dataclass
class FitResult:
    """Per-epoch curve rows {epoch, train_loss, val_acc} (epoch 0 = initial state, train_loss None) and the
    epoch whose state was kept (highest validation accuracy; the earliest on ties)."""

    curve: list[dict[str, float | int | None]]
    best_epoch: int
    best_val_acc: float
    info: dict[str, float] = field(default_factory=dict)  # method-specific choices, e.g. Tip's searched alpha/beta


class Adapter(ABC):
    """A fine-tuning method on cached features. Subclasses implement `_fit` and `_scorer`."""

    name: str = "adapter"
    eval_chunk: int = 4096  # rows scored at once: Tip-Adapter's affinity matrix is [rows, cache size]

    def __init__(self, use_synthetic: bool = False):
        self.use_synthetic = use_synthetic
        self.classes: ClassSet | None = None  # the fitted task's classes
        self.label_space: list[int] = []  # global class indices trained on
        self.device = torch.device("cpu")
        self.logit_scale = 100.0  # set from the params or the task in fit()

    @property
    def method(self) -> str:
        return f"{self.name}_ship" if self.use_synthetic else self.name

    def fit(
        self, task: TaskFeatures, tower: TextTower, seed: int, *, on_epoch: EpochCallback | None = None
    ) -> FitResult:
        """Train on `task.train` (+ `task.synthetic` with SHIP); select the epoch on `task.val` only."""
        check_task(task, self.use_synthetic, self.method)
        self.classes = ClassSet.of_task(task)
        self.label_space = training_label_space(task, self.use_synthetic)
        self.device = tower.device
        # CoOp's code scales logits by the backbone's own learned temperature (100 for OpenAI's CLIP); a method's
        # params may override it.
        configured = getattr(getattr(self, "params", None), "logit_scale", None)
        self.logit_scale = float(configured if configured is not None else task.logit_scale)
        result = self._fit(task, tower, seed, on_epoch)
        log.info("%s seed %d: best epoch %d, val acc %.2f", self.method, seed, result.best_epoch, result.best_val_acc)
        return result

    @abstractmethod
    def _fit(self, task: TaskFeatures, tower: TextTower, seed: int, on_epoch: EpochCallback | None) -> FitResult: ...

    @abstractmethod
    def _scorer(self, target: ClassSet, own: bool) -> Scorer:
        """A function scoring features against every class of `target`; `own` = the fitted task's classes."""

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classes: Sequence[int] | None = None, target: ClassSet | None = None
    ) -> torch.Tensor:
        """Scores [N, len(classes)] of features [N, D] against `classes` (indices into `target`; None = all).

        `target` None means the fitted task's own classes. A foreign `target` (another dataset's classes) is scored
        with what the method learned that applies to unseen class names; see each method's docstring.
        """
        if self.classes is None:
            raise RuntimeError(f"{self.method}: call fit() before logits()")
        own = target is None or target is self.classes
        target = self.classes if target is None else target
        score = self._scorer(target, own)
        idx = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        out = []
        for chunk in features.split(self.eval_chunk):
            s = score(chunk.to(self.device, torch.float32))
            out.append(s if idx is None else s[:, idx])
        if not out:
            return torch.zeros(0, len(target) if idx is None else len(idx), device=self.device)
        return torch.cat(out)


# --- task checks and label spaces ------------------------------------------------------------------------------


def check_task(task: TaskFeatures, use_synthetic: bool, method: str) -> None:
    """Refuse tasks that would let a method see what it must not (unlabelled classes' images, missing SHIP data)."""
    labeled = set(task.labeled)
    if len(task.val) == 0:
        raise ValueError(f"{method}: task.val is empty, but model selection needs validation features")
    for split, feats in (("train", task.train), ("val", task.val)):
        stray = set(feats.labels.unique().tolist()) - labeled
        if stray:
            raise ValueError(f"{method}: {split} has images of classes outside task.labeled: {sorted(stray)[:10]}")
    if not use_synthetic:
        return
    if task.synthetic is None:
        raise ValueError(f"{method} needs synthetic features of the label-only classes, but task.synthetic is None")
    overlap = set(task.synthetic.labels.unique().tolist()) & labeled
    if overlap:
        raise ValueError(f"{method}: synthetic features given for labelled classes {sorted(overlap)[:10]}")


def training_label_space(task: TaskFeatures, use_synthetic: bool) -> list[int]:
    """Global class indices a method is trained to tell apart: labelled (+ synthesised classes with SHIP)."""
    space = list(task.labeled)
    if use_synthetic and task.synthetic is not None:
        synthesized = sorted(set(task.synthetic.labels.unique().tolist()))
        missing = sorted(set(range(len(task.classnames))) - set(space) - set(synthesized))
        if missing:
            log.warning("no synthetic features for label-only classes %s: they stay out of training", missing[:10])
        space += synthesized
    return space


def local_labels(labels: torch.Tensor, space: Sequence[int], num_classes: int) -> torch.Tensor:
    """Global class indices -> positions in `space` (labels outside it are an error)."""
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
    """Epochs of (features, local labels) batches: one random cached view per image, shuffled; with SHIP each
    batch is followed by as many synthetic features of uniformly drawn label-only classes."""

    def __init__(
        self,
        task: TaskFeatures,
        space: Sequence[int],
        use_synthetic: bool,
        batch_size: int,
        seed: int,
        device: torch.device,
    ):
        if len(task.train) == 0:
            raise ValueError("no training features")
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator: the same draws on any device
        self.batch_size = batch_size
        n = len(task.classnames)
        self.train = task.train.to(device)
        self.train_labels = local_labels(self.train.labels, space, n)
        self.val = task.val.features.to(device, torch.float32)
        self.val_labels = local_labels(task.val.labels.to(device), space, n)
        self.synthetic: LabeledFeatures | None = None
        if use_synthetic and task.synthetic is not None:
            # Sort by class once so that "a random feature of class c" is start[c] + uniform(count[c]).
            order = torch.argsort(task.synthetic.labels, stable=True)
            feats, labels = task.synthetic.features[order].to(device), task.synthetic.labels[order].to(device)
            self.synthetic = LabeledFeatures(feats, local_labels(labels, space, n))
            classes, counts = torch.unique_consecutive(self.synthetic.labels.cpu(), return_counts=True)
            self.syn_classes = classes
            self.syn_counts = counts
            self.syn_starts = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.train) / self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        views = self.train.sample_views(self.generator).features
        perm = torch.randperm(len(self.train), generator=self.generator).to(views.device)
        for idx in perm.split(self.batch_size):
            x, y = views[idx].float(), self.train_labels[idx]
            if self.synthetic is not None:
                xs, ys = self.draw_synthetic(len(idx))
                x, y = torch.cat([x, xs]), torch.cat([y, ys])
            yield x, y

    def draw_synthetic(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n synthetic features: classes uniform over the synthesised classes, then a uniform feature of each."""
        assert self.synthetic is not None
        k = torch.randint(len(self.syn_classes), (n,), generator=self.generator)
        offset = (torch.rand(n, generator=self.generator) * self.syn_counts[k]).long()
        rows = (self.syn_starts[k] + offset).to(self.synthetic.features.device)
        return self.synthetic.features[rows].float(), self.synthetic.labels[rows]


@torch.no_grad()
def val_accuracy(forward: Scorer, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of validation images classified correctly; `labels` are positions in the scored label space."""
    pred = forward(features).argmax(dim=-1)
    return 100.0 * (pred == labels).float().mean().item()


# --- the shared loop -------------------------------------------------------------------------------------------


def dassl_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """Per-epoch lr of CoOp's Dassl config (0-based epoch): constant warm-up, then cosine over all epochs."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))


def train(
    module: nn.Module,
    forward: Scorer,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int, int], float],
    data: TrainingData,
    epochs: int,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Cross-entropy over the label space; `lr_at(epoch, step)` sets the lr before every step. Keeps (loads back
    into `module`) the state of the epoch with the best validation accuracy — epoch 0 being the initial state."""
    best_acc = val_accuracy(forward, data.val, data.val_labels)
    best_epoch, best_state = 0, copy.deepcopy(module.state_dict())
    curve: list[dict[str, float | int | None]] = [{"epoch": 0, "train_loss": None, "val_acc": best_acc}]
    step = 0
    for epoch in range(1, epochs + 1):
        module.train()
        total, count = 0.0, 0
        for x, y in data.epoch():
            lr = lr_at(epoch - 1, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
            step += 1
        module.eval()
        acc = val_accuracy(forward, data.val, data.val_labels)
        curve.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_acc": acc})
        log.debug("epoch %d: loss %.4f, val acc %.2f", epoch, total / max(count, 1), acc)
        # Strictly better only: on ties the earlier (less fitted) state is kept.
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(module.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, epochs)
    module.load_state_dict(best_state)
    module.eval()
    return FitResult(curve=curve, best_epoch=best_epoch, best_val_acc=best_acc)


def train_dassl_sgd(
    module: nn.Module,
    forward: Scorer,
    params: DasslSGDParams,
    data: TrainingData,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """`train` with CoOp's Dassl recipe (SGD + constant warm-up + per-epoch cosine), as CoOp and CLIP-Adapter use."""
    p = params
    optimizer = torch.optim.SGD(module.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    return train(
        module,
        forward,
        optimizer,
        lambda epoch, _step: dassl_lr(epoch, p.epochs, p.lr, p.warmup_epochs, p.warmup_lr),
        data,
        p.epochs,
        on_epoch,
    )
