"""Per-seed results on disk, and their aggregation over seeds and datasets (what the report stage publishes).

Per seed (pipeline/layout.py), the finetune stage writes `finetune/scores.json` (per method: its test scores, the kept
epoch, its validation accuracy and method-specific choices), `curves.csv`, `per_class.csv` and `predictions.parquet`
(per test image of every scored split, right or wrong, per method: `pipeline.evaluation.predictions_frame`); the
synthesize stage `synthesis/quality.json` (synthetic-feature quality) and `projection.csv`; the generator stage
`generator/loss.csv`.

Aggregation follows CoCoOp's tables: per dataset, base and new are means over seeds and H is the harmonic mean of
those means (the std of the per-seed H is reported beside it); the average over datasets takes the mean base and
mean new and their H. GZSL: U and S the same way. Cross-dataset: per target the mean over seeds, and the mean over
targets.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from pipeline.atomic_files import write_dir_atomic
from pipeline.claims import Cell, CellKey, Family, FamilyData, rate
from pipeline.errors import ExpectedError
from pipeline.layout import (
    CURVES,
    GENERATOR_CURVE,
    GENERATOR_QUALITY,
    PER_CLASS,
    PREDICTIONS,
    PROJECTION,
    SCORES,
    Layout,
    Protocol,
)
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


def write_seed_results(
    out: Path,
    payload: Mapping[str, Any],
    curves: pl.DataFrame,
    per_class: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
) -> None:
    """scores.json, curves.csv, per_class.csv and (given) predictions.parquet, replacing the directory `out` whole."""
    files: dict[str, str | bytes] = {
        SCORES: json.dumps(payload, indent=2, allow_nan=False) + "\n",
        CURVES: curves.write_csv(),
        PER_CLASS: per_class.write_csv(),
    }
    if predictions is not None:
        files[PREDICTIONS] = parquet_bytes(predictions)
    write_dir_atomic(out, files)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """The frame as Parquet, without statistics: the bytes depend on the data (and the polars version) only, never on
    when it was written (tests/test_report.py writes a frame twice and compares)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", compression_level=3, statistics=False)
    return buffer.getvalue()


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


def read_predictions(
    layout: Layout, protocol: Protocol, dataset: str, seed: int, target: str | None = None
) -> pl.DataFrame | None:
    """A seed's per-image record (`predictions.parquet`), or None where the finetune stage wrote none (results of an
    older version of the stage): the claims then rest on the per-seed scores alone and say so."""
    path = layout.finetune_results(protocol, dataset, seed, target) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars raises several kinds for a damaged file
        raise ResultsError(f"{path} is unreadable ({type(err).__name__}: {err}); rerun the finetune stage") from None


def read_projection(
    layout: Layout, protocol: Protocol, dataset: str, seed: int, target: str | None = None
) -> pl.DataFrame | None:
    """The synthesize stage's 2-D projection (`projection.csv`), or None where the stage wrote none."""
    path = layout.synthesis_results(protocol, dataset, seed, target) / PROJECTION
    if not path.is_file():
        return None
    try:
        return pl.read_csv(path)
    except Exception as err:
        raise ResultsError(f"{path} is unreadable ({type(err).__name__}: {err}); rerun the synthesize stage") from None


# --- what the claims rest on: per-seed scores and per-image records, per cell --------------------------------------

_AGREE = 0.01  # percent: scores.json rounds to 4 decimals; a per-image record further off belongs to another run


def cell_of(
    payloads: Sequence[Mapping[str, Any]],
    frames: Sequence[pl.DataFrame | None],
    split: str,
    per_class_mean: bool,
    where: str,
) -> Cell:
    """One split's per-seed scores of every method scored in every seed, and, where every seed's predictions file
    holds a method's record of the split, that record ([seeds, images]).

    The records must describe the same images in every seed and reproduce the published scores: anything else means
    files from different runs, and the report stops with the stage to rerun."""
    methods = [m for m in payloads[0]["methods"] if all(_score(p, m, split) is not None for p in payloads)]
    scores = {m: np.array([_score(p, m, split) for p in payloads], dtype=np.float64) for m in methods}
    if any(f is None for f in frames):
        return Cell(scores, per_class_mean=per_class_mean)
    rows = [f.filter(pl.col("split") == split).sort("image") for f in frames if f is not None]
    labels = rows[0]["label"].to_numpy()
    if any(not np.array_equal(r["label"].to_numpy(), labels) for r in rows):
        raise ResultsError(f"{where}: the seeds' predictions list different test images for {split!r}; rerun finetune")
    images = {}
    for m in methods:
        if not all(m in r.columns and len(r) and r[m].null_count() == 0 for r in rows):
            continue
        record = np.stack([r[m].to_numpy().astype(bool) for r in rows])
        for seed_record, score in zip(record, scores[m], strict=True):
            if abs(rate(seed_record, labels, per_class_mean) - score) > _AGREE:
                raise ResultsError(
                    f"{where}: {m}'s predictions for {split!r} do not reproduce its score {score}; rerun finetune"
                )
        images[m] = record
    return Cell(scores, images, labels, per_class_mean)


def _score(payload: Mapping[str, Any], method: str, split: str) -> float | None:
    entry = payload["methods"].get(method)
    value = None if entry is None else entry["scores"].get(split)
    return None if value is None else float(value)


def family_data(
    layout: Layout,
    family: Family,
    seeds: Sequence[int],
    datasets: Sequence[str] = (),
    sources: Sequence[str] = (),
    targets: Sequence[str] = (),
) -> FamilyData:
    """The cells of one family as the current params name them: base-to-new (`datasets`: base, new), GZSL
    (`datasets`: seen, unseen; per-class means) or cross-dataset (`sources` x `targets`: each target's split)."""
    cells: dict[CellKey, Cell] = {}
    if family == "xd":
        for s in sources:
            for t in targets:
                payloads = gather(layout, "cross_dataset", s, seeds, t)
                frames = [read_predictions(layout, "cross_dataset", s, k, t) for k in seeds]
                cells[(s, t)] = cell_of(payloads, frames, t, False, f"results/cross_dataset/{s}/{t}")
    else:
        protocol: Protocol = "base_to_new" if family == "b2n" else "gzsl"
        for d in datasets:
            payloads = gather(layout, protocol, d, seeds)
            frames = [read_predictions(layout, protocol, d, k) for k in seeds]
            for split in PAIRS[protocol]:
                cells[(d, split)] = cell_of(payloads, frames, split, family == "gzsl", f"results/{protocol}/{d}")
    return FamilyData(family, list(seeds), cells)
