"""Do the demo's claims hold for other demo backbones, not only the default one?

For each demo-backbone seed (`demo.backbone.seed`), a copy of the working tree runs the whole default demo with
`dvc repro` (the DVC cache is shared between the copies, so the demo world is generated once), and the script prints
the margins the README states, from each copy's reports/metrics. The DAG does not train the demo CLIP: a copy whose
recipe or web corpus differs from the shipped weights' (data/demo/backbone/provenance.json) first pre-trains its own
with `ship pretrain-demo` into its data/demo/backbone (~45 min on 2 cores at the default 30 epochs).

  base-to-new (average over datasets, 3-seed means):  coop_ship.new - coop.new   (claim: >= 5)
                                                       coop_ship.hm  - coop.hm    (claim: > 0)
                                                       tip_adapter_f_ship.hm - zeroshot.hm (claim: > 0)
  cross-dataset (target average):                      each *_ship method - its base method
  GZSL (H):                                            each *_ship method - its base method

Usage: python benchmarks/demo_backbone_seeds.py [--seeds 0 1 2] [--workdir DIR] [--with-checkout]
                                                [--set KEY=VALUE ...] [--base-to-new-only]
A full demo takes ~30-40 minutes on 2 CPU cores, plus the pre-training for every seed but the shipped one.
`--with-checkout` adds this checkout's own finished run (its reports/metrics, after `make repro`) as the row of its
backbone seed, so `--seeds 1 2 --with-checkout` covers three backbones with two new runs. `--set` changes params in
every copy (e.g. `--set demo.world.new_classes=new_nouns`; use its own --workdir); `--base-to-new-only` runs only the
base-to-new stages (`dvc repro b2n_finetune`, ~20 min per backbone) and prints the base-to-new margins, aggregated
from results/ exactly as the report does.
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

from pipeline.demo.weights import WEB_CORPUS_KEYS, read_provenance  # noqa: E402
from pipeline.results import aggregate_pairs, average_pairs  # noqa: E402
from pipeline.working_tree import OUTPUTS, copy_working_tree  # noqa: E402

BIN = Path(sys.executable).parent
PAIRS = [("coop_ship", "coop"), ("clip_adapter_ship", "clip_adapter"), ("tip_adapter_f_ship", "tip_adapter_f")]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    log = cwd / "repro.log"
    with log.open("a") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}; see {log}")


def set_param(params: dict, assignment: str) -> None:
    """Apply one `key.sub=value` (value parsed as YAML) to a params dict; the key must exist (params.yaml spells
    every key out), so a typo fails here instead of in the copy's `dvc repro`."""
    key, sep, value = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set {assignment!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise SystemExit(f"--set {assignment!r}: params.yaml has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"--set {assignment!r}: params.yaml has no key {key!r}")
    node[leaf] = yaml.safe_load(value)


def demo_run(workdir: Path, seed: int, sets: list[str], base_to_new_only: bool) -> tuple[dict, float]:
    repo = workdir / f"backbone-seed{seed}"
    done = repo / "demo_run.done"  # what was run, written only after it succeeded
    targets = ["b2n_finetune"] if base_to_new_only else []
    what = json.dumps({"targets": targets, "set": sets})
    if not (done.exists() and done.read_text() == what):
        if repo.exists():
            shutil.rmtree(repo)
        copy_working_tree(repo, skip=OUTPUTS)
        (repo / "dvc.lock").unlink(missing_ok=True)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        for assignment in [f"demo.backbone.seed={seed}", *sets]:
            set_param(params, assignment)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if needs_own_weights(params):
            run(["ship", "pretrain-demo", "--out", "data/demo/backbone"], repo)
        run(["git", "init", "-q"], repo)
        run(["dvc", "cache", "dir", str(workdir / "dvc-cache")], repo)
        start = time.perf_counter()
        run(["dvc", "repro", *targets], repo)
        seconds = time.perf_counter() - start
        done.write_text(what)
    else:
        seconds = float("nan")  # reused from an earlier run of this script
    return (base_to_new_metrics(repo) if base_to_new_only else read_metrics(repo)), seconds


def needs_own_weights(params: dict) -> bool:
    """Whether these params' demo CLIP differs from the shipped one (another recipe or web corpus)."""
    shipped = read_provenance()
    world = params["demo"]["world"]
    return shipped["recipe"] != params["demo"]["backbone"] or any(
        shipped["web_corpus"][key] != world[key] for key in WEB_CORPUS_KEYS
    )


def base_to_new_metrics(repo: Path) -> dict:
    """The base-to-new metrics the report would write, from the per-seed results (no report stage needed)."""
    per_dataset = {}
    for folder in sorted((repo / "results" / "base_to_new").iterdir()):
        scores = sorted(folder.glob("seed*/finetune/scores.json"))
        per_dataset[folder.name] = aggregate_pairs([json.loads(f.read_text()) for f in scores], "base_to_new")
    return {"base_to_new": {**per_dataset, "average": average_pairs(per_dataset, "base_to_new")}}


def read_metrics(repo: Path) -> dict:
    return {
        name: json.loads((repo / "reports" / "metrics" / f"{name}.json").read_text())
        for name in ("base_to_new", "cross_dataset", "gzsl")
    }


def margins(metrics: dict) -> dict[str, float]:
    b2n = metrics["base_to_new"]["average"]
    out = {
        # The paper's premise, no claim of the issue: CoOp fit to base classes loses new-class accuracy.
        "b2n new: coop - zeroshot": b2n["coop"]["new"] - b2n["zeroshot"]["new"],
        "b2n new: coop_ship - coop": b2n["coop_ship"]["new"] - b2n["coop"]["new"],
        "b2n H: coop_ship - coop": b2n["coop_ship"]["hm"] - b2n["coop"]["hm"],
        "b2n H: tip_adapter_f_ship - zeroshot": b2n["tip_adapter_f_ship"]["hm"] - b2n["zeroshot"]["hm"],
    }
    for source, table in metrics.get("cross_dataset", {}).items():
        for ship, base in PAIRS:
            out[f"xd {source} target avg: {ship} - {base}"] = (
                table[ship]["target_average"] - table[base]["target_average"]
            )
    for dataset, table in metrics.get("gzsl", {}).items():
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
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="param override in every copy"
    )
    parser.add_argument("--base-to-new-only", action="store_true", help="run and report the base-to-new stages only")
    args = parser.parse_args()
    if args.with_checkout and args.sets:
        parser.error("--with-checkout reads this checkout's run, which --set does not change")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = {}
    if args.with_checkout:
        seed = yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]["backbone"]["seed"]
        rows[seed] = margins(read_metrics(ROOT))
        print(f"backbone seed {seed}: this checkout's reports/metrics", flush=True)
    for seed in args.seeds:
        metrics, seconds = demo_run(args.workdir, seed, args.sets, args.base_to_new_only)
        rows[seed] = margins(metrics)
        ran = "reused from an earlier run" if seconds != seconds else f"demo run {seconds / 60:.1f} min"
        print(f"backbone seed {seed}: {ran} in {args.workdir / f'backbone-seed{seed}'}", flush=True)
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
