"""Synthetic features from a trained SHIP generator, two cheap checks of their quality, and a 2-D picture of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import polars as pl
import torch
import torch.nn.functional as F

from pipeline.features import LabeledFeatures
from pipeline.generator import ShipGenerator

_SEED_STRIDE = 1_000_003  # a prime > any class count: distinct (seed, class) pairs never share a stream


@torch.no_grad()
def synthesize_features(
    generator: ShipGenerator, classes: Sequence[int], per_class: int, seed: int, batch_size: int = 1024
) -> LabeledFeatures:
    """`per_class` features per class from z ~ N(0, I): [len(classes) * per_class, E], labels grouped by class.

    Each class draws its latents from its own stream seeded by (seed, class), on the CPU, so a class's
    features depend only on the seed — not on the device, the batch size, or which other classes are asked for.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < generator.num_classes]
    if bad:
        raise IndexError(f"classes {bad} are outside the generator's {generator.num_classes} class names")
    if not classes:
        return LabeledFeatures(torch.zeros(0, _feature_dim(generator)), torch.zeros(0, dtype=torch.long))

    z = torch.cat(
        [
            torch.randn(per_class, generator.latent_dim, generator=torch.Generator().manual_seed(_seed(seed, c)))
            for c in classes
        ]
    )
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)

    was_training = generator.training
    generator.eval()
    device = generator.prompts.device
    out = [
        generator.decode(z[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(labels), batch_size)
    ]
    generator.train(was_training)
    features = F.normalize(torch.cat(out).float(), dim=-1)
    return LabeledFeatures(features, labels)


def _seed(seed: int, cls: int) -> int:
    return (seed * _SEED_STRIDE + cls) % (2**63)


def _feature_dim(generator: ShipGenerator) -> int:
    return generator.config.feature_dim


@torch.no_grad()
def synthetic_zeroshot_accuracy(
    synthetic: LabeledFeatures, text_classifier: torch.Tensor, classes: Sequence[int] | None = None
) -> float:
    """Percent of synthetic features whose nearest zero-shot class (cosine, rows of `text_classifier`) is their own.

    The label space is `classes` (default: every row of the classifier), e.g. the new classes only, as in
    base-to-new evaluation. Every synthetic label must be in it.
    """
    if len(synthetic) == 0:
        raise ValueError("no synthetic features to score")
    label_space = torch.arange(text_classifier.shape[0]) if classes is None else torch.as_tensor(list(classes))
    labels = synthetic.labels.cpu()
    if not torch.isin(labels, label_space).all():
        missing = sorted(set(labels.unique().tolist()) - set(label_space.tolist()))
        raise ValueError(f"synthetic labels {missing} are not in the label space")
    feats = F.normalize(synthetic.features.cpu().float(), dim=-1)
    weights = F.normalize(text_classifier.cpu().float()[label_space], dim=-1)
    pred = label_space[(feats @ weights.T).argmax(dim=-1)]
    return float((pred == labels).double().mean() * 100.0)


@torch.no_grad()
def synthetic_real_cosine(synthetic: LabeledFeatures, real: LabeledFeatures) -> float:
    """How close synthetic features sit to real ones of the same class.

    Defined as: over the classes present in both sets, the mean of (mean cosine between every synthetic and
    every real feature of that class); classes weigh equally. The pairwise mean equals the dot product of the
    class means of the unit-normalised features, which is how it is computed. Real features with cached views
    use the clean view.
    """
    real = real.clean()
    s_feats = F.normalize(synthetic.features.cpu().float(), dim=-1)
    r_feats = F.normalize(real.features.cpu().float(), dim=-1)
    s_labels, r_labels = synthetic.labels.cpu(), real.labels.cpu()
    common = sorted(set(s_labels.tolist()) & set(r_labels.tolist()))
    if not common:
        raise ValueError("synthetic and real features share no class")
    per_class = [s_feats[s_labels == c].mean(dim=0) @ r_feats[r_labels == c].mean(dim=0) for c in common]
    return float(torch.stack(per_class).double().mean())


def describe_synthetic(
    synthetic: LabeledFeatures, text_classifier: torch.Tensor, label_only: Sequence[int], real: LabeledFeatures
) -> dict[str, float]:
    """The synthesize stage's quality figures, rounded for a tracked file. `real` holds real test features of the
    label-only classes: they only *describe* the synthetic features, never select or tune anything."""
    quality = {
        "synthetic_zeroshot_acc": synthetic_zeroshot_accuracy(synthetic, text_classifier),
        "synthetic_zeroshot_acc_new_only": synthetic_zeroshot_accuracy(synthetic, text_classifier, label_only),
        "synthetic_real_cosine": synthetic_real_cosine(synthetic, real),
        "chance_acc": 100.0 / text_classifier.shape[0],
    }
    return {k: round(float(v), 4) for k, v in quality.items()}


PROJECTION_CLASSES = 4  # label-only classes drawn in the picture: enough to see clusters, few enough to tell apart
PROJECTION_PER_CLASS = 40  # points per class and kind: a cloud's shape without overplotting
PROJECTION_SCHEMA = {"kind": pl.String, "class": pl.Int64, "classname": pl.String, "pc1": pl.Float64, "pc2": pl.Float64}


@torch.no_grad()
def projection_frame(
    synthetic: LabeledFeatures,
    real: LabeledFeatures,
    classnames: Sequence[str],
    classes: int = PROJECTION_CLASSES,
    per_class: int = PROJECTION_PER_CLASS,
) -> pl.DataFrame:
    """Real test features and synthetic features of a few label-only classes, projected on their first two
    principal components: whether the synthetic cloud of a class lands on its real one.

    The classes are `classes` evenly spaced among those present in both sets (sorted), each with its first
    `per_class` real features (store order) and first `per_class` synthetic ones; the PCA is fitted on those points
    together, in float64 on the CPU, and each component's sign is fixed (its largest loading positive), so the same
    features always give the same picture. Rows: kind (real | synthetic), class, classname, pc1, pc2.
    """
    real = real.clean()
    s_labels, r_labels = synthetic.labels.cpu(), real.labels.cpu()
    common = sorted(set(s_labels.tolist()) & set(r_labels.tolist()))
    if not common:
        raise ValueError("synthetic and real features share no class")
    step = (len(common) - 1) / max(classes - 1, 1)
    picks = sorted({common[round(i * step)] for i in range(min(classes, len(common)))})
    kinds, labels, rows = [], [], []
    for kind, feats, labs in (("real", real.features, r_labels), ("synthetic", synthetic.features, s_labels)):
        feats = F.normalize(feats.cpu().double(), dim=-1)
        for c in picks:
            chosen = feats[labs == c][:per_class]
            rows.append(chosen)
            kinds += [kind] * len(chosen)
            labels += [c] * len(chosen)
    points = torch.cat(rows)
    centred = points - points.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    projected = torch.zeros(len(points), 2, dtype=torch.float64)
    projected[:, : len(components)] = centred @ (components * signs).T  # one point alone has no second direction
    return pl.DataFrame(
        {
            "kind": kinds,
            "class": labels,
            "classname": [classnames[c] for c in labels],
            "pc1": [round(float(v), 5) for v in projected[:, 0]],
            "pc2": [round(float(v), 5) for v in projected[:, 1]],
        },
        schema=PROJECTION_SCHEMA,
    )


# --- sources of synthetic features for fine-tuning ---------------------------------------------------------------


class SyntheticSource(ABC):
    """Synthetic features of label-only classes, labelled with task class indices, for SHIP's fine-tuning.

    `draw(n)` returns n features of uniformly drawn classes (SHIP's CoOp+SHIP draws a class uniformly per synthetic
    sample); `pool(k)` returns k features per class (Tip-Adapter-F+SHIP's cache entries).
    """

    classes: list[int]

    @abstractmethod
    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def pool(self, per_class: int, generator: torch.Generator) -> LabeledFeatures: ...


class PoolSource(SyntheticSource):
    """Draws from a fixed set of synthetic features (the synthesize stage's store)."""

    def __init__(self, features: LabeledFeatures):
        if len(features) == 0:
            raise ValueError("the synthetic pool is empty")
        order = torch.argsort(features.labels, stable=True)  # sorted: "feature j of class c" = start[c] + j
        self.features = features.features[order].float()
        self.labels = features.labels[order]
        classes, counts = torch.unique_consecutive(self.labels.cpu(), return_counts=True)
        self.classes = classes.tolist()
        self._counts = counts
        self._starts = torch.cumsum(counts, 0) - counts

    def to(self, device: torch.device) -> PoolSource:
        self.features, self.labels = self.features.to(device), self.labels.to(device)
        return self

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.randint(len(self.classes), (n,), generator=generator)
        offset = (torch.rand(n, generator=generator) * self._counts[k]).long()
        rows = (self._starts[k] + offset).to(self.features.device)
        return self.features[rows], self.labels[rows]

    def pool(self, per_class: int, generator: torch.Generator) -> LabeledFeatures:
        rows = []
        for start, count in zip(self._starts.tolist(), self._counts.tolist(), strict=True):
            rows.append(start + torch.randperm(count, generator=generator)[:per_class])
        index = torch.cat(rows).to(self.features.device)
        return LabeledFeatures(self.features[index], self.labels[index])


class FreshSource(SyntheticSource):
    """Decodes new latents z ~ N(0, I) through the generator at every draw (SHIP's reference CoOp+SHIP).

    The generator's class names must be the task's, so its label indices are task class indices.
    """

    def __init__(self, generator: ShipGenerator, classes: Sequence[int]):
        bad = [c for c in classes if not 0 <= c < generator.num_classes]
        if not classes or bad:
            raise ValueError(f"classes {list(classes)[:10]} are not all among the generator's {generator.num_classes}")
        self.generator = generator.eval()
        self.classes = [int(c) for c in classes]
        self._classes = torch.as_tensor(self.classes, dtype=torch.long)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self._classes[torch.randint(len(self.classes), (n,), generator=generator)]
        z = torch.randn(n, self.generator.latent_dim, generator=generator)
        device = self.generator.prompts.device
        labels = labels.to(device)
        return self.generator.decode(z.to(device), labels), labels

    def pool(self, per_class: int, generator: torch.Generator) -> LabeledFeatures:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return synthesize_features(self.generator, self.classes, per_class, seed)
