"""Stage `demo_backbone`: pre-train the demo CLIP on the demo's web domain, when the params use it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.atomic_files import replace_dir
from pipeline.demo.pretrain import pretrain_backbone
from pipeline.params import Params
from stages.demo_world import demo_backbone_in_use, write_marker

log = logging.getLogger(__name__)


def run(params: Params, world: Path, out: Path) -> None:
    if not demo_backbone_in_use(params, out):
        log.info("demo backbone not needed: backbone.pretrained=%s", params.backbone.pretrained)
        write_marker(out, f"not trained: backbone.pretrained={params.backbone.pretrained} (real weights)")
        return
    checkpoint = Path(params.backbone.pretrained)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    figures = pretrain_backbone(params.demo.backbone, world, tmp / checkpoint.name)
    (tmp / "pretrain_report.json").write_text(json.dumps(figures, indent=2) + "\n")
    replace_dir(tmp, out)
    log.info("demo backbone written to %s: %s", checkpoint, figures)
