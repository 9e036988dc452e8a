"""Stage `extract`: encode every split of the dataset once with the frozen CLIP image encoder."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.backbone import load_backbone
from pipeline.datasets import load_dataset
from pipeline.datasets.fewshot import build_protocol_splits
from pipeline.extract import extract_features, plan_extraction
from pipeline.params import Params

log = logging.getLogger(__name__)


def run(params: Params, out: Path) -> None:
    backbone = load_backbone(params.backbone)  # first: unusable weights fail within seconds
    dataset = load_dataset(params.dataset)
    protocol = build_protocol_splits(dataset, params.dataset)
    plan = plan_extraction(dataset, protocol, params.dataset, params.extract, backbone)
    log.info(
        "extracting %s: %d classes; train %d images x (1 + %d views), val %d, test %d",
        dataset.name,
        len(dataset.classnames),
        len(protocol.train),
        params.extract.views,
        len(protocol.val),
        len(protocol.test),
    )
    path = extract_features(plan, backbone, params.extract, out)
    log.info("wrote %s", path)
