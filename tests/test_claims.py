"""Claims with intervals: the pairing, the metrics, the paired two-way bootstrap and the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.claims import (
    Cell,
    Claim,
    FamilyData,
    _image_replicates,
    bootstrap,
    claims_for,
    evaluate,
    observed,
    rate,
    ship_pairs,
    verdict,
)
from pipeline.evaluation import harmonic_mean, hit_rate
from pipeline.results import aggregate_cross_dataset, aggregate_pairs, average_pairs


def _cell(rng: np.random.Generator, p: dict[str, float], seeds: int, n: int, classes: int = 4, per_class=False) -> Cell:
    """Per-image records drawn with each method's hit probability; scores computed from them, as the stage does."""
    labels = np.sort(rng.integers(classes, size=n))
    images = {m: rng.random((seeds, n)) < q for m, q in p.items()}
    scores = {m: np.array([rate(r, labels, per_class) for r in rec]) for m, rec in images.items()}
    return Cell(scores, images, labels, per_class)


def test_every_ship_variant_is_paired_with_its_base_method_and_only_what_ran_is_claimed():
    methods = ["zeroshot", "gda", "gda_ship", "kgcoop_ship", "taskres", "taskres_ship", "coop"]
    assert ship_pairs(methods) == [("gda_ship", "gda"), ("taskres_ship", "taskres")]  # kgcoop did not run
    b2n = claims_for("b2n", methods)
    assert [(c.a, c.b, c.metric) for c in b2n] == [
        ("coop", "zeroshot", "base"),  # the premise: CoOp's base accuracy above zero-shot's,
        ("coop", "zeroshot", "new"),  # and its new accuracy below
        ("gda_ship", "gda", "new"),
        ("gda_ship", "gda", "H"),
        ("taskres_ship", "taskres", "new"),
        ("taskres_ship", "taskres", "H"),
    ]
    assert b2n[0].higher and not b2n[1].higher and all(c.higher for c in b2n[2:])
    assert [c.metric for c in claims_for("xd", methods)] == ["target_avg", "target_avg"]
    assert [c.metric for c in claims_for("gzsl", methods)] == ["H", "H"]
    assert claims_for("b2n", ["zeroshot"]) == []
    best = claims_for("b2n", ["zeroshot", "tip_adapter_f_ship"])
    assert [(c.a, c.b, c.metric, c.kind) for c in best] == [("tip_adapter_f_ship", "zeroshot", "H", "best")]


def test_verdicts():
    assert verdict(0.1, 2.0) == "holds" and verdict(-2.0, -0.1) == "fails" and verdict(-0.1, 2.0) == "inconclusive"
    assert verdict(-2.0, -0.1, higher=False) == "holds" and verdict(0.1, 2.0, higher=False) == "fails"
    assert verdict(0.0, 1.0) == "inconclusive"  # touching zero decides nothing
    assert verdict(math.nan, math.nan) == "inconclusive"


def test_the_published_numbers_are_the_tables():
    """observed() computes what results.py's tables print: H of dataset-averaged base and new, target averages, GZSL
    H per dataset."""
    per_seed = {  # dataset -> method -> [(base, new)] per seed
        "a": {"coop": [(80.0, 60.0), (84.0, 50.0)], "zeroshot": [(70.0, 72.0), (70.0, 72.0)]},
        "b": {"coop": [(60.0, 40.0), (66.0, 44.0)], "zeroshot": [(50.0, 52.0), (50.0, 52.0)]},
    }
    cells = {
        (d, split): Cell({m: np.array([s[i] for s in rows]) for m, rows in methods.items()})
        for d, methods in per_seed.items()
        for i, split in enumerate(("base", "new"))
    }
    data = FamilyData("b2n", [1, 2], cells)
    payloads = {
        d: [
            {"methods": {m: {"scores": {"base": rows[k][0], "new": rows[k][1]}} for m, rows in ms.items()}}
            for k in (0, 1)
        ]
        for d, ms in per_seed.items()
    }
    average = average_pairs({d: aggregate_pairs(p, "base_to_new") for d, p in payloads.items()}, "base_to_new")
    for m in ("coop", "zeroshot"):
        assert observed(data, m, "new") == pytest.approx(average[m]["new"])
        assert observed(data, m, "H") == pytest.approx(average[m]["hm"])
    xd = FamilyData(
        "xd",
        [1, 2],
        {("src", "t1"): Cell({"coop": np.array([80.0, 82.0])}), ("src", "t2"): Cell({"coop": np.array([40.0, 40.0])})},
    )
    table = aggregate_cross_dataset(
        [],
        {
            "t1": [{"methods": {"coop": {"scores": {"t1": 80.0}}}}, {"methods": {"coop": {"scores": {"t1": 82.0}}}}],
            "t2": [{"methods": {"coop": {"scores": {"t2": 40.0}}}}, {"methods": {"coop": {"scores": {"t2": 40.0}}}}],
        },
    )
    assert observed(xd, "coop", "target_avg") == pytest.approx(table["coop"]["target_average"])
    gz = FamilyData(
        "gzsl", [1], {("z", "seen"): Cell({"m": np.array([60.0])}), ("z", "unseen"): Cell({"m": np.array([30.0])})}
    )
    assert observed(gz, "m", "H") == pytest.approx(harmonic_mean(30.0, 60.0))


def test_rate_is_the_evaluation_metric():
    rng = np.random.default_rng(0)
    correct, labels = rng.random(50) < 0.6, rng.integers(5, size=50)
    for per_class in (False, True):
        expected = hit_rate(torch.as_tensor(correct), torch.as_tensor(labels), per_class)
        assert rate(correct, labels, per_class) == pytest.approx(expected)


def _brute_force(cell: Cell, methods: list[str], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """What the multinomial shortcut stands for: image indices drawn with replacement (per class for per-class means),
    the same indices for every seed and method, each accuracy recomputed on them."""
    labels = np.asarray(cell.labels)
    out = np.zeros((resamples, len(methods), cell.images[methods[0]].shape[0]))
    strata = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)] if cell.per_class_mean else [np.arange(len(labels))]
    )
    for r in range(resamples):
        picks = [rows[rng.integers(len(rows), size=len(rows))] for rows in strata]
        for i, m in enumerate(methods):
            out[r, i] = np.mean([100.0 * cell.images[m][:, idx].mean(axis=1) for idx in picks], axis=0)
    return out


@pytest.mark.parametrize("per_class", [False, True])
def test_pattern_counts_resample_like_image_indices(per_class: bool):
    rng = np.random.default_rng(1)
    cell = _cell(rng, {"a": 0.7, "b": 0.55}, seeds=2, n=80, per_class=per_class)
    fast = _image_replicates(cell, ["a", "b"], np.random.default_rng(2), 4000)
    slow = _brute_force(cell, ["a", "b"], np.random.default_rng(3), 4000)
    # The paired difference of the seed means: the same centre (the observed difference) and the same spread.
    fast_diff = fast[:, 0].mean(axis=1) - fast[:, 1].mean(axis=1)
    slow_diff = slow[:, 0].mean(axis=1) - slow[:, 1].mean(axis=1)
    observed_diff = cell.scores["a"].mean() - cell.scores["b"].mean()
    spread = slow_diff.std()
    assert fast_diff.mean() == pytest.approx(observed_diff, abs=0.1 * spread)
    assert slow_diff.mean() == pytest.approx(observed_diff, abs=0.1 * spread)
    assert fast_diff.std() == pytest.approx(spread, rel=0.08)
    assert np.percentile(fast_diff, [2.5, 97.5]) == pytest.approx(
        np.percentile(slow_diff, [2.5, 97.5]), abs=0.2 * spread
    )


def test_gzsl_replicates_recompute_per_class_accuracy():
    """Class 0: 90 images, all right; class 1: 10 images, all wrong. Top-1 would say 90; the per-class mean is 50, and
    resampling within classes keeps it exactly 50."""
    labels = np.array([0] * 90 + [1] * 10)
    record = np.array([[True] * 90 + [False] * 10])
    cell = Cell({"m": np.array([50.0])}, {"m": record}, labels, per_class_mean=True)
    reps = _image_replicates(cell, ["m"], np.random.default_rng(0), 200)
    assert np.all(reps == 50.0)
    top1 = Cell({"m": np.array([90.0])}, {"m": record}, labels, per_class_mean=False)
    assert _image_replicates(top1, ["m"], np.random.default_rng(0), 200).std() > 0


def _b2n(rng: np.random.Generator, seeds: int, p_ship: float, n: int = 200) -> FamilyData:
    cells = {}
    for d in ("a", "b"):
        for split, base_p in (("base", 0.8), ("new", 0.6)):
            cells[(d, split)] = _cell(rng, {"coop": base_p, "coop_ship": base_p + p_ship, "zeroshot": 0.7}, seeds, n)
    return FamilyData("b2n", list(range(1, seeds + 1)), cells)


def test_a_clear_gain_holds_and_identical_methods_are_inconclusive():
    data = _b2n(np.random.default_rng(4), seeds=3, p_ship=0.15)
    results = {(r.claim.a, r.claim.metric): r for r in evaluate(data, claims_for("b2n", data.methods()))}
    gain = results[("coop_ship", "H")]
    assert gain.per_image and gain.verdict == "holds" and gain.low > 0
    assert gain.difference == pytest.approx(observed(data, "coop_ship", "H") - observed(data, "coop", "H"))
    assert gain.low <= gain.difference <= gain.high
    same = evaluate(data, [Claim("b2n", "H", "coop", "coop")])[0]
    assert same.low == same.high == 0.0 and same.verdict == "inconclusive"


def test_intervals_are_deterministic_and_independent_of_other_claims():
    data = _b2n(np.random.default_rng(5), seeds=3, p_ship=0.02)
    one = evaluate(data, [Claim("b2n", "new", "coop_ship", "coop")])[0]
    again = evaluate(data, claims_for("b2n", data.methods()))
    assert one == next(r for r in again if r.claim == one.claim)


def test_without_per_image_records_only_seeds_are_resampled_and_one_seed_gives_no_interval():
    data = _b2n(np.random.default_rng(6), seeds=3, p_ship=0.1)
    bare = FamilyData("b2n", data.seeds, {k: Cell(c.scores) for k, c in data.cells.items()})
    mixed = FamilyData("b2n", data.seeds, {**data.cells, ("a", "new"): Cell(data.cells[("a", "new")].scores)})
    for d in (bare, mixed):
        result = evaluate(d, [Claim("b2n", "H", "coop_ship", "coop")])[0]
        assert not result.per_image and not math.isnan(result.low)
    reps = bootstrap(bare, ["coop"], np.random.default_rng(0), 500)["coop"][("a", "base")]
    assert set(np.round(reps, 6)) <= {  # means of 3 seeds drawn from the 3 published scores
        round(float(np.mean(bare.cells[("a", "base")].scores["coop"][list(pick)])), 6) for pick in np.ndindex(3, 3, 3)
    }
    single = FamilyData("b2n", [1], {k: Cell({m: s[:1] for m, s in c.scores.items()}) for k, c in bare.cells.items()})
    result = evaluate(single, [Claim("b2n", "H", "coop_ship", "coop")])[0]
    assert math.isnan(result.low) and result.verdict == "inconclusive"


def test_the_shared_test_set_is_not_averaged_away_by_more_seeds():
    """Seeds that repeat one another add no information about the test images: a two-way bootstrap gives them the
    same interval as one seed (independent image draws per seed would shrink it by about sqrt(seeds))."""
    one = _b2n(np.random.default_rng(7), seeds=1, p_ship=0.05)
    copies = FamilyData(
        "b2n",
        [1, 2, 3, 4],
        {
            k: Cell(
                {m: np.repeat(s, 4) for m, s in c.scores.items()},
                {m: np.repeat(r, 4, axis=0) for m, r in c.images.items()},
                c.labels,
            )
            for k, c in one.cells.items()
        },
    )
    claim = [Claim("b2n", "new", "coop_ship", "coop")]
    (alone,), (repeated,) = evaluate(one, claim), evaluate(copies, claim)
    assert alone.per_image and repeated.per_image
    assert repeated.high - repeated.low == pytest.approx(alone.high - alone.low, rel=0.1)


def test_oracle_rows_are_compared_with_their_base_method_in_base_to_new_only():
    from pipeline.claims import claims_for

    methods = ["zeroshot", "coop", "coop_ship", "coop_ship_oracle", "tip_adapter_f_ship_oracle"]
    b2n = [(c.a, c.b, c.metric, c.kind) for c in claims_for("b2n", methods) if c.kind == "oracle"]
    assert b2n == [("coop_ship_oracle", "coop", "new", "oracle"), ("coop_ship_oracle", "coop", "H", "oracle")]
    assert not [c for c in claims_for("gzsl", methods) if c.kind == "oracle"]
