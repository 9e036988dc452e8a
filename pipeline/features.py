"""In-memory feature sets and tasks: what the generator and the fine-tuning methods consume (read from stores)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's base-to-new split: labels sorted, the first ceil(n/2) are base, the rest new."""
    n_base = math.ceil(num_classes / 2)
    return list(range(n_base)), list(range(n_base, num_classes))


@dataclass(frozen=True)
class LabeledFeatures:
    """L2-normalised image features with class labels, and the norm of each raw encoder output.

    `features` is [N, D], or [N, V, D] for training images with V cached views: view 0 is the clean (centre-crop)
    view, views 1.. are augmented. `norms` ([N] or [N, V]) lets methods that work on the encoder's raw output
    (Tip-Adapter's cache keys, CLIP-Adapter's residual) recover it exactly: raw = features * norms.
    """

    features: torch.Tensor
    labels: torch.Tensor  # [N] int64
    norms: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.features.shape[0]} features but {self.labels.shape[0]} labels")
        if self.norms is not None and tuple(self.norms.shape) != tuple(self.features.shape[:-1]):
            raise ValueError(f"norms {tuple(self.norms.shape)} do not match features {tuple(self.features.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_views(self) -> bool:
        return self.features.dim() == 3

    @property
    def augmented_views(self) -> int:
        return self.features.shape[1] - 1 if self.has_views else 0

    def _rows(self, index: torch.Tensor) -> LabeledFeatures:
        norms = None if self.norms is None else self.norms[index]
        return LabeledFeatures(self.features[index], self.labels[index], norms)

    def of_classes(self, classes: Sequence[int]) -> LabeledFeatures:
        wanted = torch.as_tensor(list(classes), dtype=self.labels.dtype, device=self.labels.device)
        return self._rows(torch.isin(self.labels, wanted))

    def view(self, v: int) -> LabeledFeatures:
        """One feature per image: view v (0 = clean) of multi-view sets."""
        if not self.has_views:
            return self
        return LabeledFeatures(self.features[:, v], self.labels, None if self.norms is None else self.norms[:, v])

    def clean(self) -> LabeledFeatures:
        return self.view(0)

    def sample_views(self, generator: torch.Generator) -> LabeledFeatures:
        """One randomly drawn augmented view per image: an epoch of augmentation without the encoder.

        The references train on augmented images only, so the clean view is drawn only when none is cached.
        """
        if not self.has_views:
            return self
        n, first = len(self), 1 if self.augmented_views else 0
        idx = first + torch.randint(self.features.shape[1] - first, (n,), generator=generator)
        rows = torch.arange(n)
        idx, rows = idx.to(self.features.device), rows.to(self.features.device)
        norms = None if self.norms is None else self.norms[rows, idx]
        return LabeledFeatures(self.features[rows, idx], self.labels, norms)

    def views_as_rows(self) -> LabeledFeatures:
        """Every augmented view as a feature of its own ([N * K, D]; the clean view only if none is cached): the
        distribution training draws from, as one flat set."""
        if not self.has_views:
            return self
        first = 1 if self.augmented_views else 0
        features = self.features[:, first:]
        k = features.shape[1]
        norms = None if self.norms is None else self.norms[:, first:].reshape(-1)
        return LabeledFeatures(features.reshape(-1, features.shape[-1]), self.labels.repeat_interleave(k), norms)

    def raw(self) -> torch.Tensor:
        """The encoder's raw output (features x norms); requires norms."""
        if self.norms is None:
            raise ValueError("these features carry no norms, so the raw encoder output cannot be recovered")
        return self.features.float() * self.norms.unsqueeze(-1).float()

    def to(self, device: torch.device | str) -> LabeledFeatures:
        norms = None if self.norms is None else self.norms.to(device)
        return LabeledFeatures(self.features.to(device), self.labels.to(device), norms)

    def relabel(self, offset: int) -> LabeledFeatures:
        return replace(self, labels=self.labels + offset)

    @staticmethod
    def concat(parts: Sequence[LabeledFeatures]) -> LabeledFeatures:
        norms = None if any(p.norms is None for p in parts) else torch.cat([p.norms for p in parts])  # type: ignore[misc]
        return LabeledFeatures(torch.cat([p.features for p in parts]), torch.cat([p.labels for p in parts]), norms)


@dataclass(frozen=True)
class EvalSplit:
    """Test images scored against `classes` (task class indices): top-1 over images, or, for GZSL, the mean over
    classes of per-class top-1 accuracy."""

    name: str
    test: LabeledFeatures
    classes: list[int]
    per_class_mean: bool = False


@dataclass(frozen=True)
class Task:
    """Everything a fine-tuning method may see, plus the test splits it is scored on.

    `train`/`val` hold images of the `labeled` classes only; `label_only` classes have a name and nothing else
    (SHIP synthesizes features for them). Model selection may read `val` only, never `evals`.
    `classifiers` holds the zero-shot text classifier rows of every class ([C, E], L2-normalised): "zeroshot"
    (the dataset's templates) and "tip_adapter_f" (Tip-Adapter's templates, e.g. ImageNet's 7-template ensemble).
    """

    protocol: str
    classnames: list[str]
    labeled: list[int]
    label_only: list[int]
    classifiers: dict[str, torch.Tensor]
    train: LabeledFeatures
    val: LabeledFeatures
    evals: list[EvalSplit]
    shots: int
    logit_scale: float = 100.0  # the backbone's learned temperature, exp(logit_scale); 100 for OpenAI CLIP
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def text_classifier(self) -> torch.Tensor:
        return self.classifiers["zeroshot"]

    def classifier(self, name: str) -> torch.Tensor:
        return self.classifiers.get(name, self.classifiers["zeroshot"])

    def to(self, device: torch.device) -> Task:
        return replace(
            self,
            classifiers={k: v.to(device) for k, v in self.classifiers.items()},
            train=self.train.to(device),
            val=self.val.to(device),
            evals=[replace(e, test=e.test.to(device)) for e in self.evals],
        )
