"""The paper's claims, tested on this run's results: a difference, a 95% interval, a verdict.

A claim compares two methods on the number a table prints: every `X_ship` method against its base method `X`
(base-to-new: new and H of the dataset averages; cross-dataset: the target average; GZSL: H), Tip-Adapter-F + SHIP
against zero-shot CLIP on base-to-new H, and the paper's premise, that CoOp's new-class accuracy falls below
zero-shot CLIP's. Only methods that ran are paired.

The interval is a paired two-way bootstrap over seeds and test images (`bootstrap`):
- seeds are resampled with replacement, one draw per replicate for the whole family: a seed's chains of different
  datasets can share state (a cross-dataset source fit is scored on every target), so they move together;
- test images are resampled with replacement per dataset and split (per class where the split's metric is a
  per-class mean, GZSL's), one draw per replicate shared by every seed and both methods: the test images are the
  same for every seed, so their sampling error is common to all seeds and must not average out across them;
- each replicate recomputes both methods' per-seed accuracies on the drawn images, their means over the drawn seeds,
  and the claim's whole metric (e.g. H of the dataset-averaged base and new), then the difference;
- the interval is the 2.5th to 97.5th percentile of `BOOTSTRAP_RESAMPLES` differences from a generator seeded by
  `BOOTSTRAP_SEED` and the claim's methods, so the same results always give the same interval.

For a split scored by top-1 accuracy, drawing n images with replacement matters only through how many drawn images
fall in each right/wrong pattern (a pattern: which of the seeds x methods got the image right), so those counts are
drawn from that multinomial directly, at a cost that does not grow with n; GZSL's many small classes draw image
indices within each class. Both are the same distribution as drawing indices (tests/test_claims.py compares them).

Without per-image records (results of an older finetune stage), a claim rests on the seed resampling alone (each
seed's published accuracy) and says so: with 3 seeds that has at most 10 distinct means and understates the
uncertainty.

Everything here is a pure function of the numbers given; pipeline/results.py reads them from disk.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20230607  # any fixed number: intervals are reproducible, not tuned
LEVEL = 0.95

Family = Literal["b2n", "xd", "gzsl"]
FAMILIES: tuple[Family, ...] = ("b2n", "xd", "gzsl")
FAMILY_TITLES = {"b2n": "base-to-new", "xd": "cross-dataset", "gzsl": "GZSL"}
Verdict = Literal["holds", "fails", "inconclusive"]
CellKey = tuple[str, str]  # (dataset, split) | (source, target)


@dataclass(frozen=True)
class Cell:
    """One block of test images scored for every seed: a dataset's base or new split, a GZSL dataset's seen or
    unseen split, a cross-dataset source's target.

    `scores[m]` holds method m's published accuracy per seed (percent). `images[m]` ([seeds, images] bool), where
    given, is m's per-image record of the same images for every seed, and `labels` ([images]) their classes (the
    strata of a per-class mean)."""

    scores: Mapping[str, np.ndarray]
    images: Mapping[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    per_class_mean: bool = False

    def has_images(self, method: str) -> bool:
        return method in self.images and self.labels is not None


@dataclass(frozen=True)
class FamilyData:
    """Every cell of one experiment family, over the same seeds."""

    family: Family
    seeds: Sequence[int]
    cells: Mapping[CellKey, Cell]

    def methods(self) -> list[str]:
        """Methods with a score in every cell."""
        sets = [set(cell.scores) for cell in self.cells.values()]
        common = set.intersection(*sets) if sets else set()
        first = next(iter(self.cells.values())).scores if self.cells else {}
        return [m for m in first if m in common]

    def per_image(self, methods: Sequence[str]) -> bool:
        return bool(self.cells) and all(c.has_images(m) for c in self.cells.values() for m in methods)


# --- the numbers a table prints, from per-cell means over seeds (vectorised over bootstrap replicates) -----------


def harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`pipeline.evaluation.harmonic_mean`, elementwise: 0 where either is 0, NaN where either is NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where((a <= 0) | (b <= 0), 0.0, 2.0 * a * b / (a + b))
    return np.where(np.isnan(a) | np.isnan(b), np.nan, h)


def _groups(values: Mapping[CellKey, np.ndarray]) -> list[str]:
    return list(dict.fromkeys(group for group, _ in values))


def _mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(arrays), axis=0)


def _b2n(values: Mapping[CellKey, np.ndarray], metric: str) -> np.ndarray:
    """CoCoOp's average row: the mean over datasets of base and of new, and the H of those two means."""
    datasets = _groups(values)
    base = _mean([values[(d, "base")] for d in datasets])
    new = _mean([values[(d, "new")] for d in datasets])
    return {"base": base, "new": new, "H": harmonic(base, new)}[metric]


def _xd(values: Mapping[CellKey, np.ndarray], metric: str) -> np.ndarray:
    """The mean over targets of a source's target accuracies (the mean over sources where several)."""
    assert metric == "target_avg"
    sources = _groups(values)
    return _mean([_mean([v for (s, _), v in values.items() if s == source]) for source in sources])


def _gzsl(values: Mapping[CellKey, np.ndarray], metric: str) -> np.ndarray:
    """Per dataset U and S (means over seeds) and their H; the mean over datasets of each (one dataset: its row)."""
    datasets = _groups(values)
    unseen = [values[(d, "unseen")] for d in datasets]
    seen = [values[(d, "seen")] for d in datasets]
    per_dataset = {"U": unseen, "S": seen, "H": [harmonic(u, s) for u, s in zip(unseen, seen, strict=True)]}
    return _mean(per_dataset[metric])


METRICS: dict[Family, Callable[[Mapping[CellKey, np.ndarray], str], np.ndarray]] = {
    "b2n": _b2n,
    "xd": _xd,
    "gzsl": _gzsl,
}
METRIC_NAMES: dict[Family, tuple[str, ...]] = {
    "b2n": ("base", "new", "H"),
    "xd": ("target_avg",),
    "gzsl": ("U", "S", "H"),
}
HEADLINE_METRICS: dict[Family, tuple[str, ...]] = {"b2n": ("new", "H"), "xd": ("target_avg",), "gzsl": ("H",)}


def rate(correct: np.ndarray, labels: np.ndarray, per_class_mean: bool) -> float:
    """A split's accuracy (percent) from its per-image record: `pipeline.evaluation.hit_rate` in numpy."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return math.nan
    if not per_class_mean:
        return 100.0 * float(correct.mean())
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return 100.0 * float(np.mean(np.bincount(inverse, weights=correct) / np.bincount(inverse)))


def observed(data: FamilyData, method: str, metric: str) -> float:
    """The published number: the metric of each cell's mean over seeds of the per-seed scores."""
    means = {key: np.asarray(np.mean(cell.scores[method])) for key, cell in data.cells.items()}
    return float(METRICS[data.family](means, metric))


# --- the bootstrap ---------------------------------------------------------------------------------------------


def _rng(*names: str) -> np.random.Generator:
    """A generator for one comparison: the fixed seed and a stable hash of its names, so adding or dropping a claim
    never moves another claim's interval."""
    return np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32("\0".join(names).encode())])


_CHUNK = 1 << 25  # resampled (image, pattern bit) cells held at once by the per-class draw: ~32 MB of booleans


def _image_replicates(cell: Cell, methods: Sequence[str], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[resamples, methods, seeds] accuracies (percent) on resampled test images, one draw shared by every seed and
    method; per class where the metric is a per-class mean (each class its own stratum, classes weigh equally)."""
    assert cell.labels is not None
    seeds = cell.images[methods[0]].shape[0]
    bits = np.concatenate([np.asarray(cell.images[m], dtype=bool) for m in methods], axis=0).T  # [n, methods*seeds]
    if cell.per_class_mean:
        rates = _per_class_draws(bits, np.asarray(cell.labels), rng, resamples)
    else:
        rates = _pattern_draws(bits, rng, resamples)
    return rates.reshape(resamples, len(methods), seeds)


def _pattern_draws(bits: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[resamples, bits] percent right on n images drawn with replacement from one split.

    Only the count of drawn images in each right/wrong pattern matters, and those counts are multinomial over the
    patterns' observed frequencies: drawn as the exact chain of conditional binomials (pattern j gets Binomial(images
    left, its share of the patterns not yet drawn)), one call per pattern (at most 2^bits) whatever n is."""
    patterns, counts = np.unique(bits, axis=0, return_counts=True)
    not_yet = np.cumsum(counts[::-1])[::-1]  # images in patterns j, j+1, ...
    left = np.full(resamples, len(bits), dtype=np.int64)
    hits = np.zeros((resamples, bits.shape[1]))
    for pattern, count, rest in zip(patterns, counts, not_yet, strict=True):
        drawn = rng.binomial(left, count / rest)
        hits += drawn[:, None] * pattern[None, :]
        left -= drawn
    return 100.0 * hits / len(bits)


def _per_class_draws(bits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[resamples, bits] mean over classes of the percent right, each class's images drawn with replacement within
    the class (its size kept). Classes are many and small here, so image indices are drawn directly, all classes at
    once, in chunks of replicates."""
    order = np.argsort(labels, kind="stable")
    bits = bits[order]
    _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    within = np.repeat(sizes, sizes)  # each slot draws among its class's images
    offset = np.repeat(starts, sizes)
    ends = starts + sizes - 1
    out = np.empty((resamples, bits.shape[1]))
    step = max(1, _CHUNK // max(bits.size, 1))
    for lo in range(0, resamples, step):
        rows = min(step, resamples - lo)
        index = offset + rng.integers(0, within, size=(rows, len(bits)))
        # Per-class sums of the drawn slots as differences of a running sum (np.add.reduceat is several times slower).
        running = np.cumsum(bits[index], axis=1, dtype=np.int32)
        hits = running[:, ends].astype(np.float64)  # [rows, classes, bits]
        hits[:, 1:] -= running[:, ends[:-1]]
        out[lo : lo + rows] = 100.0 * (hits / sizes[None, :, None]).mean(axis=1)
    return out


def bootstrap(
    data: FamilyData,
    methods: Sequence[str],
    rng: np.random.Generator,
    resamples: int = BOOTSTRAP_RESAMPLES,
    per_image: bool | None = None,
) -> dict[str, dict[CellKey, np.ndarray]]:
    """{method: {cell: [resamples] mean over resampled seeds of the accuracy on resampled images}}.

    `per_image` (default: where every cell holds every method's per-image record) resamples test images within each
    replicate; otherwise only the seeds are resampled, over the published per-seed scores."""
    per_image = data.per_image(methods) if per_image is None else per_image
    n_seeds = len(data.seeds)
    seed_draw = rng.integers(n_seeds, size=(resamples, n_seeds))
    out: dict[str, dict[CellKey, np.ndarray]] = {m: {} for m in methods}
    for key, cell in data.cells.items():
        if per_image:
            acc = _image_replicates(cell, methods, rng, resamples)
        else:
            acc = np.stack(
                [np.broadcast_to(np.asarray(cell.scores[m], float), (resamples, n_seeds)) for m in methods], 1
            )
        for i, m in enumerate(methods):
            out[m][key] = np.take_along_axis(acc[:, i, :], seed_draw, axis=1).mean(axis=1)
    return out


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval; NaN where any replicate is undefined."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0 or np.isnan(samples).any():
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


# --- claims ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """`a` scores above `b` on the family's `metric` (below, where `higher` is False)."""

    family: Family
    metric: str
    a: str
    b: str
    higher: bool = True
    kind: str = "ship"  # ship: X_ship vs X | best: Tip-Adapter-F + SHIP vs zero-shot | premise | oracle

    @property
    def key(self) -> str:
        return f"{self.a}_vs_{self.b}"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    a_value: float
    b_value: float
    difference: float  # a - b, as the tables print them
    low: float
    high: float
    per_image: bool  # False: the interval resamples seeds only
    verdict: Verdict


def ship_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every `X_ship` in `methods` with its base method `X`, where that ran too, in the order of `methods`."""
    return [(m, m.removesuffix("_ship")) for m in methods if m.endswith("_ship") and m.removesuffix("_ship") in methods]


def claims_for(family: Family, methods: Sequence[str]) -> list[Claim]:
    """The claims this family's methods allow, in the order the report prints them."""
    claims: list[Claim] = []
    if family == "b2n" and {"coop", "zeroshot"} <= set(methods):
        # The premise, on real data (CoCoOp's Table 1 averages): CoOp gains on the base classes and loses on new ones.
        claims.append(Claim("b2n", "base", "coop", "zeroshot", kind="premise"))
        claims.append(Claim("b2n", "new", "coop", "zeroshot", higher=False, kind="premise"))
    for a, b in ship_pairs(methods):
        claims += [Claim(family, metric, a, b) for metric in HEADLINE_METRICS[family]]
    if family == "b2n" and {"tip_adapter_f_ship", "zeroshot"} <= set(methods):
        claims.append(Claim("b2n", "H", "tip_adapter_f_ship", "zeroshot", kind="best"))
    if family == "b2n":  # the oracle rows (real new-class features): what a perfect generator could give
        for a, b in oracle_pairs(methods):
            claims += [Claim(family, metric, a, b, kind="oracle") for metric in HEADLINE_METRICS[family]]
    return claims


def oracle_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every `X_ship_oracle` in `methods` with its base method `X`, where that ran too."""
    bases = [(m, m.removesuffix("_ship_oracle")) for m in methods if m.endswith("_ship_oracle")]
    return [(a, b) for a, b in bases if b in methods]


def verdict(low: float, high: float, higher: bool = True) -> Verdict:
    """holds: the interval lies entirely on the claim's side of zero; fails: entirely on the other; else
    inconclusive (an interval touching zero, or undefined, decides nothing)."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    above, below = low > 0.0, high < 0.0
    if above or below:
        return "holds" if above == higher else "fails"
    return "inconclusive"


def evaluate(data: FamilyData, claims: Sequence[Claim], resamples: int = BOOTSTRAP_RESAMPLES) -> list[ClaimResult]:
    """Each claim's difference and interval; claims on the same two methods share one bootstrap."""
    out: list[ClaimResult] = []
    replicates: dict[tuple[str, str], dict[str, dict[CellKey, np.ndarray]]] = {}
    for claim in claims:
        pair = (claim.a, claim.b)
        if pair not in replicates:
            rng = _rng(data.family, claim.a, claim.b)
            replicates[pair] = bootstrap(data, pair, rng, resamples)
        reps = replicates[pair]
        metric = METRICS[data.family]
        diffs = metric(reps[claim.a], claim.metric) - metric(reps[claim.b], claim.metric)
        low, high = percentile_interval(diffs) if _resamplable(data, pair) else (math.nan, math.nan)
        a_value, b_value = observed(data, claim.a, claim.metric), observed(data, claim.b, claim.metric)
        out.append(
            ClaimResult(
                claim=claim,
                a_value=a_value,
                b_value=b_value,
                difference=a_value - b_value,
                low=low,
                high=high,
                per_image=data.per_image(pair),
                verdict=verdict(low, high, claim.higher),
            )
        )
    return out


def _resamplable(data: FamilyData, methods: Sequence[str]) -> bool:
    """A seed bootstrap of one seed has no spread at all: no interval rather than a zero-width one."""
    return data.per_image(methods) or len(data.seeds) > 1


def levels(
    data: FamilyData, methods: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{method: {metric: (published value, low, high)}}: each method's own numbers with the same bootstrap (one
    method at a time), for the figures' error bars."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    metric = METRICS[data.family]
    for m in methods:
        reps = bootstrap(data, [m], _rng(data.family, m), resamples)[m]
        out[m] = {}
        for name in METRIC_NAMES[data.family]:
            low, high = percentile_interval(metric(reps, name)) if _resamplable(data, [m]) else (math.nan, math.nan)
            out[m][name] = (observed(data, m, name), low, high)
    return out
