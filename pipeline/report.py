"""Render the paper-style tables from the aggregated metrics; nothing here is typed by hand except the paper's numbers.

- base-to-new: Table 1's shape, one row block per dataset (base / new / H per method) and the average over datasets;
- cross-dataset: source accuracy, each target, the average over targets;
- GZSL: unseen / seen / H per dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.layout import Layout, Protocol
from pipeline.params import Params
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

METHOD_LABELS = {
    "zeroshot": "Zero-shot CLIP",
    "coop": "CoOp",
    "coop_ship": "CoOp + SHIP",
    "clip_adapter": "CLIP-Adapter",
    "clip_adapter_ship": "CLIP-Adapter + SHIP",
    "tip_adapter_f": "Tip-Adapter-F",
    "tip_adapter_f_ship": "Tip-Adapter-F + SHIP",
    "gda": "GDA",
    "gda_ship": "GDA + SHIP",
    "kgcoop": "KgCoOp",
    "kgcoop_ship": "KgCoOp + SHIP",
    "taskres": "TaskRes",
    "taskres_ship": "TaskRes + SHIP",
}

# Oracle rows: the *_ship method trained on real few-shot features of the new classes (a diagnostic, not a method).
METHOD_LABELS |= {
    f"{m}_oracle": f"{label} (oracle: real new-class features)"
    for m, label in list(METHOD_LABELS.items())
    if m.endswith("_ship")
}

# SHIP paper (shared/reference/SHIP.md): Table 1, 11-dataset averages, ViT-B/16, 16 shots.
PAPER_BASE_TO_NEW = {
    "zeroshot": (69.34, 74.22, 71.70),
    "coop": (82.69, 63.22, 71.66),
    "coop_ship": (80.03, 73.69, 76.73),
    "clip_adapter": (83.05, 65.20, 73.05),
    "clip_adapter_ship": (83.14, 67.77, 74.67),
    "tip_adapter_f_ship": (83.80, 76.42, 79.94),
}
PAPER_CROSS_DATASET = {"zeroshot": 65.08, "coop": 63.88, "coop_ship": 65.69}  # ImageNet -> 10 targets, average
PAPER_GZSL = {  # unseen / seen / H
    "zeroshot": {"CUB": (55.2, 54.8, 55.0), "AWA2": (88.3, 93.1, 90.6), "FLO": (65.6, 67.9, 66.7)},
    "coop_ship": {"CUB": (55.3, 58.9, 57.1), "AWA2": (84.1, 94.4, 89.0), "FLO": (69.0, 76.3, 72.4)},
}


def _order(methods: Sequence[str]) -> list[str]:
    return [m for m in METHOD_LABELS if m in methods] + [m for m in methods if m not in METHOD_LABELS]


def _cell(stats: Mapping[str, Any], key: str) -> str:
    if key not in stats:
        return "–"
    std = stats.get(f"{key}_std")
    return f"{stats[key]:.2f} ± {std:.2f}" if std is not None else f"{stats[key]:.2f}"


def _header(context: Mapping[str, Any]) -> list[str]:
    selection = {
        "val": "the epoch with the best validation accuracy (never test)",
        "last": "the final epoch (as Dassl and SHIP's code)",
    }[context["select"]]
    return [
        f"Backbone `{context['backbone']}`; {context['shots']} shots; mean ± std over seeds {context['seeds']}; "
        f"model selection: {selection}; generator: {context['generator_select']}.",
        "",
    ]


def render_base_to_new(metrics: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    lines = ["# Base-to-new generalization", "", *_header(context)]
    lines += ["Base test images are scored against base class names only, new against new only; H = harmonic mean.", ""]
    average = metrics.get("average", {})
    blocks = [("Average over " + ", ".join(k for k in metrics if k != "average"), average, False)]
    blocks += [(name, table, True) for name, table in metrics.items() if name != "average"]
    for title, table, with_std in blocks:
        lines += [f"## {title}", "", "| Method | Base | New | H |", "|---|---|---|---|"]
        for m in _order(list(table)):
            s = table[m] if with_std else {k: v for k, v in table[m].items() if not k.endswith("_std")}
            lines.append(f"| {METHOD_LABELS.get(m, m)} | {_cell(s, 'base')} | {_cell(s, 'new')} | {_cell(s, 'hm')} |")
        lines.append("")
    lines += ["## For reference: the paper's 11-dataset averages (ViT-B/16, 16 shots; not these datasets)", ""]
    lines += ["| Method | Base | New | H |", "|---|---|---|---|"]
    for m, (b, n, h) in PAPER_BASE_TO_NEW.items():
        lines.append(f"| {METHOD_LABELS[m]} | {b:.2f} | {n:.2f} | {h:.2f} |")
    return "\n".join(lines) + "\n"


def render_cross_dataset(metrics: Mapping[str, Any], targets: Sequence[str], context: Mapping[str, Any]) -> str:
    lines = ["# Cross-dataset transfer", "", *_header(context)]
    lines += [
        "Every class of the source has few-shot images; a target's classes are label-only (SHIP synthesizes their "
        "features from the names). Each target's test images are scored against the target's classes.",
        "",
    ]
    for source, table in metrics.items():
        cols = ["source", *targets, "target_average"]
        lines += [f"## Source: {source}", "", "| Method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for m in _order(list(table)):
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(_cell(table[m], c) for c in cols) + " |")
        lines.append("")
    lines += ["For reference, the paper (ImageNet -> 10 datasets, average): "]
    lines += ["; ".join(f"{METHOD_LABELS[m]} {v:.2f}" for m, v in PAPER_CROSS_DATASET.items()) + "."]
    return "\n".join(lines) + "\n"


def render_gzsl(metrics: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    lines = ["# Generalized zero-shot learning", "", *_header(context)]
    lines += [
        "Seen and unseen test images are scored jointly against every class; U and S are per-class mean top-1 "
        "accuracies, H their harmonic mean.",
        "",
    ]
    for dataset, table in metrics.items():
        lines += [f"## {dataset}", "", "| Method | U | S | H |", "|---|---|---|---|"]
        for m in _order(list(table)):
            s = table[m]
            lines.append(
                f"| {METHOD_LABELS.get(m, m)} | {_cell(s, 'unseen')} | {_cell(s, 'seen')} | {_cell(s, 'hm')} |"
            )
        lines.append("")
    lines += ["For reference, the paper (ViT-B/16), U / S / H:", ""]
    for m, rows in PAPER_GZSL.items():
        lines.append(f"- {METHOD_LABELS[m]}: " + "; ".join(f"{d} {u} / {s} / {h}" for d, (u, s, h) in rows.items()))
    return "\n".join(lines) + "\n"


def render_generator(metrics: Mapping[str, Any]) -> str:
    lines = ["# Synthetic-feature quality", ""]
    lines += [
        "synthetic_zeroshot_acc: percent of synthetic features whose nearest zero-shot class (all classes) is their "
        "own; synthetic_real_cosine: mean cosine between a class's synthetic and real test features (described, "
        "never used for selection). Means over seeds.",
        "",
        "| Protocol | Dataset | " + " | ".join(_GENERATOR_KEYS) + " |",
        "|---|---|" + "---|" * len(_GENERATOR_KEYS),
    ]
    for protocol, table in metrics.items():
        for dataset, figures in table.items():
            cells = [f"{figures[k]:.2f}" if figures.get(k) is not None else "–" for k in _GENERATOR_KEYS]
            lines.append(f"| {protocol} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_GENERATOR_KEYS = ("synthetic_zeroshot_acc", "synthetic_zeroshot_acc_new_only", "synthetic_real_cosine", "chance_acc")


# --- the report stage's files -------------------------------------------------------------------------------------


def _dump(data: Any) -> str:
    return json.dumps(rounded(data), indent=2, allow_nan=False) + "\n"


def curve_files(layout: Layout, protocol: Protocol, dataset: str, seeds: list[int]) -> dict[str, str]:
    """One plot file per method: the validation curve averaged over seeds."""
    frames = mean_curves(layout, protocol, dataset, seeds).partition_by("method", as_dict=True)
    return {
        f"{protocol}-{dataset}-{method[0]}.csv": frame.drop("method").write_csv() for method, frame in frames.items()
    }


def build_report(params: Params, layout: Layout) -> dict[str, str]:
    """Every file of the report directory (relative path -> text) for the experiments the params name."""
    seeds = list(params.seeds)
    context = {
        "backbone": f"{params.backbone.model} ({params.backbone.pretrained})",
        "shots": params.fewshot.shots,
        "seeds": seeds,
        "select": params.finetune.select,
        "generator_select": {"val": "lowest validation loss", "last": "final epoch"}[params.generator.select],
    }
    metrics: dict[str, str] = {}
    tables: dict[str, str] = {}
    curves: dict[str, str] = {}
    losses: dict[str, str] = {}
    quality: dict[str, dict[str, Any]] = {}

    # Base-to-new and GZSL: a (base, new) or (seen, unseen) pair per dataset and seed.
    renderers = {"base_to_new": render_base_to_new, "gzsl": render_gzsl}
    for protocol, datasets in (("base_to_new", params.base_to_new.datasets), ("gzsl", params.gzsl.datasets)):
        if not datasets:
            continue
        table: dict[str, Any] = {}
        for d in datasets:
            table[d] = aggregate_pairs(gather(layout, protocol, d, seeds), protocol)
            quality.setdefault(protocol, {})[d] = generator_quality(layout, protocol, d, seeds)
            losses[f"{protocol}-{d}.csv"] = generator_curve(layout, protocol, d, seeds).write_csv()
            curves |= curve_files(layout, protocol, d, seeds)
        if protocol == "base_to_new":
            table = {"average": average_pairs(table, protocol), **table}
        metrics[f"{protocol}.json"] = _dump(table)
        tables[f"{protocol}.md"] = renderers[protocol](rounded(table), context)

    if params.cross_dataset.sources:
        targets = params.cross_dataset.targets
        table = {}
        for s in params.cross_dataset.sources:
            per_target = {t: gather(layout, "cross_dataset", s, seeds, t) for t in targets}
            table[s] = aggregate_cross_dataset(gather(layout, "cross_dataset", s, seeds), per_target)
            losses[f"cross_dataset-{s}.csv"] = generator_curve(layout, "cross_dataset", s, seeds).write_csv()
            for t in targets:
                quality.setdefault("cross_dataset", {})[f"{s}->{t}"] = generator_quality(
                    layout, "cross_dataset", s, seeds, t
                )
        metrics["cross_dataset.json"] = _dump(table)
        tables["cross_dataset.md"] = render_cross_dataset(rounded(table), targets, context)

    metrics["generator.json"] = _dump(quality)
    tables["generator.md"] = render_generator(rounded(quality))
    return {
        **tables,
        **{f"metrics/{k}": v for k, v in metrics.items()},
        **{f"plots/val_acc/{k}": v for k, v in curves.items()},
        **{f"plots/generator_loss/{k}": v for k, v in losses.items()},
    }
