"""Stages `extract_eval`, `b2n_extract`, `xd_extract`, `gzsl_extract`: encode images once with the frozen encoder.

Each stage runs as one process, or as several ranks of one job (`torchrun ... ship extract-*`, or
`ship extract-* --nproc N`): every rank loads the backbone on its own device and encodes its share of the blocks;
the store is the same as one process makes (see pipeline/extract.py, pipeline/ranks.py)."""

from __future__ import annotations

import logging

from pipeline.backbone import load_backbone
from pipeline.extract import extract_features
from pipeline.extraction_plans import eval_plan, fewshot_plan, gzsl_train_plan
from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from pipeline.ranks import rank_context

log = logging.getLogger(__name__)


def run_eval(params: Params, dataset: str, layout: Layout) -> None:
    with rank_context(params.backbone.device) as (ranks, device):
        backbone = load_backbone(params.backbone, device)  # first: unusable weights fail within seconds
        plan = eval_plan(params, dataset)
        if ranks.main:
            log.info(
                "extracting %s test split: %d images, classifiers %s",
                dataset,
                len(plan.splits[0].records),
                plan.classifiers,
            )
        store = layout.eval_store(dataset)
        path = extract_features(
            plan, backbone, params.for_dataset(dataset).extract, store, progress=ranks.main, ranks=ranks
        )
        if ranks.main:
            log.info("wrote %s", path)


def run_train(params: Params, protocol: Protocol, dataset: str, seed: int, layout: Layout) -> None:
    with rank_context(params.backbone.device) as (ranks, device):
        backbone = load_backbone(params.backbone, device)
        if protocol == "gzsl":
            plan = gzsl_train_plan(params, dataset)
        else:
            plan = fewshot_plan(params, dataset, seed, "base" if protocol == "base_to_new" else "all")
        train, val = plan.splits
        if ranks.main:
            log.info(
                "extracting %s (%s, seed %d): train %d images x (1 + %d views), val %d",
                dataset,
                protocol,
                seed,
                len(train.records),
                train.views,
                len(val.records),
            )
        store = layout.train_store(protocol, dataset, seed)
        path = extract_features(plan, backbone, params.extract, store, progress=ranks.main, ranks=ranks)
        if ranks.main:
            log.info("wrote %s", path)
