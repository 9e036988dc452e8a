"""Stage `*_generator`: fit SHIP's generator on one seed's cached features (no image encoder in the loop)."""

from __future__ import annotations

import logging

import polars as pl

from pipeline.atomic_files import write_dir_atomic
from pipeline.backbone import load_backbone
from pipeline.feature_store import FeatureStore
from pipeline.generator_training import train_generator
from pipeline.layout import GENERATOR_CURVE, Layout, Protocol
from pipeline.params import Params

log = logging.getLogger(__name__)


def run(params: Params, protocol: Protocol, dataset: str, seed: int, layout: Layout) -> None:
    p = params.for_dataset(dataset)
    backbone = load_backbone(params.backbone)
    store = FeatureStore.open(layout.train_store(protocol, dataset, seed), backbone.identity(), kind="train")
    tower = backbone.text_tower()
    tower.check_prompts_fit(store.classnames, p.generator.prompt_length, "generator.prompt_length")
    outcome = train_generator(
        store.split("train"),
        store.split("val"),
        store.classnames,
        tower,
        p.generator,
        backbone.device,
        seed=seed,
    )
    out = layout.generator(protocol, dataset, seed)
    outcome.model.save(out, backbone=backbone.key)
    # Wall-clock seconds stay in the log: a tracked curve must be the same for the same params and seed.
    curve = pl.DataFrame(outcome.history).drop("seconds", strict=False)
    write_dir_atomic(layout.generator_results(protocol, dataset, seed), {GENERATOR_CURVE: curve.write_csv()})
    log.info(
        "generator: kept epoch %d (val loss %.4f), %.1f steps/s; wrote %s",
        outcome.best_epoch,
        outcome.best_val_loss,
        outcome.steps_per_second,
        out,
    )
