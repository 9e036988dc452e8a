"""What the report stage publishes beside the tables: the headline metrics, the claims with intervals, the figures.

- `metrics/headline.json`: the one metrics file dvc.yaml lists, so `dvc exp show` has a column per number a paper's
  table prints and nothing else: per family and method, `b2n.<method>.new`, `b2n.<method>.H` (the average over
  datasets), `xd.<method>.target_avg`, `gzsl.<method>.H` (mean over GZSL datasets of each dataset's H; one dataset:
  its H). The per-dataset and per-seed detail stays in the other JSON files under `metrics/` (not DVC metrics).
- `claims.md` and `metrics/claims.json`: pipeline/claims.py's claims for the methods that ran.
- `figures/*.png`: pipeline/figures.py.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from pipeline.claims import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    FAMILIES,
    HEADLINE_METRICS,
    ClaimResult,
    Family,
    FamilyData,
    claims_for,
    evaluate,
    levels,
    observed,
)
from pipeline.figures import family_figure, generator_loss_figure, projection_figure
from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from pipeline.report import (
    METHOD_LABELS,
    render_base_to_new,
    render_claims,
    render_cross_dataset,
    render_generator,
    render_gzsl,
)
from pipeline.results import (
    aggregate_cross_dataset,
    aggregate_pairs,
    average_pairs,
    family_data,
    gather,
    generator_curve,
    generator_quality,
    mean_curves,
    read_projection,
    rounded,
)

log = logging.getLogger(__name__)

HEADLINE = "metrics/headline.json"
CLAIMS_METRICS = "metrics/claims.json"
CLAIMS_REPORT = "claims.md"
FIGURES = "figures"
_PROTOCOL_OF: dict[Family, Protocol] = {"b2n": "base_to_new", "xd": "cross_dataset", "gzsl": "gzsl"}


def _number(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 2)


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def ordered(methods: Sequence[str], ran: Sequence[str]) -> list[str]:
    """The methods of `methods` (finetune.methods' order) that ran, then any other that ran."""
    return [m for m in methods if m in ran] + [m for m in ran if m not in methods]


def headline(families: Mapping[Family, FamilyData], methods: Sequence[str]) -> dict[str, Any]:
    """{family: {method: {metric: value}}}: only what a paper's table prints (HEADLINE_METRICS), 2 decimals."""
    out: dict[str, Any] = {}
    for family, data in families.items():
        table = {
            m: {k: _number(observed(data, m, k)) for k in HEADLINE_METRICS[family]}
            for m in ordered(methods, data.methods())
        }
        out[family] = {m: {k: v for k, v in row.items() if v is not None} for m, row in table.items()}
    return out


def claims_metrics(results: Mapping[Family, Sequence[ClaimResult]]) -> dict[str, Any]:
    """{family: {a_vs_b: {metric: {diff, low, high, verdict, resampled}}}}."""
    out: dict[str, Any] = {}
    for family, rows in results.items():
        for r in rows:
            out.setdefault(family, {}).setdefault(r.claim.key, {})[r.claim.metric] = {
                "diff": _number(r.difference),
                "low": _number(r.low),
                "high": _number(r.high),
                "verdict": r.verdict,
                "resampled": "seeds x images" if r.per_image else "seeds",
            }
    return out


def publish(
    layout: Layout,
    seeds: Sequence[int],
    methods: Sequence[str],
    base_to_new: Sequence[str],
    sources: Sequence[str],
    targets: Sequence[str],
    gzsl: Sequence[str],
    context: Mapping[str, Any],
) -> dict[str, str | bytes]:
    """Every file above, relative to the report's directory, for the families the params name."""
    families: dict[Family, FamilyData] = {}
    if base_to_new:
        families["b2n"] = family_data(layout, "b2n", seeds, datasets=base_to_new)
    if sources and targets:
        families["xd"] = family_data(layout, "xd", seeds, sources=sources, targets=targets)
    if gzsl:
        families["gzsl"] = family_data(layout, "gzsl", seeds, datasets=gzsl)

    files: dict[str, str | bytes] = {HEADLINE: _dump(headline(families, methods))}
    results: dict[Family, list[ClaimResult]] = {}
    for family in FAMILIES:
        if family not in families:
            continue
        data = families[family]
        ran = ordered(methods, data.methods())
        results[family] = evaluate(data, claims_for(family, ran))
        seeds_only = not data.per_image(ran)
        note = "seeds only: these results hold no per-image predictions" if seeds_only else ""
        if seeds_only:
            log.warning("%s: no per-image predictions in the results; intervals resample seeds only", family)
        files[f"{FIGURES}/{_PROTOCOL_OF[family]}.png"] = family_figure(
            family, levels(data, ran), results[family], METHOD_LABELS, note
        )
    files[CLAIMS_REPORT] = render_claims(results, context, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    files[CLAIMS_METRICS] = _dump(claims_metrics(results))

    generators: list[tuple[Protocol, str]] = [("base_to_new", d) for d in base_to_new]
    generators += [("cross_dataset", s) for s in sources] + [("gzsl", g) for g in gzsl]
    for protocol, dataset in generators:
        curve = generator_curve(layout, protocol, dataset, seeds)
        title = f"SHIP generator loss, {protocol} {dataset} (mean over seeds {', '.join(map(str, seeds))})"
        files[f"{FIGURES}/generator_loss/{protocol}-{dataset}.png"] = generator_loss_figure(curve, title)

    projected = _first_projection(layout, seeds, base_to_new, sources, targets, gzsl)
    if projected is not None:
        points, where = projected
        files[f"{FIGURES}/synthetic_pca.png"] = projection_figure(
            points, f"{where}: real test features (dots) and synthetic features (crosses) of a few label-only classes"
        )
    else:
        log.warning("no projection.csv in the synthesis results: the synthetic-feature picture is left out")
    return files


def _first_projection(
    layout: Layout,
    seeds: Sequence[int],
    base_to_new: Sequence[str],
    sources: Sequence[str],
    targets: Sequence[str],
    gzsl: Sequence[str],
) -> tuple[pl.DataFrame, str] | None:
    """One dataset's picture: the first base-to-new dataset's (else the first GZSL dataset's, else the first
    cross-dataset target's), first seed."""
    seed = seeds[0]
    candidates: list[tuple[Protocol, str, str | None]] = [("base_to_new", d, None) for d in base_to_new[:1]]
    candidates += [("gzsl", g, None) for g in gzsl[:1]]
    candidates += [("cross_dataset", s, t) for s in sources[:1] for t in targets[:1]]
    for protocol, dataset, target in candidates[:1]:
        points = read_projection(layout, protocol, dataset, seed, target)
        if points is not None:
            name = dataset if target is None else f"{dataset} -> {target}"
            return points, f"{protocol} {name}, seed {seed}"
    return None


# --- the report stage's files -------------------------------------------------------------------------------------


def _dump(data: Any) -> str:
    return json.dumps(rounded(data), indent=2, allow_nan=False) + "\n"


def curve_files(layout: Layout, protocol: Protocol, dataset: str, seeds: list[int]) -> dict[str, str]:
    """One plot file per method: the validation curve averaged over seeds."""
    frames = mean_curves(layout, protocol, dataset, seeds).partition_by("method", as_dict=True)
    return {
        f"{protocol}-{dataset}-{method[0]}.csv": frame.drop("method").write_csv() for method, frame in frames.items()
    }


def build_report(params: Params, layout: Layout) -> dict[str, str | bytes]:
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
    published = publish(
        layout,
        seeds,
        params.finetune.methods,
        params.base_to_new.datasets,
        params.cross_dataset.sources,
        params.cross_dataset.targets,
        params.gzsl.datasets,
        context,
    )
    return {
        **tables,
        **{f"metrics/{k}": v for k, v in metrics.items()},
        **{f"plots/val_acc/{k}": v for k, v in curves.items()},
        **{f"plots/generator_loss/{k}": v for k, v in losses.items()},
        **published,
    }
