"""Stage `*_synthesize`: features for every label-only class from one seed's generator, and their quality."""

from __future__ import annotations

import json
import logging

from pipeline.atomic_files import write_dir_atomic
from pipeline.backbone import load_backbone
from pipeline.feature_store import FeatureStore, write_small_store
from pipeline.generator import ShipGenerator
from pipeline.layout import GENERATOR_QUALITY, Layout, Protocol
from pipeline.params import Params
from pipeline.synthesis import synthesize_features, synthetic_real_cosine, synthetic_zeroshot_accuracy

log = logging.getLogger(__name__)


def run(params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout) -> None:
    backbone = load_backbone(params.backbone)
    identity = backbone.identity()
    model = ShipGenerator.load(
        layout.generator(protocol, dataset, seed), backbone.text_tower(), expect_backbone=backbone.key
    )
    if protocol == "cross_dataset":
        if target is None:
            raise ValueError("cross-dataset synthesis needs --target")
        # Every class of the target is label-only; the source's generator decodes the target's names.
        names = FeatureStore.open(layout.eval_store(target), identity, kind="eval")
        label_only = list(range(len(names.classnames)))
        model.tower.check_prompts_fit(names.classnames, model.config.prompt_length, "generator.prompt_length")
        model.set_classnames(names.classnames)
    else:
        names = FeatureStore.open(layout.eval_store(dataset), identity, kind="eval")
        label_only = list(names.meta["new" if protocol == "base_to_new" else "unseen"])
    synthetic = synthesize_features(model, label_only, params.synthesize.per_class, seed, params.synthesize.batch_size)
    write_small_store(
        layout.synthetic(protocol, dataset, seed, target),
        {"synthetic": synthetic},
        {
            "kind": "synthetic",
            "backbone": identity,
            "classnames": names.classnames,  # labels index these (the target's, for cross-dataset)
            "classes": label_only,
            "per_class": params.synthesize.per_class,
            "seed": seed,
        },
    )
    classifier = names.classifier()
    # Label-only classes have real images only in the test split: used here to *describe* the synthetic features,
    # never to select or tune anything.
    real = names.split("test").of_classes(label_only)
    quality = {
        "synthetic_zeroshot_acc": synthetic_zeroshot_accuracy(synthetic, classifier),
        "synthetic_zeroshot_acc_new_only": synthetic_zeroshot_accuracy(synthetic, classifier, label_only),
        "synthetic_real_cosine": synthetic_real_cosine(synthetic, real),
        "chance_acc": 100.0 / len(names.classnames),
    }
    quality = {k: round(float(v), 4) for k, v in quality.items()}
    write_dir_atomic(
        layout.synthesis_results(protocol, dataset, seed, target), {GENERATOR_QUALITY: json.dumps(quality, indent=2)}
    )
    log.info("synthesized %d features for %d classes: %s", len(synthetic), len(label_only), quality)
