"""The whole DAG through `dvc repro` on a tiny configuration: every stage's glue, DVC's skipping and reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "demo": {
        "world": {"web_per_class": 6, "train_per_class": 5, "val_per_class": 2, "test_per_class": 3},
        "backbone": {"epochs": 1, "batch_size": 64},
    },
    "dataset": {"shots": 4, "val_shots": 2},
    "extract": {"views": 2, "workers": 0},
    "generator": {"epochs": 2, "encoder_hidden": 64, "bias_hidden": 64},
    "synthesize": {"per_class": 5},
    "finetune": {
        "seeds": [1, 2],
        "coop": {"epochs": 2},
        "clip_adapter": {"epochs": 2},
        "tip_adapter_f": {"epochs": 2},
    },
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_dvc_repro_runs_skips_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in files.split():
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "init", "--allow-empty"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo)

    first = _run(["dvc", "repro"], repo)
    assert _ran(first) == {
        "demo_world",
        "demo_backbone",
        "extract",
        "train_generator",
        "synthesize",
        "finetune",
        "report",
    }
    metrics = json.loads((repo / "metrics/finetune.json").read_text())
    for method in ("zeroshot", "coop", "coop_ship", "clip_adapter", "tip_adapter_f_ship"):
        assert {"base", "new", "hm", "joint_hm"} <= set(metrics[method])
    generator = json.loads((repo / "metrics/generator.json").read_text())["generator"]
    assert 0.0 <= generator["synthetic_zeroshot_acc"] <= 100.0
    assert "| CoOp + SHIP |" in (repo / "reports/table.md").read_text()
    assert (repo / "plots/finetune_val_acc/coop_ship.csv").exists()
    assert json.loads((repo / "metrics/demo_backbone.json").read_text())["demo_backbone"]["trained"] is True

    assert _ran(_run(["dvc", "repro"], repo)) == set()  # nothing changed: nothing runs

    params["finetune"]["seeds"] = [3]  # a fine-tuning param whose change always changes the metrics
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run(["dvc", "repro"], repo)
    assert _ran(changed) == {"finetune", "report"}
    shown = _run(["dvc", "metrics", "show", "--json"], repo)
    assert "coop_ship" in shown and "synthetic_zeroshot_acc" in shown
