"""Render the paper-style tables from the aggregated metrics; nothing here is typed by hand except the paper's numbers.

- base-to-new: Table 1's shape, one row block per dataset (base / new / H per method) and the average over datasets;
- cross-dataset: source accuracy, each target, the average over targets;
- GZSL: unseen / seen / H per dataset;
- claims: each claim's difference, 95% interval and verdict (pipeline/claims.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.claims import FAMILY_TITLES, ClaimResult

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


# --- claims with intervals (pipeline/claims.py) ------------------------------------------------------------------

_CLAIM_METRICS = {
    ("b2n", "new"): "new, average over datasets",
    ("b2n", "H"): "H of the dataset-averaged base and new",
    ("xd", "target_avg"): "target average",
    ("gzsl", "H"): "H (per dataset; mean over datasets)",
}


_HOW_INTERVALS = (
    "A paired two-way bootstrap, {resamples} replicates from numpy's default generator seeded with {seed} "
    "and the family's and the two methods' names (the same results always give the same interval). Each "
    "replicate (1) draws as many seeds as ran, with replacement, one draw for the whole family (a seed's "
    "chains on different datasets may share state: a cross-dataset source fit is scored on every target); "
    "(2) draws, per dataset and split, as many test images as the split has, with replacement, one draw "
    "shared by every seed and by both methods (the test images are the same for every seed, so their "
    "sampling error must not average out over seeds); GZSL draws per class, since its accuracy is the "
    "mean of per-class accuracies, and recomputes each class's accuracy; (3) recomputes both methods' "
    "accuracies per seed on the drawn images, their means over the drawn seeds, and the claim's whole "
    "metric from those (e.g. the H of the dataset-averaged base and new accuracies), then A − B. The "
    "interval is the 2.5th to 97.5th percentile of the replicates' differences; A − B itself is the "
    "difference of the published numbers. For top-1 accuracy a draw of images only matters through how "
    "many drawn images fall in each right/wrong pattern across seeds and the two methods, so those counts "
    "are drawn from that multinomial directly (the same distribution as drawing image indices). Verdict: "
    "**holds** when the interval lies entirely on the claim's side of zero, **fails** when entirely on "
    "the other side, **inconclusive** otherwise. 'Seeds only': the results hold no per-image predictions "
    "(`predictions.parquet`; results written before the finetune stage recorded them), so step 2 is "
    "skipped and the interval reflects the spread over seeds alone; with 3 seeds that has at most 10 "
    "distinct values and understates the uncertainty. With a single seed and no per-image predictions "
    "there is no interval."
)


def render_claims(
    results: Mapping[str, Sequence[ClaimResult]], context: Mapping[str, Any], resamples: int, seed: int
) -> str:
    """claims.md: per family, each claim's two numbers, their difference, its 95% interval and the verdict, then how
    the interval is computed."""
    lines = ["# Claims, with 95% intervals", "", *_header(context)]
    if not any(results.values()):
        lines += [
            "No claim applies: no `X_ship` ran beside its `X`, and CoOp / Tip-Adapter-F + SHIP did not run beside",
            "zero-shot CLIP.",
            "",
        ]
    for family, rows in results.items():
        if not rows:
            continue
        lines += [
            f"## {FAMILY_TITLES[family][0].upper()}{FAMILY_TITLES[family][1:]}",
            "",
            "| Claim | Metric | A | B | A − B | 95% interval | Resampled | Verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            c = r.claim
            a, b = METHOD_LABELS.get(c.a, c.a), METHOD_LABELS.get(c.b, c.b)
            claim = f"{a} {'>' if c.higher else '<'} {b}" + {
                "premise": " (the premise)",
                "oracle": " (oracle: a bound, not a method)",
            }.get(c.kind, "")
            interval = "–" if math.isnan(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}]"
            lines.append(
                f"| {claim} | {_CLAIM_METRICS.get((family, c.metric), c.metric)} | {r.a_value:.2f} | {r.b_value:.2f} "
                f"| {r.difference:+.2f} | {interval} | {'seeds × images' if r.per_image else 'seeds only'} "
                f"| **{r.verdict}** |"
            )
        lines.append("")
    lines += [
        "## How the interval is computed",
        "",
        _HOW_INTERVALS.format(resamples=resamples, seed=seed),
        "",
    ]
    return "\n".join(lines)
