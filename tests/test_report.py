"""Per-seed results aggregated as CoCoOp's tables do, and rendered."""

from __future__ import annotations

import math

import pytest

from pipeline.metrics import harmonic_mean
from pipeline.report import render_base_to_new, render_cross_dataset, render_gzsl
from pipeline.results import aggregate_cross_dataset, aggregate_pairs, average_pairs, rounded


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
