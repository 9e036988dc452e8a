"""Stage `report`: aggregate every per-seed result of the current params into metrics, tables and plot data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.atomic_files import write_dir_atomic
from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from pipeline.report import render_base_to_new, render_cross_dataset, render_generator, render_gzsl
from pipeline.results import (
    aggregate_cross_dataset,
    aggregate_pairs,
    average_pairs,
    gather,
    generator_curve,
    generator_quality,
    mean_curves,
    rounded,
)

log = logging.getLogger(__name__)


def _dump(data: Any) -> str:
    return json.dumps(rounded(data), indent=2, allow_nan=False) + "\n"


def curve_files(layout: Layout, protocol: Protocol, dataset: str, seeds: list[int]) -> dict[str, str]:
    """One plot file per method: the validation curve averaged over seeds."""
    frames = mean_curves(layout, protocol, dataset, seeds).partition_by("method", as_dict=True)
    return {
        f"{protocol}-{dataset}-{method[0]}.csv": frame.drop("method").write_csv() for method, frame in frames.items()
    }


def run(params: Params, layout: Layout, out: Path) -> None:
    seeds = list(params.seeds)
    context = {
        "backbone": f"{params.backbone.model} ({params.backbone.pretrained})",
        "shots": params.fewshot.shots,
        "seeds": seeds,
        "select": params.finetune.select,
        "generator_select": {"val": "lowest validation loss", "last": "final epoch"}[params.generator.select],
    }
    metric_files: dict[str, str] = {}
    report_files: dict[str, str] = {}
    curves: dict[str, str] = {}
    losses: dict[str, str] = {}
    quality: dict[str, dict[str, Any]] = {}

    if params.base_to_new.datasets:
        per_dataset = {}
        for d in params.base_to_new.datasets:
            per_dataset[d] = aggregate_pairs(gather(layout, "base_to_new", d, seeds), "base_to_new")
            quality.setdefault("base_to_new", {})[d] = generator_quality(layout, "base_to_new", d, seeds)
            losses[f"base_to_new-{d}.csv"] = generator_curve(layout, "base_to_new", d, seeds).write_csv()
            curves |= curve_files(layout, "base_to_new", d, seeds)
        table = {"average": average_pairs(per_dataset, "base_to_new"), **per_dataset}
        metric_files["base_to_new.json"] = _dump(table)
        report_files["base_to_new.md"] = render_base_to_new(rounded(table), context)

    if params.cross_dataset.sources:
        table = {}
        for s in params.cross_dataset.sources:
            targets = {t: gather(layout, "cross_dataset", s, seeds, t) for t in params.cross_dataset.targets}
            table[s] = aggregate_cross_dataset(gather(layout, "cross_dataset", s, seeds), targets)
            losses[f"cross_dataset-{s}.csv"] = generator_curve(layout, "cross_dataset", s, seeds).write_csv()
            for t in params.cross_dataset.targets:
                quality.setdefault("cross_dataset", {})[f"{s}->{t}"] = generator_quality(
                    layout, "cross_dataset", s, seeds, t
                )
        metric_files["cross_dataset.json"] = _dump(table)
        report_files["cross_dataset.md"] = render_cross_dataset(rounded(table), params.cross_dataset.targets, context)

    if params.gzsl.datasets:
        table = {}
        for g in params.gzsl.datasets:
            table[g] = aggregate_pairs(gather(layout, "gzsl", g, seeds), "gzsl")
            quality.setdefault("gzsl", {})[g] = generator_quality(layout, "gzsl", g, seeds)
            losses[f"gzsl-{g}.csv"] = generator_curve(layout, "gzsl", g, seeds).write_csv()
            curves |= curve_files(layout, "gzsl", g, seeds)
        metric_files["gzsl.json"] = _dump(table)
        report_files["gzsl.md"] = render_gzsl(rounded(table), context)

    metric_files["generator.json"] = _dump(quality)
    report_files["generator.md"] = render_generator(rounded(quality))
    # One directory, replaced whole: a killed report never leaves a mix of old and new tables, metrics and plots.
    files = {
        **report_files,
        **{f"metrics/{k}": v for k, v in metric_files.items()},
        **{f"plots/val_acc/{k}": v for k, v in curves.items()},
        **{f"plots/generator_loss/{k}": v for k, v in losses.items()},
    }
    write_dir_atomic(out, files)
    for name, text in report_files.items():
        log.info("wrote %s", out / name)
        print(text)
