"""Metric functions and protocols against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.adapters import Adapter, ClassSet, FitResult
from pipeline.adapters.base import Scorer
from pipeline.evaluation import (
    accuracy,
    per_class_accuracy,
    per_class_rows,
    predict_foreign,
    predict_task,
    predictions_frame,
    score_foreign,
    score_task,
    task_scores,
)
from pipeline.features import EvalSplit, LabeledFeatures, Task
from pipeline.metrics import harmonic_mean

# Six test images (labels 0 0 1 2 3 3); row i = image i's scores over 4 classes.
SCORES = torch.tensor(
    [
        [5.0, 1.0, 9.0, 0.0],  # y=0: among {0,1} -> 0 (right); all classes -> 2 (wrong)
        [1.0, 3.0, 0.0, 0.0],  # y=0: -> 1 both ways (wrong)
        [0.0, 4.0, 2.0, 1.0],  # y=1: -> 1 both ways (right)
        [9.0, 0.0, 3.0, 1.0],  # y=2: among {2,3} -> 2 (right); all -> 0 (wrong)
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
        self.classes = ClassSet(["a", "b", "c", "d"], {"zeroshot": torch.eye(4)})
        self.logit_scale = 1.0

    def _fit(self, *args) -> FitResult:  # pragma: no cover - never trained
        raise NotImplementedError

    def _scorer(self) -> Scorer:
        return lambda f: f @ self.scores

    def _foreign_scorer(self, target: ClassSet, tower) -> Scorer:
        return lambda f: f @ target.classifier().T


def _split(name: str, rows: list[int], classes: list[int], per_class_mean: bool = False) -> EvalSplit:
    ids = torch.eye(6)
    return EvalSplit(name, LabeledFeatures(ids[rows], LABELS[rows]), classes, per_class_mean)


def _task(protocol: str, evals: list[EvalSplit]) -> Task:
    empty = LabeledFeatures(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    return Task(protocol, ["a", "b", "c", "d"], [0, 1], [2, 3], {"zeroshot": torch.eye(4)}, empty, empty, evals, 1)


def test_accuracy_and_per_class_mean():
    pred, labels = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 2])
    assert accuracy(pred, labels) == pytest.approx(75.0)
    assert accuracy(pred, labels, per_class_mean=True) == pytest.approx(50.0)  # class 0: 100%, class 2: 0%
    assert math.isnan(accuracy(torch.zeros(0), torch.zeros(0)))


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 50.0) == 0.0
    assert math.isnan(harmonic_mean(float("nan"), 50.0))


def test_base_to_new_scores_each_half_in_its_own_label_space():
    task = _task("base_to_new", [_split("base", [0, 1, 2], [0, 1]), _split("new", [3, 4, 5], [2, 3])])
    scores = score_task(FixedScores(SCORES), task)
    assert scores["base"] == pytest.approx(200 / 3)  # images 0 and 2 right
    assert scores["new"] == pytest.approx(100 / 3)  # image 3 right
    assert scores["hm"] == pytest.approx(harmonic_mean(200 / 3, 100 / 3))


def test_gzsl_scores_everything_against_every_class_with_per_class_means():
    every = [0, 1, 2, 3]
    task = _task("gzsl", [_split("seen", [0, 1, 2], every, True), _split("unseen", [3, 4, 5], every, True)])
    scores = score_task(FixedScores(SCORES), task)
    # seen: class 0 -> 0/2 right (image 0 now goes to class 2), class 1 -> 1/1: mean 50%
    assert scores["seen"] == pytest.approx(50.0)
    # unseen: class 2 -> 0/1 (image 3 -> class 0), class 3 -> 0/2: mean 0%
    assert scores["unseen"] == pytest.approx(0.0)
    assert scores["hm"] == 0.0


def test_per_class_rows():
    task = _task("base_to_new", [_split("base", [0, 1, 2], [0, 1]), _split("new", [3, 4, 5], [2, 3])])
    frame = per_class_accuracy(FixedScores(SCORES), task)
    rows = {(r["class"], r["split"]): (r["accuracy"], r["n_test"]) for r in frame.iter_rows(named=True)}
    assert rows == {
        (0, "base"): (50.0, 2),
        (1, "base"): (100.0, 1),
        (2, "new"): (100.0, 1),
        (3, "new"): (0.0, 2),
    }


def test_a_foreign_target_is_scored_against_its_own_classes():
    target = ClassSet(["w", "x", "y"], {"zeroshot": torch.eye(3)})
    feats = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    acc = score_foreign(FixedScores(SCORES), LabeledFeatures(feats, torch.tensor([0, 2, 2])), target, tower=object())
    assert acc == pytest.approx(200 / 3)


def test_scores_come_from_the_per_image_record():
    task = _task(
        "gzsl", [_split("seen", [0, 1, 2], [0, 1, 2, 3], True), _split("unseen", [3, 4, 5], [0, 1, 2, 3], True)]
    )
    records = predict_task(FixedScores(SCORES), task)
    assert records["seen"].correct.tolist() == [False, False, True]  # image 0 now goes to class 2
    assert task_scores("gzsl", records) == score_task(FixedScores(SCORES), task)
    assert per_class_rows(task, records).equals(per_class_accuracy(FixedScores(SCORES), task))


def test_a_foreign_target_gives_the_record_the_task_gives_for_the_same_split():
    """A source fit scored on a target on its own (`predict_foreign`: the target's labels 0..) and a method scored on
    the same target inside a cross-dataset task (labels offset past the source's classes) write the same rows."""
    target = ClassSet(["c", "d"], {"zeroshot": SCORES[:, 2:4].T.contiguous()})  # the target's classes = columns 2, 3
    images = [3, 4, 5, 0]
    test = LabeledFeatures(torch.eye(6)[images], LABELS[images] % 2)
    foreign = predict_foreign(FixedScores(SCORES), test, target, tower=object())
    inside = EvalSplit("t", test.relabel(2), [2, 3])
    in_task = predict_task(FixedScores(SCORES), _task("cross_dataset", [inside]))["t"]
    assert torch.equal(foreign.correct, in_task.correct)
    assert foreign.accuracy == pytest.approx(in_task.accuracy)
    frame = predictions_frame({"ship": {"t": in_task}, "plain": {"t": foreign}})
    assert frame.columns == ["split", "image", "label", "ship", "plain"]
    assert frame["label"].to_list() == [0, 1, 1, 0] and frame["ship"].to_list() == frame["plain"].to_list()
    fewer = predict_foreign(FixedScores(SCORES), LabeledFeatures(test.features[:3], test.labels[:3]), target, object())
    with pytest.raises(ValueError, match="same test images"):
        predictions_frame({"ship": {"t": in_task}, "plain": {"t": fewer}})


def test_predictions_frame_marks_splits_a_method_was_not_scored_on():
    task = _task("base_to_new", [_split("base", [0, 1, 2], [0, 1]), _split("new", [3, 4, 5], [2, 3])])
    records = predict_task(FixedScores(SCORES), task)
    frame = predictions_frame({"a": records, "b": {"new": records["new"]}})
    assert frame["split"].to_list() == ["base"] * 3 + ["new"] * 3
    assert frame["image"].to_list() == [0, 1, 2, 0, 1, 2]
    assert frame["a"].to_list() == [True, False, True, True, False, False]
    assert frame["b"].to_list() == [None, None, None, True, False, False]
