"""Per-seed results aggregated as CoCoOp's tables do, and rendered; the headline metrics, claims and figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.evaluation import SplitPredictions, predictions_frame, task_scores
from pipeline.layout import Layout
from pipeline.metrics import harmonic_mean
from pipeline.publish import publish
from pipeline.report import render_base_to_new, render_cross_dataset, render_gzsl
from pipeline.results import (
    ResultsError,
    aggregate_cross_dataset,
    aggregate_pairs,
    average_pairs,
    gather,
    read_predictions,
    rounded,
    write_seed_results,
)


def _payload(method_scores: dict[str, dict[str, float]]) -> dict:
    return {"methods": {m: {"scores": s} for m, s in method_scores.items()}}


SEEDS = [
    _payload(
        {"coop": {"base": 80.0, "new": 60.0, "hm": harmonic_mean(80, 60)}, "zeroshot": {"base": 70.0, "new": 70.0}}
    ),
    _payload(
        {"coop": {"base": 84.0, "new": 50.0, "hm": harmonic_mean(84, 50)}, "zeroshot": {"base": 70.0, "new": 70.0}}
    ),
]
CONTEXT = {"backbone": "ViT-B-16 (openai)", "shots": 16, "seeds": [1, 2], "select": "val", "generator_select": "x"}


def test_h_is_the_harmonic_mean_of_the_seed_means_with_the_spread_of_per_seed_h():
    table = aggregate_pairs(SEEDS, "base_to_new")
    coop = table["coop"]
    assert coop["base"] == pytest.approx(82.0) and coop["new"] == pytest.approx(55.0)
    assert coop["hm"] == pytest.approx(harmonic_mean(82.0, 55.0))  # CoCoOp: H of the means
    assert coop["base_std"] == pytest.approx(math.sqrt(8.0))
    per_seed_h = [harmonic_mean(80, 60), harmonic_mean(84, 50)]
    assert coop["hm_std"] == pytest.approx(abs(per_seed_h[0] - per_seed_h[1]) / math.sqrt(2))
    assert math.isnan(table["zeroshot"]["hm_std"])  # no per-seed H given: undefined, dropped when rounded
    assert "hm_std" not in rounded(table)["zeroshot"]


def test_the_average_over_datasets_takes_the_h_of_the_average_base_and_new():
    per_dataset = {"a": aggregate_pairs(SEEDS, "base_to_new"), "b": aggregate_pairs(SEEDS[:1], "base_to_new")}
    average = average_pairs(per_dataset, "base_to_new")
    assert average["coop"]["base"] == pytest.approx((82.0 + 80.0) / 2)
    assert average["coop"]["new"] == pytest.approx((55.0 + 60.0) / 2)
    assert average["coop"]["hm"] == pytest.approx(harmonic_mean(81.0, 57.5))
    assert rounded(average)["coop"] == {"base": 81.0, "new": 57.5, "hm": round(harmonic_mean(81.0, 57.5), 2)}


def test_cross_dataset_rows_carry_source_each_target_and_their_average():
    source = [_payload({"coop": {"source": 70.0}}), _payload({"coop": {"source": 72.0}})]
    targets = {
        "pets": [_payload({"coop": {"pets": 80.0}, "coop_ship": {"source": 69.0, "pets": 85.0}})],
        "dtd": [_payload({"coop": {"dtd": 40.0}, "coop_ship": {"source": 71.0, "dtd": 44.0}})],
    }
    table = aggregate_cross_dataset(source, targets)
    assert table["coop"]["source"] == pytest.approx(71.0) and table["coop"]["target_average"] == pytest.approx(60.0)
    assert table["coop_ship"]["source"] == pytest.approx(70.0)  # mean over its per-target models
    assert table["coop_ship"]["target_average"] == pytest.approx(64.5)
    text = render_cross_dataset(rounded({"imagenet": table}), ["pets", "dtd"], CONTEXT)
    assert "| CoOp | 71.00 ± 1.41 | 80.00 | 40.00 | 60.00 |" in text
    assert "| CoOp + SHIP | 70.00 | 85.00 | 44.00 | 64.50 |" in text


def test_rendered_tables_follow_paper_order_and_state_the_protocol():
    table = {"average": average_pairs({"a": aggregate_pairs(SEEDS, "base_to_new")}, "base_to_new")}
    table["a"] = aggregate_pairs(SEEDS, "base_to_new")
    text = render_base_to_new(rounded(table), CONTEXT)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Method" not in line]
    assert rows[0].startswith("| Zero-shot CLIP | 70.00 | 70.00 | 70.00 |")  # average block: no std
    assert "| CoOp | 82.00 ± 2.83 | 55.00 ± 7.07 |" in text
    assert "best validation accuracy (never test)" in text and "16 shots" in text
    assert "| Tip-Adapter-F + SHIP | 83.80 | 76.42 | 79.94 |" in text  # the paper's reference block
    gz = render_gzsl(
        rounded({"CUB": aggregate_pairs([_payload({"zeroshot": {"seen": 50.0, "unseen": 40.0}})], "gzsl")}), CONTEXT
    )
    assert "| Zero-shot CLIP | 40.00 | 50.00 | 44.44 |" in gz and "CUB 55.2 / 54.8 / 55.0" in gz


# --- per-image records, headline metrics, claims and figures ------------------------------------------------------

METHODS = ["zeroshot", "coop", "coop_ship", "clip_adapter", "clip_adapter_ship", "tip_adapter_f", "tip_adapter_f_ship"]
HIT = {  # each method's chance of getting a test image right (SHIP clearly helps on label-only classes)
    "zeroshot": 0.55,
    "coop": 0.5,
    "coop_ship": 0.75,
    "clip_adapter": 0.55,
    "clip_adapter_ship": 0.6,
    "tip_adapter_f": 0.6,
    "tip_adapter_f_ship": 0.62,
}


def _records(rng: np.random.Generator, splits: dict[str, tuple[list[int], list[int], bool]], method: str) -> dict:
    """{split: SplitPredictions} for images with the given labels, in a label space, right with the method's odds."""
    out = {}
    for name, (labels, classes, per_class) in splits.items():
        correct = torch.as_tensor(rng.random(len(labels)) < HIT[method])
        out[name] = SplitPredictions(correct, torch.as_tensor(labels), classes, per_class)
    return out


def _write_seed(layout: Layout, protocol, dataset, seed, target, splits, methods, rng, predictions=True) -> None:
    records = {m: _records(rng, splits, m) for m in methods}
    payload = {"methods": {m: {"scores": task_scores(protocol, r)} for m, r in records.items()}}
    payload = json.loads(json.dumps(payload, allow_nan=False))
    for entry in payload["methods"].values():
        entry["scores"] = {k: round(v, 4) for k, v in entry["scores"].items()}
    write_seed_results(
        layout.finetune_results(protocol, dataset, seed, target),
        payload,
        pl.DataFrame(),
        pl.DataFrame(),
        predictions_frame(records) if predictions else None,
    )


def _loss(layout: Layout, protocol, dataset, seed) -> None:
    epochs = pl.DataFrame({"epoch": [1, 2, 3]})
    frame = epochs.with_columns(
        train_recon=pl.Series([0.8, 0.7, 0.65]) + 0.01 * seed,
        train_kl=pl.Series([0.02, 0.01, 0.005]),
        val_recon=pl.Series([0.85, 0.8, 0.78]),
        val_kl=pl.Series([0.01, 0.006, 0.004]),
    ).with_columns(
        train_loss=pl.col("train_recon") + pl.col("train_kl"), val_loss=pl.col("val_recon") + pl.col("val_kl")
    )
    path = layout.generator_results(protocol, dataset, seed) / "loss.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)


def _results(root: Path, predictions: bool = True) -> Layout:
    """Two base-to-new datasets, one source -> target, one GZSL dataset, two seeds: scores, per-image records,
    generator losses and one projection, written the way the stages write them."""
    layout, rng = Layout(root), np.random.default_rng(0)
    b2n = {"base": ([0, 1, 2] * 20, [0, 1, 2], False), "new": ([3, 4, 5] * 20, [3, 4, 5], False)}
    gzsl = {"seen": ([0, 1] * 15, [0, 1, 2, 3], True), "unseen": ([2] * 25 + [3] * 5, [0, 1, 2, 3], True)}
    for seed in (1, 2):
        for d in ("alpha", "beta"):
            _write_seed(layout, "base_to_new", d, seed, None, b2n, METHODS, rng, predictions)
            _loss(layout, "base_to_new", d, seed)
        xd = {"gamma": ([3, 4, 5, 6] * 15, [3, 4, 5, 6], False)}  # target classes offset past the source's 3
        _write_seed(layout, "cross_dataset", "alpha", seed, "gamma", xd, METHODS, rng, predictions)
        _loss(layout, "cross_dataset", "alpha", seed)
        _write_seed(layout, "gzsl", "zoo", seed, None, gzsl, METHODS, rng, predictions)
        _loss(layout, "gzsl", "zoo", seed)
    points = pl.DataFrame(
        {"kind": ["real", "synthetic"] * 4, "class": [3, 3, 4, 4] * 2, "classname": ["c3", "c3", "c4", "c4"] * 2}
    ).with_columns(pc1=pl.Series(rng.normal(size=8)), pc2=pl.Series(rng.normal(size=8)))
    (layout.synthesis_results("base_to_new", "alpha", 1)).mkdir(parents=True)
    points.write_csv(layout.synthesis_results("base_to_new", "alpha", 1) / "projection.csv")
    return layout


def _publish(layout: Layout) -> dict[str, str | bytes]:
    return publish(layout, [1, 2], METHODS, ["alpha", "beta"], ["alpha"], ["gamma"], ["zoo"], CONTEXT)


def _leaves(tree: Any) -> int:
    return sum(_leaves(v) for v in tree.values()) if isinstance(tree, dict) else 1


def test_the_per_image_record_is_written_in_deterministic_bytes_and_reads_back(tmp_path: Path):
    layout = _results(tmp_path / "a")
    again = _results(tmp_path / "b")
    path = layout.finetune_results("cross_dataset", "alpha", 1, "gamma") / "predictions.parquet"
    assert path.read_bytes() == (again.finetune_results("cross_dataset", "alpha", 1, "gamma") / path.name).read_bytes()
    frame = read_predictions(layout, "cross_dataset", "alpha", 1, "gamma")
    assert frame is not None and frame.columns == ["split", "image", "label", *METHODS]
    assert frame["label"].to_list()[:4] == [0, 1, 2, 3]  # positions in the target's own label space
    assert read_predictions(layout, "gzsl", "zoo", 9) is None  # older results: none, and the claims say so


def test_the_headline_holds_only_what_a_table_prints_and_stays_small(tmp_path: Path):
    files = _publish(_results(tmp_path))
    headline = json.loads(files["metrics/headline.json"])
    assert set(headline) == {"b2n", "xd", "gzsl"}
    assert set(headline["b2n"]["coop_ship"]) == {"new", "H"}
    assert set(headline["xd"]["coop_ship"]) == {"target_avg"} and set(headline["gzsl"]["coop_ship"]) == {"H"}
    # 4 numbers per method whatever the datasets, seeds and targets: 28 for the paper's 7 methods
    assert _leaves(headline) <= 4 * len(METHODS) <= 40
    b2n = json.loads(files["metrics/claims.json"])["b2n"]
    assert b2n["coop_ship_vs_coop"]["new"]["resampled"] == "seeds x images"


def test_headline_numbers_are_the_tables_numbers(tmp_path: Path):
    layout = _results(tmp_path)
    headline = json.loads(_publish(layout)["metrics/headline.json"])
    per_dataset = {
        d: aggregate_pairs(gather(layout, "base_to_new", d, [1, 2]), "base_to_new") for d in ("alpha", "beta")
    }
    average = rounded(average_pairs(per_dataset, "base_to_new"))
    gz = rounded(aggregate_pairs(gather(layout, "gzsl", "zoo", [1, 2]), "gzsl"))
    xd = aggregate_cross_dataset([], {"gamma": gather(layout, "cross_dataset", "alpha", [1, 2], "gamma")})
    for m in METHODS:
        assert headline["b2n"][m] == {"new": average[m]["new"], "H": average[m]["hm"]}
        assert headline["gzsl"][m] == {"H": gz[m]["hm"]}
        assert headline["xd"][m] == {"target_avg": rounded(xd)[m]["target_average"]}


def test_the_report_states_claims_with_intervals_and_renders_the_same_figures_every_time(tmp_path: Path):
    layout = _results(tmp_path)
    files, again = _publish(layout), _publish(layout)
    assert files == again  # every byte, PNGs included
    figures = {k for k in files if k.startswith("figures/")}
    assert figures == {
        "figures/base_to_new.png",
        "figures/cross_dataset.png",
        "figures/gzsl.png",
        "figures/generator_loss/base_to_new-alpha.png",
        "figures/generator_loss/base_to_new-beta.png",
        "figures/generator_loss/cross_dataset-alpha.png",
        "figures/generator_loss/gzsl-zoo.png",
        "figures/synthetic_pca.png",
    }
    for name in figures:
        png = files[name]
        assert isinstance(png, bytes) and png.startswith(b"\x89PNG") and b"Software" not in png
    claims = files["claims.md"]
    assert isinstance(claims, str)
    assert "| CoOp < Zero-shot CLIP (the premise) | new, average over datasets |" in claims
    assert "| CoOp + SHIP > CoOp | H of the dataset-averaged base and new |" in claims
    assert "seeds × images" in claims and "seeds only" not in claims.split("## How")[0]
    row = next(line for line in claims.splitlines() if line.startswith("| CoOp + SHIP > CoOp | new"))
    assert row.endswith("| **holds** |")  # 0.75 vs 0.5 on 2 x 60 new images per seed


def test_without_per_image_records_the_claims_rest_on_seeds_and_say_so(tmp_path: Path):
    layout = _results(tmp_path, predictions=False)
    files = _publish(layout)
    table = files["claims.md"].split("## How")[0]
    assert "seeds only" in table and "seeds × images" not in table
    assert json.loads(files["metrics/claims.json"])["gzsl"]["coop_ship_vs_coop"]["H"]["resampled"] == "seeds"


def test_a_record_that_does_not_reproduce_its_score_stops_the_report(tmp_path: Path):
    layout = _results(tmp_path)
    path = layout.finetune_results("base_to_new", "beta", 2) / "scores.json"
    payload = json.loads(path.read_text())
    payload["methods"]["coop"]["scores"]["new"] += 5.0
    path.write_text(json.dumps(payload))
    with pytest.raises(ResultsError, match="do not reproduce"):
        _publish(layout)
