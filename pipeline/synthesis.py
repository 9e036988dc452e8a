"""Synthetic features from a trained SHIP generator, and two cheap checks of their quality."""

from __future__ import annotations

from collections.abc import Sequence

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
