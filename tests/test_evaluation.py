"""Metric functions against hand-computed values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pipeline.adapters import Adapter, ClassSet, FitResult
from pipeline.adapters.base import Scorer
from pipeline.evaluation import accuracy, base_to_new, harmonic_mean, joint, per_class_accuracy, transfer
from pipeline.features import LabeledFeatures, TaskFeatures

# Six test images (labels 0 0 1 2 3 3); classes 0, 1 are base, 2, 3 new. Row i = image i's scores over 4 classes.
SCORES = torch.tensor(
    [
        [5.0, 1.0, 9.0, 0.0],  # y=0: base-only -> 0 (right); all classes -> 2 (wrong)
        [1.0, 3.0, 0.0, 0.0],  # y=0: -> 1 both ways (wrong)
        [0.0, 4.0, 2.0, 1.0],  # y=1: -> 1 both ways (right)
        [9.0, 0.0, 3.0, 1.0],  # y=2: new-only -> 2 (right); all -> 0 (wrong)
        [0.0, 0.0, 2.0, 1.0],  # y=3: -> 2 (wrong)
        [0.0, 0.0, 5.0, 2.0],  # y=3: -> 2 (wrong)
    ]
)
LABELS = torch.tensor([0, 0, 1, 2, 3, 3])


class FixedScores(Adapter):
    """Features are one-hot image ids; the scores are a fixed table (a foreign target: its classifier's columns)."""

    name = "fixed"

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores
        self.classes = ClassSet(["a", "b", "c", "d"], torch.eye(4))

    def _fit(self, task, tower, seed, on_epoch) -> FitResult:  # pragma: no cover - never trained
        raise NotImplementedError

    def _scorer(self, target: ClassSet, own: bool) -> Scorer:
        table = self.scores if own else target.text_classifier.T
        return lambda f: f @ table


def hand_task() -> TaskFeatures:
    ids = torch.eye(6)
    empty = LabeledFeatures(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    return TaskFeatures(
        classnames=["a", "b", "c", "d"],
        base=[0, 1],
        new=[2, 3],
        labeled=[0, 1],
        text_classifier=torch.eye(4),
        train=empty,
        val=empty,
        test=LabeledFeatures(ids, LABELS),
    )


def test_accuracy_and_harmonic_mean():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
    assert math.isnan(accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(0.0, 90.0) == 0.0 and harmonic_mean(90.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 50.0))


def test_base_to_new_scores_each_split_against_its_own_classes():
    res = base_to_new(FixedScores(SCORES), hand_task())
    assert res["base"] == pytest.approx(200 / 3)  # images 0, 2 right of 0, 1, 2
    assert res["new"] == pytest.approx(100 / 3)  # image 3 right of 3, 4, 5
    assert res["hm"] == pytest.approx(2 * (200 / 3) * (100 / 3) / 100)


def test_joint_scores_every_image_against_all_classes():
    res = joint(FixedScores(SCORES), hand_task())
    assert res["joint_base"] == pytest.approx(100 / 3)  # only image 2
    assert res["joint_new"] == 0.0
    assert res["joint_hm"] == 0.0


def test_per_class_accuracy():
    table = per_class_accuracy(FixedScores(SCORES), hand_task())
    assert table.columns == ["class", "classname", "split", "accuracy", "n_test"]
    rows = {r["class"]: r for r in table.iter_rows(named=True)}
    assert {c: rows[c]["accuracy"] for c in rows} == pytest.approx({0: 50.0, 1: 100.0, 2: 100.0, 3: 0.0})
    assert [rows[c]["split"] for c in range(4)] == ["base", "base", "new", "new"]
    assert rows[0]["classname"] == "a" and rows[3]["n_test"] == 2


def test_no_new_classes_gives_undefined_new_and_h():
    # Every class labelled (cross-dataset source): "base" is then all images vs all classes, only image 2 right.
    all_base = replace(hand_task(), base=[0, 1, 2, 3], new=[], labeled=[0, 1, 2, 3])
    res = base_to_new(FixedScores(SCORES), all_base)
    assert res["base"] == pytest.approx(100 / 6) and math.isnan(res["new"]) and math.isnan(res["hm"])


def test_transfer_scores_a_foreign_class_set():
    target = ClassSet(["x", "y"], torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]))
    test = LabeledFeatures(torch.eye(6)[:4], torch.tensor([0, 1, 1, 0]))
    # image 0 -> x (right), 1 -> y (right), 2 -> y (right), 3 -> y (wrong)
    assert transfer(FixedScores(SCORES), test, target) == pytest.approx(75.0)
