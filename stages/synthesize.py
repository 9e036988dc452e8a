"""Stage `*_synthesize`: features for every label-only class from one seed's generator, and their quality."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.layout import GENERATOR_QUALITY, PROJECTION, Layout, Protocol
from pipeline.params import Params
from stages.command import (
    DatasetName,
    Debug,
    Overrides,
    ParamsPath,
    ProtocolOption,
    Seed,
    Target,
    WorkDir,
    check_seed,
    load,
    run_step,
    stage_app,
)

log = logging.getLogger(__name__)


def run(params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout) -> None:
    from pipeline.atomic_files import write_dir_atomic
    from pipeline.backbone import load_backbone
    from pipeline.feature_store import FeatureStore, write_small_store
    from pipeline.generator import ShipGenerator
    from pipeline.synthesis import describe_synthetic, projection_frame, synthesize_features
    from pipeline.tasks import label_only_classes

    if protocol == "cross_dataset" and target is None:
        raise ValueError("cross-dataset synthesis needs --target")
    backbone = load_backbone(params.backbone)
    identity = backbone.identity()
    model = ShipGenerator.load(
        layout.generator(protocol, dataset, seed), backbone.text_tower(), expect_backbone=backbone.key
    )
    # The label-only classes: cross-dataset, every class of the target (the source's generator decodes its names).
    names = FeatureStore.open(layout.eval_store(target or dataset), identity, kind="eval")
    label_only = label_only_classes(names, protocol)
    if protocol == "cross_dataset":
        model.set_classnames(names.classnames)
    synthetic = synthesize_features(model, label_only, params.synthesize.per_class, seed, params.synthesize.batch_size)
    meta = {
        "kind": "synthetic",
        "backbone": identity,
        "classnames": names.classnames,  # labels index these (the target's, for cross-dataset)
        "classes": label_only,
        "per_class": params.synthesize.per_class,
        "seed": seed,
    }
    write_small_store(layout.synthetic(protocol, dataset, seed, target), {"synthetic": synthetic}, meta)
    real = names.split("test").of_classes(label_only)
    quality = describe_synthetic(synthetic, names.classifier(), label_only, real)
    files = {
        GENERATOR_QUALITY: json.dumps(quality, indent=2),
        PROJECTION: projection_frame(synthetic, real, names.classnames).write_csv(),  # the report's PCA figure
    }
    write_dir_atomic(layout.synthesis_results(protocol, dataset, seed, target), files)
    log.info("synthesized %d features for %d classes: %s", len(synthetic), len(label_only), quality)


def synthesize(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    target: Target = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Synthesize features for every label-only class (z ~ N(0, I), seeded) and describe their quality: the new
    classes (base_to_new), the unseen classes (gzsl), or the target's classes (cross_dataset with --target)."""
    p = load(params, overrides)
    check_seed(p, seed)
    run_step(lambda: run(p, protocol.value, dataset, seed, target, Layout(workdir)), debug)


if __name__ == "__main__":
    stage_app(synthesize)()
