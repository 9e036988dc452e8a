"""Stage `finetune`: every method x seed on cached (and synthetic) features; metrics, curves, per-class scores."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import polars as pl

from pipeline.adapters.base import ClassSet
from pipeline.atomic_files import write_text_atomic
from pipeline.backbone import load_backbone
from pipeline.evaluation import TransferTask
from pipeline.feature_store import FeatureStore, StoreError
from pipeline.finetune import run_finetune
from pipeline.params import Params

log = logging.getLogger(__name__)


def _transfer_tasks(paths: tuple[str, ...], backbone: dict) -> list[TransferTask]:
    tasks = []
    for path in paths:
        store = FeatureStore.open(path, backbone)
        classes = ClassSet(store.classnames, store.text_classifier())
        tasks.append(TransferTask(store.meta["dataset"]["name"], classes, store.split("test")))
    return tasks


def _write_plot_dir(directory: Path, frames: dict[str, pl.DataFrame]) -> None:
    """One CSV per method, so `dvc plots` draws one series per method."""
    if directory.exists():
        shutil.rmtree(directory)
    for method, frame in frames.items():
        write_text_atomic(directory / f"{method}.csv", frame.write_csv())


def run(params: Params, features: Path, synthetic: Path, results: Path, metrics: Path, plots: Path) -> None:
    backbone = load_backbone(params.backbone)
    identity = backbone.identity()
    store = FeatureStore.open(features, identity)
    synthetic_features = None
    if any(m.endswith("_ship") for m in params.finetune.methods):
        syn = FeatureStore.open(synthetic, identity)
        if syn.classnames != store.classnames:
            raise StoreError(
                f"synthetic store {synthetic} was made for other classes than {features}; rerun synthesize"
            )
        synthetic_features = syn.split("synthetic")
    task = store.task_features(synthetic_features)
    outcome = run_finetune(
        task, backbone.text_tower(), params.finetune, _transfer_tasks(params.finetune.transfer_stores, identity)
    )

    write_text_atomic(results / "per_seed.csv", outcome.runs.write_csv())
    write_text_atomic(results / "curves.csv", outcome.curves.write_csv())
    write_text_atomic(results / "per_class.csv", outcome.per_class.write_csv())
    if len(outcome.transfer):
        write_text_atomic(results / "transfer.csv", outcome.transfer.write_csv())
    mean_curves = (
        outcome.curves.group_by("method", "epoch", maintain_order=True)
        .agg(pl.col("val_acc").mean(), pl.col("train_loss").mean())
        .sort("method", "epoch")
    )
    _write_plot_dir(
        plots / "finetune_val_acc",
        {m: mean_curves.filter(pl.col("method") == m).drop("method") for m in params.finetune.methods},
    )
    _write_plot_dir(
        plots / "per_class_acc",
        {m: outcome.per_class.filter(pl.col("method") == m).drop("method") for m in params.finetune.methods},
    )
    summary = outcome.metrics_dict()
    write_text_atomic(metrics, json.dumps(summary, indent=2) + "\n")
    for method, m in summary.items():
        log.info("%-20s base %6s  new %6s  H %6s", method, m.get("base"), m.get("new"), m.get("hm"))
