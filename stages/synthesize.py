"""Stage `synthesize`: features for every label-only class from the trained generator, and their quality."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.atomic_files import write_text_atomic
from pipeline.backbone import load_backbone
from pipeline.feature_store import FeatureStore, write_small_store
from pipeline.generator import ShipGenerator
from pipeline.params import Params
from pipeline.synthesis import synthesize_features, synthetic_real_cosine, synthetic_zeroshot_accuracy

log = logging.getLogger(__name__)


def run(params: Params, features: Path, generator: Path, out: Path, metrics: Path) -> None:
    backbone = load_backbone(params.backbone)
    store = FeatureStore.open(features, backbone.identity())
    model = ShipGenerator.load(generator, backbone.text_tower(), expect_backbone=backbone.key)
    labeled = set(store.meta["labeled_classes"])
    label_only = [c for c in range(len(store.classnames)) if c not in labeled]
    if not label_only:
        log.warning("every class has labelled images (dataset.labeled_classes=all): nothing to synthesize")
    synthetic = synthesize_features(
        model, label_only, params.synthesize.per_class, params.synthesize.seed, params.synthesize.batch_size
    )
    write_small_store(
        out,
        {
            "synthetic/features": synthetic.features.numpy().astype(np.float16),
            "synthetic/labels": synthetic.labels.numpy(),
            "synthetic/valid": np.ones(len(synthetic), dtype=bool),
        },
        {
            "backbone": backbone.identity(),
            "classnames": store.classnames,
            "classes": label_only,
            "per_class": params.synthesize.per_class,
            "seed": params.synthesize.seed,
            "features_store": str(features),
        },
    )
    classifier = store.text_classifier()
    # Label-only classes have real images only in the test split: used here to *describe* the synthetic
    # features, never to select or tune anything.
    real = store.split("test").of_classes(label_only)
    quality = {
        "synthetic_zeroshot_acc": synthetic_zeroshot_accuracy(synthetic, classifier),
        "synthetic_zeroshot_acc_new_only": synthetic_zeroshot_accuracy(synthetic, classifier, label_only),
        "synthetic_real_cosine": synthetic_real_cosine(synthetic, real),
        "chance_acc": 100.0 / len(store.classnames),
    }
    quality = {k: round(float(v), 4) for k, v in quality.items()}
    write_text_atomic(metrics, json.dumps({"generator": quality}, indent=2) + "\n")
    log.info("synthesized %d features for %d classes: %s", len(synthetic), len(label_only), quality)
