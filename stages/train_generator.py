"""Stage `*_generator`: fit one seed's SHIP generator on cached features (no image encoder in the loop)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.layout import GENERATOR_CURVE, Layout, Protocol
from pipeline.params import Params
from stages.command import (
    DatasetName,
    Debug,
    Overrides,
    ParamsPath,
    ProtocolOption,
    Seed,
    WorkDir,
    check_seed,
    load,
    run_step,
    stage_app,
)

log = logging.getLogger(__name__)


def run(params: Params, protocol: Protocol, dataset: str, seed: int, layout: Layout) -> None:
    import polars as pl

    from pipeline.atomic_files import write_dir_atomic
    from pipeline.backbone import load_backbone
    from pipeline.feature_store import FeatureStore
    from pipeline.generator_training import train_generator as fit

    backbone = load_backbone(params.backbone)
    store = FeatureStore.open(layout.train_store(protocol, dataset, seed), backbone.identity(), kind="train")
    settings = params.for_dataset(dataset).generator
    train, val = store.split("train"), store.split("val")
    outcome = fit(train, val, store.classnames, backbone.text_tower(), settings, backbone.device, seed=seed)
    out = layout.generator(protocol, dataset, seed)
    outcome.model.save(out, backbone=backbone.key)
    # Wall-clock seconds stay in the log: a tracked curve must be the same for the same params and seed.
    curve = pl.DataFrame(outcome.history).drop("seconds", strict=False)
    write_dir_atomic(layout.generator_results(protocol, dataset, seed), {GENERATOR_CURVE: curve.write_csv()})
    log.info("generator: kept epoch %d (val loss %.4f); wrote %s", outcome.best_epoch, outcome.best_val_loss, out)


def train_generator(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Train one seed's SHIP generator (a VAE whose decoder is CLIP's frozen text tower) on cached features only.
    It keeps the epoch with the lowest validation loss (generator.select=val) or the last one."""
    p = load(params, overrides)
    check_seed(p, seed)
    run_step(lambda: run(p, protocol.value, dataset, seed, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(train_generator)()
