"""run_finetune: output tables, metrics keys, transfer keys, and the missing-synthetic error."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.adapters import ClassSet
from pipeline.evaluation import TransferTask
from pipeline.finetune import run_finetune
from pipeline.params.finetune import ClipAdapterParams, CoOpParams, TipAdapterFParams
from pipeline.text_tower import TextTower
from tests.test_adapters import FAST, vector_task

ALL = ("zeroshot", "coop", "coop_ship", "clip_adapter", "clip_adapter_ship", "tip_adapter_f", "tip_adapter_f_ship")
PARAMS = FAST.model_copy(
    update={
        "methods": ALL,
        "seeds": (1, 2),
        "coop": CoOpParams(epochs=3, batch_size=8, warmup_epochs=0, lr=1e-4),
        "clip_adapter": ClipAdapterParams(epochs=3, batch_size=8, warmup_epochs=0, lr=0.05),
        "tip_adapter_f": TipAdapterFParams(epochs=3, batch_size=8),
    }
)


@pytest.fixture(scope="module")
def results(tiny_tower: TextTower):
    foreign = vector_task(seed=7, n_classes=4)
    target = TransferTask("other", ClassSet(["w", "x", "y", "z"], foreign.text_classifier), foreign.test)
    return run_finetune(vector_task(), tiny_tower, PARAMS, [target], show_progress=False)


def test_run_table(results):
    runs = results.runs
    assert runs.columns == [
        "method",
        "seed",
        "base",
        "new",
        "hm",
        "joint_base",
        "joint_new",
        "joint_hm",
        "best_epoch",
        "val_acc",
    ]
    assert runs.height == len(ALL) * 2
    assert runs.select("method", "seed").rows() == [(m, s) for m in ALL for s in (1, 2)]
    for col in ("base", "new", "hm", "joint_base", "joint_new", "joint_hm"):
        assert runs[col].is_between(0.0, 100.0).all()
    assert runs["best_epoch"].is_between(0, 3).all()


def test_curves_table(results):
    curves = results.curves
    assert curves.columns == ["method", "seed", "epoch", "train_loss", "val_acc"]
    counts = dict(curves.group_by("method").len().iter_rows())
    assert counts == {m: 2 * (1 if m == "zeroshot" else 4) for m in ALL}  # epoch 0 + 3 epochs per seed
    assert curves.filter(curves["epoch"] == 0)["train_loss"].is_null().all()
    assert curves.filter(curves["epoch"] > 0)["train_loss"].is_not_null().all()


def test_per_class_table(results):
    table = results.per_class
    assert table.columns == ["method", "class", "classname", "split", "accuracy"]
    assert table.height == len(ALL) * 10  # one row per class and method, averaged over seeds
    zs = table.filter(table["method"] == "zeroshot").sort("class")
    assert zs["split"].to_list() == ["base"] * 5 + ["new"] * 5
    assert zs["classname"][0] == "class 0"


def test_metrics_dict(results):
    metrics = results.metrics_dict()
    assert list(metrics) == list(ALL)
    keys = {"base", "new", "hm", "base_std", "new_std", "hm_std", "joint_base", "joint_new", "joint_hm"}
    for m in metrics.values():
        assert set(m) == keys | {"transfer.other", "transfer.other_std", "transfer.average"}
        assert all(isinstance(v, float) and round(v, 2) == v for v in m.values())
    runs = results.runs.filter(results.runs["method"] == "clip_adapter")
    assert metrics["clip_adapter"]["base"] == round(runs["base"].mean(), 2)
    assert metrics["clip_adapter"]["base_std"] == round(runs["base"].std(), 2)
    assert metrics["zeroshot"]["base_std"] == 0.0
    # Tip-Adapter-F's cache does not apply to foreign classes: it transfers as zero-shot CLIP.
    assert metrics["tip_adapter_f_ship"]["transfer.other"] == metrics["zeroshot"]["transfer.other"]
    assert metrics["zeroshot"]["transfer.average"] == metrics["zeroshot"]["transfer.other"]
    assert results.transfer.columns == ["method", "seed", "dataset", "accuracy"]


def test_missing_synthetic_features_is_an_error_naming_the_method(tiny_tower: TextTower):
    task = replace(vector_task(), synthetic=None)
    params = FAST.model_copy(update={"methods": ("zeroshot", "coop_ship")})
    with pytest.raises(ValueError, match=r"coop_ship needs synthetic features"):
        run_finetune(task, tiny_tower, params, show_progress=False)
    plain = run_finetune(task, tiny_tower, FAST.model_copy(update={"methods": ("zeroshot",)}), show_progress=False)
    metrics = plain.metrics_dict()["zeroshot"]
    assert "base_std" not in metrics and "base" in metrics  # a single seed has no spread: left out, not null


def test_undefined_scores_are_left_out_of_the_metrics(tiny_tower: TextTower):
    task = vector_task()
    every_class = list(range(len(task.classnames)))
    all_labelled = replace(task, base=every_class, new=[], labeled=every_class, synthetic=None)
    params = FAST.model_copy(update={"methods": ("zeroshot",), "seeds": (1, 2)})
    metrics = run_finetune(all_labelled, tiny_tower, params, show_progress=False).metrics_dict()["zeroshot"]
    assert set(metrics) == {"base", "base_std", "joint_base"}
