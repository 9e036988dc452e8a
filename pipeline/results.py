"""Per-seed results on disk, and their aggregation over seeds and datasets (what the report stage publishes).

Per seed (pipeline/layout.py), the finetune stage writes `finetune/scores.json` (per method: its test scores, the kept
epoch, its validation accuracy and method-specific choices), `curves.csv` and `per_class.csv`; the synthesize stage
`synthesis/quality.json` (synthetic-feature quality); the generator stage `generator/loss.csv`.

Aggregation follows CoCoOp's tables: per dataset, base and new are means over seeds and H is the harmonic mean of
those means (the std of the per-seed H is reported beside it); the average over datasets takes the mean base and
mean new and their H. GZSL: U and S the same way. Cross-dataset: per target the mean over seeds, and the mean over
targets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pipeline.atomic_files import write_dir_atomic
from pipeline.errors import ExpectedError
from pipeline.layout import CURVES, GENERATOR_CURVE, GENERATOR_QUALITY, PER_CLASS, SCORES, Layout, Protocol
from pipeline.metrics import harmonic_mean

if TYPE_CHECKING:  # a type only: the report stage reads results without importing the methods
    from pipeline.finetune import MethodResult

PAIRS = {"base_to_new": ("base", "new"), "gzsl": ("seen", "unseen")}


class ResultsError(ExpectedError, RuntimeError):
    """Results the report needs are missing or unreadable; the message names the file and the stage to rerun."""


def seed_payload(results: Sequence[MethodResult], context: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **context,
        "methods": {
            r.method: {
                "scores": {k: _clean(v) for k, v in r.scores.items()},
                "best_epoch": r.best_epoch,
                "val_acc": round(r.val_acc, 4),
                "info": {k: round(float(v), 6) for k, v in r.info.items()},
            }
            for r in results
        },
    }


def write_seed_results(out: Path, payload: Mapping[str, Any], curves: pl.DataFrame, per_class: pl.DataFrame) -> None:
    """scores.json, curves.csv and per_class.csv, replacing the directory `out` whole."""
    write_dir_atomic(
        out,
        {
            SCORES: json.dumps(payload, indent=2, allow_nan=False) + "\n",
            CURVES: curves.write_csv(),
            PER_CLASS: per_class.write_csv(),
        },
    )


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def read_json(path: Path, stage: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing; run the stage that writes it ({stage})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path} is unreadable ({err}); rerun {stage}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path} is not a JSON object; rerun {stage}")
    return data


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return float("nan")
    mu = _mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def method_scores(payloads: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{method: {score name: [per-seed values]}} across per-seed payloads."""
    out: dict[str, dict[str, list[float]]] = {}
    for payload in payloads:
        for method, entry in payload["methods"].items():
            for key, value in entry["scores"].items():
                out.setdefault(method, {}).setdefault(key, []).append(float("nan") if value is None else value)
    return out


def aggregate_pairs(payloads: Sequence[Mapping[str, Any]], protocol: str) -> dict[str, dict[str, float]]:
    """Base-to-new or GZSL for one dataset: {method: {a, a_std, b, b_std, hm, hm_std}} over seeds (unrounded)."""
    a, b = PAIRS[protocol]
    out = {}
    for method, scores in method_scores(payloads).items():
        ma, mb = _mean(scores.get(a, [])), _mean(scores.get(b, []))
        out[method] = {
            a: ma,
            f"{a}_std": _std(scores.get(a, [])),
            b: mb,
            f"{b}_std": _std(scores.get(b, [])),
            "hm": harmonic_mean(ma, mb),
            "hm_std": _std(scores.get("hm", [])),
        }
    return out


def average_pairs(per_dataset: Mapping[str, Mapping[str, Mapping[str, float]]], protocol: str) -> dict[str, Any]:
    """The mean over datasets of each method's a and b, and the H of those means (CoCoOp's average row)."""
    a, b = PAIRS[protocol]
    methods = {m for table in per_dataset.values() for m in table}
    out = {}
    for method in sorted(methods):
        rows = [table[method] for table in per_dataset.values() if method in table]
        if len(rows) != len(per_dataset):
            continue  # a method missing on some dataset has no comparable average
        ma, mb = _mean([r[a] for r in rows]), _mean([r[b] for r in rows])
        out[method] = {a: ma, b: mb, "hm": harmonic_mean(ma, mb)}
    return out


def rounded(table: Any) -> Any:
    """Figures rounded to 2 decimals for publication; undefined ones (NaN: a std of one seed) left out."""
    if isinstance(table, Mapping):
        out = {k: rounded(v) for k, v in table.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(table, float):
        return None if math.isnan(table) else round(table, 2)
    return table


def aggregate_cross_dataset(
    source_payloads: Sequence[Mapping[str, Any]], target_payloads: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, dict[str, float]]:
    """{method: {source, source_std, <target>, <target>_std, ..., target_average}} for one source (unrounded).

    Source-only methods have one source fit per seed; a *_ship method is trained per target, so its source accuracy
    is the mean over its per-target models."""
    table: dict[str, dict[str, float]] = {}
    ship_source: dict[str, list[float]] = {}
    for method, scores in method_scores(source_payloads).items():
        table.setdefault(method, {}).update(source=_mean(scores["source"]), source_std=_std(scores["source"]))
    for target, payloads in target_payloads.items():
        for method, scores in method_scores(payloads).items():
            row = table.setdefault(method, {})
            row[target], row[f"{target}_std"] = _mean(scores[target]), _std(scores[target])
            ship_source.setdefault(method, []).extend(scores.get("source", []))
    for method, values in ship_source.items():
        if values and "source" not in table[method]:
            table[method]["source"] = _mean(values)
    for row in table.values():
        means = [row[t] for t in target_payloads if t in row]
        if means and len(means) == len(target_payloads):
            row["target_average"] = _mean(means)
    return table


def gather(
    layout: Layout, protocol: Protocol, dataset: str, seeds: Sequence[int], target: str | None = None
) -> list[dict[str, Any]]:
    """The finetune stage's per-seed payloads."""
    return [
        read_json(layout.finetune_results(protocol, dataset, s, target) / SCORES, "the finetune stage") for s in seeds
    ]


def generator_quality(
    layout: Layout, protocol: Protocol, dataset: str, seeds: Sequence[int], target: str | None = None
) -> dict[str, float]:
    """Mean over seeds of each synthetic-quality figure of a (protocol, dataset[, target])."""
    rows = [
        read_json(layout.synthesis_results(protocol, dataset, s, target) / GENERATOR_QUALITY, "the synthesize stage")
        for s in seeds
    ]
    keys = sorted({k for r in rows for k in r})
    return {k: _mean([r[k] for r in rows if k in r]) for k in keys}


def generator_curve(layout: Layout, protocol: Protocol, dataset: str, seeds: Sequence[int]) -> pl.DataFrame:
    """Per-epoch generator losses, mean over seeds."""
    frames = []
    for s in seeds:
        path = layout.generator_results(protocol, dataset, s) / GENERATOR_CURVE
        if not path.is_file():
            raise ResultsError(f"{path} is missing; run the generator stage")
        frames.append(pl.read_csv(path))
    return pl.concat(frames).group_by("epoch").agg(pl.all().mean()).sort("epoch")


def mean_curves(
    layout: Layout, protocol: Protocol, dataset: str, seeds: Sequence[int], target: str | None = None
) -> pl.DataFrame:
    """Per (method, epoch) validation accuracy and training loss, mean over seeds."""
    frames = []
    for s in seeds:
        path = layout.finetune_results(protocol, dataset, s, target) / CURVES
        if not path.is_file():
            raise ResultsError(f"{path} is missing; run the finetune stage")
        frames.append(pl.read_csv(path, schema_overrides={"train_loss": pl.Float64, "val_acc": pl.Float64}))
    return (
        pl.concat(frames)
        .group_by("method", "epoch", maintain_order=True)
        .agg(pl.col("val_acc").mean(), pl.col("train_loss").mean())
        .sort("method", "epoch")
    )
