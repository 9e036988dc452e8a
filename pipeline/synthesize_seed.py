"""One seed's synthetic features for every label-only class, from the stores and the generator on disk, and the
figures that describe them."""

from __future__ import annotations

import json
import logging

from pipeline.atomic_files import write_dir_atomic
from pipeline.backbone import load_backbone
from pipeline.feature_store import FeatureStore, write_small_store
from pipeline.generator import ShipGenerator
from pipeline.layout import GENERATOR_QUALITY, PROJECTION, Layout, Protocol
from pipeline.params import Params
from pipeline.synthesis import describe_synthetic, projection_frame, synthesize_features
from pipeline.tasks import label_only_classes

log = logging.getLogger(__name__)


def synthesize_seed(
    params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout
) -> None:
    """Write the synthetic store (the label-only classes of `dataset`, or every class of a cross-dataset `target`)
    and its quality figures (quality.json, and the 2-D projection the report draws)."""
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
