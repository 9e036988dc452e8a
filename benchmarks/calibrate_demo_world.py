"""Calibrate the demo world's benchmark domain: does CoOp, fit to the base classes, gain on base and lose on new?

The premise SHIP starts from, on real data (CoCoOp's Table 1, averages over 11 datasets): CoOp beats zero-shot CLIP
by about +13 points on base classes and loses about 11 on new ones. The demo world's knobs that shape its benchmark
domain, `demo.world.shift` (strength of the web -> benchmark shift) and `demo.world.new_classes` (combinations |
new_nouns), are calibrated so that the demo shows that premise, with targets: CoOp base gain >= 8 and new loss >= 5
(dataset average over shapes and patterns).

What runs, per setting (new_classes x shift) and HELD-OUT world seed (never the reported `demo.world.seed`): the
benchmark world is rendered with that seed (no web domain), the shipped demo backbone encodes shapes' and patterns'
test splits and one few-shot draw (replicate seed 1, 16 shots, everything else as params.yaml), and only zero-shot
CLIP and CoOp (its reference recipe, with `finetune.select` both `last` and `val`) are scored base-to-new. No SHIP
method runs, so no SHIP margin can steer the choice. The library is called directly in a scratch directory
(--workdir); each (setting, seed) writes its scores there and is reused by a later run of the script.

The rule that picks the setting, fixed before any run: per setting, G = CoOp base - zero-shot base and L = zero-shot
new - CoOp new, each the mean over held-out world seeds of the dataset average, for each of select=val and
select=last. A setting meets the targets when G >= 8 and L >= 5 under both selections. Its distance to the premise is
the mean over the two selections of sqrt((G - 13)^2 + (L - 11)^2). The chosen setting is the one with the smallest
distance among those meeting the targets, or, if none does, the one with the smallest distance overall (flagged).

    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_demo_world.py --time-one         # one world, timed
    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_demo_world.py                    # the grid + the table
    PYTHONPATH=. .venv/bin/python benchmarks/calibrate_demo_world.py --shifts 0.4 0.8 --world-seeds 101 102 103

Prints a Markdown table (one row per setting: zero-shot and CoOp base/new per selection, G and L) and the choice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.backbone import load_backbone  # noqa: E402
from pipeline.demo.weights import SHIPPED_DIR, WEIGHTS_FILE  # noqa: E402
from pipeline.demo.world import generate_world  # noqa: E402
from pipeline.feature_store import FeatureStore  # noqa: E402
from pipeline.finetune import fit_method  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.params import Params, parse_params  # noqa: E402
from pipeline.tasks import base_to_new_task  # noqa: E402
from stages import extract_eval, extract_train  # noqa: E402

log = logging.getLogger("calibrate")
DATASETS = ("shapes", "patterns")
SELECTS = ("val", "last")
REPLICATE_SEED = 1
PREMISE = (13.0, 11.0)  # CoCoOp Table 1 averages: CoOp base gain, new loss
TARGETS = (8.0, 5.0)


def setting_params(world_root: Path, seed: int, shift: float, new_classes: str, select: str, backbone: Path) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["seeds"] = [REPLICATE_SEED]
    data["backbone"]["pretrained"] = str(backbone)
    data["backbone"]["device"] = "cpu"
    data["datasets"] = {name: {**data["datasets"][name], "root": str(world_root / name)} for name in DATASETS}
    data["base_to_new"] = {"datasets": list(DATASETS)}
    data["cross_dataset"] = {"sources": [], "targets": []}
    data["gzsl"]["datasets"] = []
    data["demo"]["world"].update(seed=seed, shift=shift, new_classes=new_classes)
    data["finetune"]["methods"] = ["zeroshot", "coop"]
    data["finetune"]["select"] = select
    return parse_params(data, f"calibration params (world seed {seed}, shift {shift}, {new_classes}, select {select})")


_JOB: dict[str, Any] = {}  # what forked fit workers inherit


def _fit(job: tuple[str, str, str]) -> tuple[str, str, str, dict[str, float]]:
    import torch

    torch.set_num_threads(1)
    dataset, method, select = job
    task, tower, params = _JOB["tasks"][dataset], _JOB["tower"], _JOB["params"][select]
    result = fit_method(method, task, tower, params.for_dataset(dataset).finetune, REPLICATE_SEED, None)
    return dataset, method, select, {k: float(v) for k, v in result.scores.items()}


def run_world(workdir: Path, seed: int, shift: float, new_classes: str, backbone: Path, workers: int) -> dict:
    """Scores of zero-shot and CoOp (last, val) on shapes and patterns for one world; cached in workdir."""
    name = f"{new_classes}-shift{shift:g}-seed{seed}"
    cached = workdir / "scores" / f"{name}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    params = {s: setting_params(root / "world", seed, shift, new_classes, s, backbone) for s in SELECTS}
    generate_world(params["val"].demo.world, root / "world", workers=workers, web=False)
    t_world = time.perf_counter()
    layout = Layout(root)
    for dataset in DATASETS:
        extract_eval.run(params["val"], dataset, layout)
        extract_train.run(params["val"], "base_to_new", dataset, REPLICATE_SEED, layout)
    t_extract = time.perf_counter()
    bb = load_backbone(params["val"].backbone)
    identity = bb.identity()
    tasks = {
        d: base_to_new_task(
            FeatureStore.open(layout.eval_store(d), identity, kind="eval"),
            FeatureStore.open(layout.train_store("base_to_new", d, REPLICATE_SEED), identity, kind="train"),
        )
        for d in DATASETS
    }
    jobs = [(d, "zeroshot", "val") for d in DATASETS] + [(d, "coop", s) for d in DATASETS for s in SELECTS]
    _JOB.update(tasks=tasks, tower=bb.text_tower(), params=params)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            fits = list(pool.map(_fit, jobs))
    finally:
        _JOB.clear()
    scores: dict[str, Any] = {d: {} for d in DATASETS}
    for dataset, method, select, s in fits:
        scores[dataset]["zeroshot" if method == "zeroshot" else f"coop_{select}"] = {
            "base": s["base"],
            "new": s["new"],
        }
    end = time.perf_counter()
    out = {
        "world_seed": seed,
        "shift": shift,
        "new_classes": new_classes,
        "scores": scores,
        "seconds": {"world": t_world - start, "extract": t_extract - t_world, "fit": end - t_extract},
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)  # features and images: only the scores are kept
    log.info("%s: %.0f s (world %.0f, extract %.0f, fit %.0f)", name, end - start, *out["seconds"].values())
    return out


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Means over worlds of the dataset-average scores; G and L per selection; distance to the premise."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def avg(run: dict, key: str, half: str) -> float:  # dataset average of one world
        return mean([run["scores"][d][key][half] for d in DATASETS])

    row: dict[str, Any] = {"worlds": len(runs)}
    for key in ("zeroshot", *(f"coop_{s}" for s in SELECTS)):
        for half in ("base", "new"):
            row[f"{key}.{half}"] = mean([avg(r, key, half) for r in runs])
    for dataset in DATASETS:
        for half in ("base", "new"):
            row[f"{dataset}.zeroshot.{half}"] = mean([r["scores"][dataset]["zeroshot"][half] for r in runs])
    distances, meets = [], True
    for s in SELECTS:
        gain = row[f"coop_{s}.base"] - row["zeroshot.base"]
        loss = row["zeroshot.new"] - row[f"coop_{s}.new"]
        row[f"G.{s}"], row[f"L.{s}"] = gain, loss
        # spread over worlds, to judge how much one world seed moves G and L
        row[f"G.{s}.min"] = min(avg(r, f"coop_{s}", "base") - avg(r, "zeroshot", "base") for r in runs)
        row[f"L.{s}.min"] = min(avg(r, "zeroshot", "new") - avg(r, f"coop_{s}", "new") for r in runs)
        distances.append(math.hypot(gain - PREMISE[0], loss - PREMISE[1]))
        meets &= gain >= TARGETS[0] and loss >= TARGETS[1]
    row["distance"], row["meets"] = mean(distances), meets
    return row


def table(rows: dict[tuple[str, float], dict[str, Any]]) -> str:
    head = (
        "| new_classes | shift | worlds | zero-shot base / new | shapes ZS base / new | patterns ZS base / new "
        "| CoOp val base / new | G val | L val | CoOp last base / new | G last | L last | meets | distance |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (new_classes, shift), r in rows.items():
        lines.append(
            f"| {new_classes} | {shift:g} | {r['worlds']} "
            f"| {r['zeroshot.base']:.1f} / {r['zeroshot.new']:.1f} "
            f"| {r['shapes.zeroshot.base']:.1f} / {r['shapes.zeroshot.new']:.1f} "
            f"| {r['patterns.zeroshot.base']:.1f} / {r['patterns.zeroshot.new']:.1f} "
            f"| {r['coop_val.base']:.1f} / {r['coop_val.new']:.1f} | {r['G.val']:+.1f} | {r['L.val']:+.1f} "
            f"| {r['coop_last.base']:.1f} / {r['coop_last.new']:.1f} | {r['G.last']:+.1f} | {r['L.last']:+.1f} "
            f"| {'yes' if r['meets'] else 'no'} | {r['distance']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-classes", nargs="+", default=["combinations", "new_nouns"])
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.4, 0.8])
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ship-calibrate-demo-world"))
    parser.add_argument("--backbone", type=Path, default=ROOT / SHIPPED_DIR / WEIGHTS_FILE)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--time-one", action="store_true", help="run one world (the first setting and seed), timed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("pipeline", "stages", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)
    reported = yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]["world"]["seed"]
    if reported in args.world_seeds:
        parser.error(f"world seed {reported} is the reported world's (params.yaml demo.world.seed): use held-out seeds")
    settings = list(itertools.product(args.new_classes, args.shifts))
    if args.time_one:
        settings, args.world_seeds = settings[:1], args.world_seeds[:1]
    start = time.perf_counter()
    rows = {}
    for new_classes, shift in settings:
        runs = [run_world(args.workdir, s, shift, new_classes, args.backbone, args.workers) for s in args.world_seeds]
        rows[(new_classes, shift)] = summarize(runs)
    print(
        f"\n{len(settings)} settings x {len(args.world_seeds)} held-out world seeds {args.world_seeds}; "
        f"{time.perf_counter() - start:.0f} s (scores cached in {args.workdir / 'scores'})\n"
    )
    print(table(rows))
    pool = [k for k, r in rows.items() if r["meets"]] or list(rows)
    chosen = min(pool, key=lambda k: rows[k]["distance"])
    flag = "" if rows[chosen]["meets"] else " (NO setting meets the targets; the closest one)"
    print(f"\nchosen: new_classes={chosen[0]}, shift={chosen[1]:g}{flag}")


if __name__ == "__main__":
    main()
