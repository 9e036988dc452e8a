"""Stage `report`: the Markdown table in the shape of the paper's Table 1, rendered from the metrics files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from pipeline.atomic_files import write_text_atomic
from pipeline.params import Params
from pipeline.report import render_table

log = logging.getLogger(__name__)


def run(params: Params, metrics: Path, generator_metrics: Path, results: Path, out: Path) -> None:
    finetune = json.loads(metrics.read_text())
    generator = json.loads(generator_metrics.read_text()) if generator_metrics.exists() else None
    seeds = pl.read_csv(results / "per_seed.csv")["seed"].n_unique()
    title = f"SHIP on {params.dataset.name} ({params.backbone.model}, {params.dataset.shots} shots)"
    table = render_table(finetune, generator, n_seeds=seeds, title=title)
    write_text_atomic(out / "table.md", table)
    log.info("wrote %s", out / "table.md")
    print(table)
