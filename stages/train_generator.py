"""Stage `train_generator`: fit SHIP's generator on cached features (no image encoder in the loop)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.atomic_files import write_text_atomic
from pipeline.backbone import load_backbone
from pipeline.feature_store import FeatureStore
from pipeline.generator_training import train_generator
from pipeline.params import Params

log = logging.getLogger(__name__)


def run(params: Params, features: Path, out: Path, curve: Path) -> None:
    backbone = load_backbone(params.backbone)
    store = FeatureStore.open(features, backbone.identity())
    task = store.task_features()
    outcome = train_generator(
        task.train, task.val, task.classnames, backbone.text_tower(), params.generator, backbone.device
    )
    outcome.model.save(out, backbone=backbone.key)
    # Wall-clock seconds stay in the log: a tracked plot must be the same for the same params and seed.
    write_text_atomic(curve, pl.DataFrame(outcome.history).drop("seconds", strict=False).write_csv())
    log.info(
        "generator: best epoch %d (val loss %.4f), %.1f steps/s; wrote %s",
        outcome.best_epoch,
        outcome.best_val_loss,
        outcome.steps_per_second,
        out,
    )
