"""Do the demo's claims hold for other demo backbones, not only the default one?

For each demo-backbone seed (`demo.backbone.seed`), a copy of the working tree runs the whole default demo with
`dvc repro` (the DVC cache is shared between the copies, so the demo world is generated once), and the script prints
the margins the README states, from each copy's reports/metrics:

  base-to-new (average over datasets, 3-seed means):  coop_ship.new - coop.new   (claim: >= 5)
                                                       coop_ship.hm  - coop.hm    (claim: > 0)
                                                       tip_adapter_f_ship.hm - zeroshot.hm (claim: > 0)
  cross-dataset (target average):                      each *_ship method - its base method
  GZSL (H):                                            each *_ship method - its base method

Usage: python benchmarks/demo_backbone_seeds.py [--seeds 0 1 2] [--workdir DIR] [--with-checkout]
A full demo takes ~20-30 minutes on 2 CPU cores, so three backbone seeds take about an hour. `--with-checkout` adds
this checkout's own finished run (its reports/metrics, after `make repro`) as the row of its backbone seed, so
`--seeds 1 2 --with-checkout` covers three backbones with two new runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.working_tree import OUTPUTS, copy_working_tree  # noqa: E402

BIN = Path(sys.executable).parent
PAIRS = [("coop_ship", "coop"), ("clip_adapter_ship", "clip_adapter"), ("tip_adapter_f_ship", "tip_adapter_f")]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    log = cwd / "repro.log"
    with log.open("a") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}; see {log}")


def demo_run(workdir: Path, seed: int) -> tuple[dict, float]:
    repo = workdir / f"backbone-seed{seed}"
    if not (repo / "reports" / "metrics" / "base_to_new.json").exists():
        if repo.exists():
            shutil.rmtree(repo)
        copy_working_tree(repo, skip=OUTPUTS)
        (repo / "dvc.lock").unlink(missing_ok=True)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["demo"]["backbone"]["seed"] = seed
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "init", "-q"], repo)
        run(["dvc", "cache", "dir", str(workdir / "dvc-cache")], repo)
        start = time.perf_counter()
        run(["dvc", "repro"], repo)
        seconds = time.perf_counter() - start
    else:
        seconds = float("nan")  # reused from an earlier run of this script
    return read_metrics(repo), seconds


def read_metrics(repo: Path) -> dict:
    return {
        name: json.loads((repo / "reports" / "metrics" / f"{name}.json").read_text())
        for name in ("base_to_new", "cross_dataset", "gzsl")
    }


def margins(metrics: dict) -> dict[str, float]:
    b2n = metrics["base_to_new"]["average"]
    out = {
        "b2n new: coop_ship - coop": b2n["coop_ship"]["new"] - b2n["coop"]["new"],
        "b2n H: coop_ship - coop": b2n["coop_ship"]["hm"] - b2n["coop"]["hm"],
        "b2n H: tip_adapter_f_ship - zeroshot": b2n["tip_adapter_f_ship"]["hm"] - b2n["zeroshot"]["hm"],
    }
    for source, table in metrics["cross_dataset"].items():
        for ship, base in PAIRS:
            out[f"xd {source} target avg: {ship} - {base}"] = (
                table[ship]["target_average"] - table[base]["target_average"]
            )
    for dataset, table in metrics["gzsl"].items():
        for ship, base in PAIRS:
            out[f"gzsl {dataset} H: {ship} - {base}"] = table[ship]["hm"] - table[base]["hm"]
    return out


CLAIMS = {
    "b2n new: coop_ship - coop": 5.0,
    "b2n H: coop_ship - coop": 0.0,
    "b2n H: tip_adapter_f_ship - zeroshot": 0.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="demo.backbone.seed values")
    parser.add_argument("--with-checkout", action="store_true", help="add this checkout's finished run as a row")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ship-backbone-seeds"), help="copies + shared cache")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = {}
    if args.with_checkout:
        seed = yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]["backbone"]["seed"]
        rows[seed] = margins(read_metrics(ROOT))
        print(f"backbone seed {seed}: this checkout's reports/metrics", flush=True)
    for seed in args.seeds:
        metrics, seconds = demo_run(args.workdir, seed)
        rows[seed] = margins(metrics)
        print(f"backbone seed {seed}: demo run {seconds / 60:.1f} min", flush=True)
    keys = list(next(iter(rows.values())))
    width = max(len(k) for k in keys)
    print(
        f"\n{'margin (3 replicate seeds each)':{width}} | " + " | ".join(f"bb seed {s:>2}" for s in rows) + " | claim"
    )
    for key in keys:
        values = [rows[s][key] for s in rows]
        claim = CLAIMS.get(key)
        verdict, threshold = "", ""
        if claim is not None:
            holds = min(values) >= claim if claim else min(values) > 0
            verdict, threshold = ("holds" if holds else "FAILS"), (f">= {claim:g}" if claim else "> 0")
        print(f"{key:{width}} | " + " | ".join(f"{v:+10.2f}" for v in values) + f" | {threshold} {verdict}")


if __name__ == "__main__":
    main()
