"""Synthetic features: determinism, shapes, the two quality checks against hand-computed values, the projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.features import LabeledFeatures
from pipeline.generator import GeneratorConfig, ShipGenerator
from pipeline.synthesis import (
    FreshSource,
    PoolSource,
    projection_frame,
    synthesize_features,
    synthetic_real_cosine,
    synthetic_zeroshot_accuracy,
)
from pipeline.text_tower import TextTower

NAMES = ["cat", "dog", "red car", "tree", "sailing boat", "apple"]


@pytest.fixture(scope="module")
def generator(tiny_tower: TextTower) -> ShipGenerator:
    torch.manual_seed(0)
    return ShipGenerator(tiny_tower, NAMES, GeneratorConfig(32, tiny_tower.width, 2, 64, 64)).eval()


def test_synthesis_shapes_labels_unit_norm(generator: ShipGenerator):
    out = synthesize_features(generator, [5, 1, 3], per_class=4, seed=0, batch_size=5)
    assert out.features.shape == (12, 32) and out.features.dtype == torch.float32
    assert out.labels.tolist() == [5] * 4 + [1] * 4 + [3] * 4
    torch.testing.assert_close(out.features.norm(dim=-1), torch.ones(12))
    empty = synthesize_features(generator, [], per_class=4, seed=0)
    assert empty.features.shape == (0, 32) and len(empty) == 0
    with pytest.raises(IndexError):
        synthesize_features(generator, [6], per_class=1, seed=0)


def test_synthesis_is_deterministic_per_seed(generator: ShipGenerator):
    a = synthesize_features(generator, [0, 2], per_class=3, seed=7)
    b = synthesize_features(generator, [0, 2], per_class=3, seed=7, batch_size=2)
    c = synthesize_features(generator, [0, 2], per_class=3, seed=8)
    torch.testing.assert_close(a.features, b.features, atol=1e-6, rtol=0)
    assert not torch.allclose(a.features, c.features)
    # A class's features depend on the seed only, not on which other classes are requested.
    alone = synthesize_features(generator, [2], per_class=3, seed=7)
    torch.testing.assert_close(a.features[3:], alone.features, atol=1e-6, rtol=0)


def test_zeroshot_accuracy_by_hand():
    clf = torch.eye(3)
    feats = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # label 0 -> 0 (right)
            [0.3, 0.9, 0.1],  # label 0 -> 1 over all classes (wrong), -> 0 among {0, 2} (right)
            [0.0, 1.0, 0.0],  # label 1 -> 1 (right)
            [0.6, 0.0, 0.8],  # label 2 -> 2 (right)
        ]
    )
    synthetic = LabeledFeatures(feats, torch.tensor([0, 0, 1, 2]))
    assert synthetic_zeroshot_accuracy(synthetic, clf) == pytest.approx(75.0)
    subset = LabeledFeatures(feats[[0, 1, 3]], torch.tensor([0, 0, 2]))
    assert synthetic_zeroshot_accuracy(subset, clf, classes=[0, 2]) == pytest.approx(100.0)
    assert synthetic_zeroshot_accuracy(subset, clf) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match=r"\[1\]"):
        synthetic_zeroshot_accuracy(synthetic, clf, classes=[0, 2])


def test_synthetic_real_cosine_by_hand():
    synthetic = LabeledFeatures(
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 1, 2])
    )
    # Real features with two cached views: only view 0 (clean) counts.
    clean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    views = torch.stack([clean, F.normalize(torch.ones(4, 2), dim=-1)], dim=1)
    real = LabeledFeatures(views, torch.tensor([0, 1, 1, 3]))
    # class 0: pairs (1,0)x(1,0)=1, (0,1)x(1,0)=0 -> 0.5; class 1: (0,1)x{(0,1),(0.6,0.8)} -> 0.9; 2, 3 unshared
    assert synthetic_real_cosine(synthetic, real) == pytest.approx((0.5 + 0.9) / 2)
    with pytest.raises(ValueError, match="no class"):
        synthetic_real_cosine(synthetic, LabeledFeatures(clean[:1], torch.tensor([4])))


def test_pool_source_draws_classes_uniformly_from_its_features():
    # Class 7 has 3 features, class 9 has 30: a uniform class draw still gives each class about half the samples.
    feats = F.normalize(torch.randn(33, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([7] * 3 + [9] * 30)
    pool = PoolSource(LabeledFeatures(feats, labels))
    assert pool.classes == [7, 9]
    x, y = pool.draw(4000, torch.Generator().manual_seed(1))
    assert x.shape == (4000, 8) and set(y.tolist()) == {7, 9}
    assert abs(float((y == 7).float().mean()) - 0.5) < 0.03
    rows = {tuple(r) for r in feats[labels == 7].tolist()}
    assert {tuple(r) for r in x[y == 7].tolist()} <= rows  # every drawn feature is one of the class's own
    again = pool.draw(4000, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    cache = pool.pool(2, torch.Generator().manual_seed(2))
    assert sorted(cache.labels.tolist()) == [7, 7, 9, 9]


def test_fresh_source_decodes_new_latents_for_uniform_label_only_classes(generator: ShipGenerator):
    fresh = FreshSource(generator, [3, 5])
    x1, y1 = fresh.draw(64, torch.Generator().manual_seed(0))
    x2, y2 = fresh.draw(64, torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # seeded by the caller's generator
    assert set(y1.tolist()) == {3, 5}
    torch.testing.assert_close(x1.norm(dim=-1), torch.ones(64))
    g = torch.Generator().manual_seed(0)
    a, _ = fresh.draw(8, g)
    b, _ = fresh.draw(8, g)
    assert not torch.allclose(a, b)  # every draw decodes new latents
    with pytest.raises(ValueError, match="not all among"):
        FreshSource(generator, [99])


def test_projection_shows_a_few_label_only_classes_real_and_synthetic_the_same_way_every_time():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    real_labels = torch.arange(6).repeat_interleave(50)
    real = LabeledFeatures(
        F.normalize(centres[real_labels] + 0.1 * torch.randn(300, 16, generator=g), dim=-1), real_labels
    )
    syn_labels = torch.tensor([1, 2, 3, 4, 5]).repeat_interleave(60)
    synthetic = LabeledFeatures(centres[syn_labels] + 0.1 * torch.randn(300, 16, generator=g), syn_labels)
    names = [f"class {c}" for c in range(6)]
    frame = projection_frame(synthetic, real, names, classes=3, per_class=40)
    assert frame.columns == ["kind", "class", "classname", "pc1", "pc2"]
    assert sorted(set(frame["class"].to_list())) == [1, 3, 5]  # evenly spaced among the classes both sets hold
    counts = frame.group_by("kind", "class").len().sort("kind", "class")["len"].to_list()
    assert counts == [40] * 6
    assert frame["classname"].to_list()[0] == "class 1"
    assert frame.write_csv() == projection_frame(synthetic, real, names, classes=3, per_class=40).write_csv()
