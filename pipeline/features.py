"""In-memory feature sets: what the generator and the adapters consume (read from a FeatureStore)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's base-to-new split: labels sorted, the first ceil(n/2) are base, the rest new."""
    n_base = math.ceil(num_classes / 2)
    return list(range(n_base)), list(range(n_base, num_classes))


@dataclass(frozen=True)
class LabeledFeatures:
    """L2-normalised image features with global class labels.

    `features` is [N, D], or [N, V, D] for training images with V cached views (view 0 is the clean,
    centre-cropped view; views 1.. are augmented).
    """

    features: torch.Tensor
    labels: torch.Tensor  # [N] int64

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.features.shape[0]} features but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_views(self) -> bool:
        return self.features.dim() == 3

    def of_classes(self, classes: Sequence[int]) -> LabeledFeatures:
        mask = torch.isin(
            self.labels, torch.as_tensor(list(classes), dtype=self.labels.dtype, device=self.labels.device)
        )
        return LabeledFeatures(self.features[mask], self.labels[mask])

    def clean(self) -> LabeledFeatures:
        """One feature per image: the clean view for multi-view sets."""
        return LabeledFeatures(self.features[:, 0], self.labels) if self.has_views else self

    def sample_views(self, generator: torch.Generator) -> LabeledFeatures:
        """One randomly drawn cached view per image (an 'epoch' of augmentation without the encoder)."""
        if not self.has_views:
            return self
        idx = torch.randint(self.features.shape[1], (len(self),), generator=generator)
        return LabeledFeatures(self.features[torch.arange(len(self)), idx], self.labels)

    def to(self, device: torch.device | str) -> LabeledFeatures:
        return LabeledFeatures(self.features.to(device), self.labels.to(device))


@dataclass(frozen=True)
class TaskFeatures:
    """Everything a fine-tuning method may see, plus the test split it is scored on.

    `train` holds only classes with labelled images (`labeled`); label-only classes appear in `classnames`
    and, for *_ship methods, in `synthetic`. `val` is restricted to labelled classes by construction, so
    model selection can never look at label-only classes' images, nor at test.
    """

    classnames: list[str]
    base: list[int]
    new: list[int]
    labeled: list[int]  # classes that have training images (base, or all for cross-dataset)
    text_classifier: torch.Tensor  # [C, E] zero-shot template-ensemble classifier, rows L2-normalised
    train: LabeledFeatures
    val: LabeledFeatures
    test: LabeledFeatures
    synthetic: LabeledFeatures | None = None
    logit_scale: float = 100.0  # the backbone's learned temperature, exp(logit_scale); 100 for OpenAI CLIP
