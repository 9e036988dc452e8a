"""Stage `demo_backbone`: pre-train the demo CLIP on the web domain of all demo datasets, when the params use it.

Its metrics file holds the timings and each demo dataset's zero-shot top-1 on its benchmark test split
(`demo_backbone.zero_shot.<dataset>.{base,new,hm}` for base-to-new, `{seen,unseen,h}` for GZSL).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.atomic_files import replace_dir, write_text_atomic
from pipeline.demo.pretrain import pretrain_backbone
from pipeline.params import Params
from stages.demo_world import demo_backbone_in_use, write_marker

log = logging.getLogger(__name__)


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 4) for k, v in figures.items()}


def run(params: Params, world: Path, out: Path, metrics: Path) -> None:
    if not demo_backbone_in_use(params, out):
        log.info("demo backbone not needed: backbone.pretrained=%s", params.backbone.pretrained)
        write_marker(out, f"not trained: backbone.pretrained={params.backbone.pretrained} (real weights)")
        write_text_atomic(metrics, json.dumps({"demo_backbone": {"trained": False}}, indent=2) + "\n")
        return
    checkpoint = Path(params.backbone.pretrained)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    figures = pretrain_backbone(params.demo.backbone, world, tmp / checkpoint.name)
    replace_dir(tmp, out)
    # Timings vary run to run, so they live in a metrics file, not next to the (cached) checkpoint.
    figures = {"trained": True, **_rounded(figures)}
    write_text_atomic(metrics, json.dumps({"demo_backbone": figures}, indent=2) + "\n")
    log.info("demo backbone written to %s: %s", checkpoint, figures)
