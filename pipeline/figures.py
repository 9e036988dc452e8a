"""The report's figures, rendered with matplotlib to PNG bytes that depend on the inputs only.

- per experiment family: grouped bars of each method's numbers (base / new / H, the target average, U / S / H) with
  95% bootstrap intervals, and beside them the claims' differences with their intervals (pipeline/claims.py);
- per generator: the training and validation loss per epoch, reconstruction and KL apart;
- one dataset's 2-D PCA of real and synthetic features of a few label-only classes (`projection.csv`).

Determinism: the Agg renderer on a `Figure` of its own (no pyplot state), matplotlib's default style whatever the
user's matplotlibrc says, a fixed size and dpi, and no "Software"/date metadata in the file; SVG ids are salted with a
constant in case a figure is ever saved as SVG. Bytes then depend on the data, matplotlib's version and the fonts.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.claims import FAMILY_TITLES, ClaimResult, Family

DPI = 110
METRIC_LABELS = {"base": "base", "new": "new", "H": "H", "target_avg": "target average", "U": "U", "S": "S"}
VERDICT_COLOURS = {"holds": "#2a7d3f", "fails": "#b3261e", "inconclusive": "#7a7a7a"}
_COLOUR_NAMES = {"holds": "green", "fails": "red", "inconclusive": "grey"}  # the claims panel's title says it
_STYLE = {
    "svg.hashsalt": "ship-report",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # not the user's matplotlibrc: the same bytes on every machine with these versions
        matplotlib.rcParams.update(_STYLE)
        yield


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _label(method: str, labels: Mapping[str, str]) -> str:
    return labels.get(method, method)


def family_figure(
    family: Family,
    levels: Mapping[str, Mapping[str, tuple[float, float, float]]],
    claims: Sequence[ClaimResult],
    labels: Mapping[str, str],
    note: str = "",
) -> bytes:
    """Grouped bars: one group per method, one bar per number of the family's table, 95% intervals as error bars;
    beside them, each claim's difference (a - b) with its 95% interval, coloured by verdict."""
    methods = list(levels)
    metrics = list(next(iter(levels.values()))) if levels else []
    with _style():
        # The bars on top, the claims below: both grow downwards or sideways with the methods, never squeezed.
        width = max(8.0, 1.5 + 0.8 * len(methods) * max(len(metrics), 1) ** 0.5)
        bars_height, claims_height = 3.6, 0.9 + 0.45 * len(claims)
        fig = Figure(figsize=(width, bars_height + (claims_height if claims else 0.0)), layout="constrained")
        ratios = [bars_height, claims_height] if claims else [bars_height]
        grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios)
        ax = fig.add_subplot(grid[0, 0])
        bar = 0.8 / max(len(metrics), 1)
        colours = matplotlib.colormaps["tab10"]
        for j, metric in enumerate(metrics):
            xs = [i + (j - (len(metrics) - 1) / 2) * bar for i in range(len(methods))]
            values = [levels[m][metric][0] for m in methods]
            errors = [[_below(levels[m][metric]) for m in methods], [_above(levels[m][metric]) for m in methods]]
            ax.bar(xs, values, bar, label=METRIC_LABELS.get(metric, metric), color=colours(j), zorder=2)
            ax.errorbar(xs, values, yerr=errors, fmt="none", ecolor="black", elinewidth=0.8, capsize=2, zorder=3)
        ax.set_xticks(range(len(methods)), [_label(m, labels) for m in methods], rotation=20, ha="right")
        ax.set_ylabel("accuracy (%)")
        shown = [x for m in methods for k in metrics for x in levels[m][k][:2] if not math.isnan(x)]
        # Bars start a little below the lowest value or interval end, so differences show and no error bar is cut.
        ax.set_ylim(max(0.0, 5 * math.floor((min(shown, default=10.0) - 5) / 5)), None)
        ax.grid(axis="y", color="#dddddd", zorder=0)
        if len(metrics) > 1:
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, ncols=len(metrics))
            ax.set_title(f"{FAMILY_TITLES[family]}: each method, 95% intervals", loc="left")
        else:
            ax.set_title(
                f"{FAMILY_TITLES[family]}, {METRIC_LABELS.get(metrics[0], metrics[0])}: 95% intervals", loc="left"
            )
        if claims:
            _claims_panel(fig.add_subplot(grid[1, 0]), claims, labels)
        if note:
            fig.suptitle(note, x=0.01, ha="left", fontsize=8, color="#555555")
        return png_bytes(fig)


def _below(level: tuple[float, float, float]) -> float:
    value, low, _ = level
    return 0.0 if math.isnan(low) else max(0.0, value - low)


def _above(level: tuple[float, float, float]) -> float:
    value, _, high = level
    return 0.0 if math.isnan(high) else max(0.0, high - value)


def _claims_panel(ax: Axes, claims: Sequence[ClaimResult], labels: Mapping[str, str]) -> None:
    ys = list(range(len(claims)))[::-1]
    for y, r in zip(ys, claims, strict=True):
        colour = VERDICT_COLOURS[r.verdict]
        if not math.isnan(r.low):
            ax.plot([r.low, r.high], [y, y], color=colour, linewidth=2.0, solid_capstyle="butt")
        ax.plot([r.difference], [y], "o", color=colour, markersize=5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    names = [_claim_label(r, labels) for r in claims]
    ax.set_yticks(ys, names)
    ax.set_xlabel("difference (points), 95% interval")
    ax.set_title("claims, A − B: " + ", ".join(f"{c} {v}" for v, c in _COLOUR_NAMES.items()), loc="left")
    ax.grid(axis="x", color="#dddddd")


def _claim_label(result: ClaimResult, labels: Mapping[str, str]) -> str:
    c = result.claim
    side = "> 0" if c.higher else "< 0"
    return f"{_label(c.a, labels)} − {_label(c.b, labels)}\n{METRIC_LABELS.get(c.metric, c.metric)}, claim {side}"


def generator_loss_figure(curve: pl.DataFrame, title: str) -> bytes:
    """Per epoch (mean over seeds): the reconstruction loss (train, validation) and, on its own axis since it is
    orders of magnitude smaller, the KL term; files without the split columns show the total loss only."""
    split = {"train_recon", "val_recon", "train_kl", "val_kl"} <= set(curve.columns)
    with _style():
        fig = Figure(figsize=(9.0, 3.4), layout="constrained")
        axes = fig.subplots(1, 2 if split else 1, squeeze=False)[0]
        epoch = curve["epoch"].to_list()
        panels = (
            [("reconstruction", ("train_recon", "val_recon")), ("KL", ("train_kl", "val_kl"))]
            if split
            else [("loss", ("train_loss", "val_loss"))]
        )
        for ax, (name, columns) in zip(axes, panels, strict=True):
            for column, style in zip(columns, ("-", "--"), strict=True):
                if column in curve.columns:
                    ax.plot(epoch, curve[column].to_list(), style, label=column.split("_")[0])
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.set_title(name, loc="left")
            ax.grid(color="#eeeeee")
            ax.legend(frameon=False)
        fig.suptitle(title, x=0.01, ha="left")
        return png_bytes(fig)


def projection_figure(points: pl.DataFrame, title: str) -> bytes:
    """Real (dots) and synthetic (crosses) features of a few label-only classes on two principal components, one
    colour per class."""
    with _style():
        fig = Figure(figsize=(6.5, 5.2), layout="constrained")
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["tab10"]
        classes = points.select("class", "classname").unique(maintain_order=True).sort("class").rows()
        for i, (cls, name) in enumerate(classes):
            for kind, marker, alpha in (("real", "o", 0.45), ("synthetic", "x", 0.85)):
                rows = points.filter((pl.col("class") == cls) & (pl.col("kind") == kind))
                ax.scatter(
                    rows["pc1"].to_list(),
                    rows["pc2"].to_list(),
                    marker=marker,
                    s=18,
                    color=colours(i % 10),
                    alpha=alpha,
                    label=f"{name} ({kind})",
                    linewidths=1.0 if marker == "x" else 0.0,
                )
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        ax.set_title("\n".join(textwrap.wrap(title, 70)), loc="left")
        ax.legend(frameon=False, fontsize=7, loc="best", ncols=2)
        return png_bytes(fig)
