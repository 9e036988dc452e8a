"""The whole DAG through `dvc repro` on a tiny configuration of the demo: every stage's glue, DVC's matrix, skipping
what did not change, and adding a seed or a dataset running only what it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.working_tree import OUTPUTS, copy_working_tree

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "seeds": [1],
    "demo": {
        "world": {
            "web_per_class": 4,
            "train_per_class": 5,
            "val_per_class": 2,
            "test_per_class": 2,
            "gzsl_trainval_per_class": 4,
            "gzsl_test_seen_per_class": 2,
            "gzsl_test_unseen_per_class": 2,
        },
    },
    "fewshot": {"shots": 2},
    "gzsl": {"val_per_class": 1},
    "extract": {"views": 2, "workers": 0},
    "generator": {"epochs": 1, "encoder_hidden": 32, "bias_hidden": 32},
    "synthesize": {"per_class": 3},
    "finetune": {
        "coop": {"epochs": 1},
        "coop_ship": {"epochs": 1},
        "clip_adapter": {"epochs": 1},
        "tip_adapter_f": {"epochs": 1, "search_steps": [4, 3]},
    },
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _run(cmd: list[str], cwd: Path) -> str:
    # PYTHONPATH: `ship` runs the copy's code, not the checkout the editable install points at.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _write(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the working tree (tracked and untracked-not-ignored files) as its own git + DVC repository."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    copy_working_tree(repo, skip=OUTPUTS)
    (repo / "dvc.lock").unlink(missing_ok=True)
    _write(repo, _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo)
    return repo


@pytest.mark.slow
def test_repro_runs_every_family_then_skips_and_adds_only_what_changed(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    first = _ran(_run(["dvc", "repro"], repo))
    expected = {"demo_world", "report"}  # the demo CLIP is shipped, not trained
    expected |= {f"extract_eval@{d}" for d in params["datasets"]}
    for d in params["base_to_new"]["datasets"]:
        expected |= {f"b2n_{s}@{d}-1" for s in ("extract", "oracle_extract", "generator", "synthesize", "finetune")}
    for s in params["cross_dataset"]["sources"]:
        expected |= {f"xd_{k}@{s}-1" for k in ("extract", "generator", "source")}
        expected |= {
            f"xd_{k}@{s}-{t}-1" for k in ("synthesize", "finetune") for t in params["cross_dataset"]["targets"]
        }
    for g in params["gzsl"]["datasets"]:
        expected |= {f"gzsl_extract@{g}"} | {f"gzsl_{k}@{g}-1" for k in ("generator", "synthesize", "finetune")}
    assert first == expected

    metrics = repo / "reports" / "metrics"
    b2n = json.loads((metrics / "base_to_new.json").read_text())
    assert {"average", *params["base_to_new"]["datasets"]} == set(b2n)
    assert {"base", "new", "hm"} <= set(b2n["average"]["coop_ship"])
    xd = json.loads((metrics / "cross_dataset.json").read_text())
    assert "target_average" in xd[params["cross_dataset"]["sources"][0]]["coop_ship"]
    gz = json.loads((metrics / "gzsl.json").read_text())
    assert {"seen", "unseen", "hm"} <= set(gz[params["gzsl"]["datasets"][0]]["tip_adapter_f_ship"])
    assert "| CoOp + SHIP |" in (repo / "reports" / "base_to_new.md").read_text()
    assert not (repo / "data" / "demo" / "world" / "web").exists()  # only pre-training reads the web domain

    assert _ran(_run(["dvc", "repro"], repo)) == set()  # nothing changed: nothing runs

    # Downstream stages depend on the world's manifest, not its files; a hand-edited world image still makes DVC
    # regenerate the world (its out changed), which restores the image, and then nothing else needs to run.
    image = next((repo / "data" / "demo" / "world" / "shapes" / "images").rglob("*.png"))
    original = image.read_bytes()
    image.write_bytes(original[:-10])
    assert _ran(_run(["dvc", "repro"], repo)) == {"demo_world"}
    assert image.read_bytes() == original

    # A second seed: only its stages (the test splits and GZSL's seen images are not encoded again) and the report.
    params["seeds"] = [1, 2]
    _write(repo, params)
    added = _ran(_run(["dvc", "repro"], repo))
    assert added == {s.replace("-1", "-2") for s in expected if s.endswith("-1")} | {"report"}
    assert not any(s.startswith(("extract_eval", "gzsl_extract")) for s in added)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo))
    assert "coop_ship" in json.dumps(shown)

    # A fine-tuning param: every finetune instance and the report rerun, nothing upstream.
    params["finetune"]["coop"]["epochs"] = 2
    _write(repo, params)
    changed = _ran(_run(["dvc", "repro"], repo))
    assert changed and all(
        s.split("@")[0] in {"b2n_finetune", "xd_source", "xd_finetune", "gzsl_finetune", "report"} for s in changed
    )

    # A new dataset: only its stages and the report.
    first_b2n = params["base_to_new"]["datasets"][0]
    params["datasets"]["again"] = dict(params["datasets"][first_b2n])
    params["base_to_new"]["datasets"].append("again")
    _write(repo, params)
    added = _ran(_run(["dvc", "repro"], repo))
    new = {
        f"b2n_{k}@again-{s}"
        for k in ("extract", "oracle_extract", "generator", "synthesize", "finetune")
        for s in (1, 2)
    }
    assert added == {"extract_eval@again", "report"} | new

    # Dropping the cross-dataset and GZSL families leaves base-to-new alone: only the report reruns.
    params["cross_dataset"] = {"sources": [], "targets": []}
    params["gzsl"]["datasets"] = []
    params["datasets"] = {d: params["datasets"][d] for d in params["base_to_new"]["datasets"]}
    _write(repo, params)
    assert _ran(_run(["dvc", "repro"], repo)) == {"report"}
    assert not (repo / "reports" / "gzsl.md").exists()
