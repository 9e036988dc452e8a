"""Render the paper-style tables from the metrics files; nothing here is typed by hand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METHOD_LABELS = {
    "zeroshot": "Zero-shot CLIP",
    "coop": "CoOp",
    "coop_ship": "CoOp + SHIP",
    "clip_adapter": "CLIP-Adapter",
    "clip_adapter_ship": "CLIP-Adapter + SHIP",
    "tip_adapter_f": "Tip-Adapter-F",
    "tip_adapter_f_ship": "Tip-Adapter-F + SHIP",
}

# SHIP paper, Table 1: 11-dataset averages, ViT-B/16, 16 shots (see shared/reference/SHIP.md).
PAPER_BASE_TO_NEW = {
    "zeroshot": (69.34, 74.22, 71.70),
    "coop": (82.69, 63.22, 71.66),
    "coop_ship": (80.03, 73.69, 76.73),
    "clip_adapter": (83.05, 65.20, 73.05),
    "clip_adapter_ship": (83.14, 67.77, 74.67),
    "tip_adapter_f_ship": (83.80, 76.42, 79.94),
}


def _cell(stats: Mapping[str, Any], key: str) -> str:
    if key not in stats:
        return "–"
    std = stats.get(f"{key}_std")
    return f"{stats[key]:.2f} ± {std:.2f}" if std is not None else f"{stats[key]:.2f}"


def render_table(
    metrics: Mapping[str, Mapping[str, Any]],
    generator_metrics: Mapping[str, Any] | None = None,
    n_seeds: int | None = None,
    title: str = "Base-to-new generalization",
) -> str:
    methods = [m for m in METHOD_LABELS if m in metrics] + [m for m in metrics if m not in METHOD_LABELS]
    seeds = f" (mean ± std over {n_seeds} seeds)" if n_seeds else ""
    lines = [f"# {title}", "", f"## Base-to-new: base test vs base names, new test vs new names{seeds}", ""]
    lines += ["| Method | Base | New | H |", "|---|---|---|---|"]
    for m in methods:
        s = metrics[m]
        lines.append(f"| {METHOD_LABELS.get(m, m)} | {_cell(s, 'base')} | {_cell(s, 'new')} | {_cell(s, 'hm')} |")
    if any("joint_hm" in metrics[m] for m in methods):
        lines += ["", "## Joint label space: all test images vs all class names", ""]
        lines += ["| Method | Base | New | H |", "|---|---|---|---|"]
        for m in methods:
            s = metrics[m]
            lines.append(
                f"| {METHOD_LABELS.get(m, m)} | {_cell(s, 'joint_base')} | {_cell(s, 'joint_new')} | "
                f"{_cell(s, 'joint_hm')} |"
            )
    transfer = sorted({k for m in methods for k in metrics[m] if k.startswith("transfer.") and "_std" not in k})
    if transfer:
        lines += ["", "## Cross-dataset transfer (test accuracy on other datasets)", ""]
        lines += ["| Method | " + " | ".join(k.removeprefix("transfer.") for k in transfer) + " |"]
        lines += ["|---|" + "---|" * len(transfer)]
        for m in methods:
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(_cell(metrics[m], k) for k in transfer) + " |")
    if generator_metrics:
        lines += ["", "## Generator quality", "", "| Metric | Value |", "|---|---|"]
        for key, value in sorted(_flatten(generator_metrics).items()):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "## For reference: the paper's 11-dataset averages (ViT-B/16, 16 shots; not this dataset)", ""]
    lines += ["| Method | Base | New | H |", "|---|---|---|---|"]
    for m, (b, n, h) in PAPER_BASE_TO_NEW.items():
        lines.append(f"| {METHOD_LABELS[m]} | {b:.2f} | {n:.2f} | {h:.2f} |")
    return "\n".join(lines) + "\n"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
