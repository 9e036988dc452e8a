"""A team shares caches through a DVC remote: one clone runs the pipeline and pushes; a fresh clone pulls and
`dvc repro` runs nothing. A tiny self-contained pipeline (base-to-new on the tiny world's `alpha`, one seed: every
per-seed stage of the real DAG through the real `ship` commands) in a temporary git repository, with a
local-directory remote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import tiny_world

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIP = "python -m tests.tiny_ship"  # `ship`, knowing the tests' tiny model config (PYTHONPATH below)

DVC_YAML = {
    "stages": {
        "extract_eval": {
            "matrix": {"dataset": ["alpha"]},
            "cmd": f"{SHIP} extract-eval --dataset ${{item.dataset}}",
            "deps": ["world/alpha", "tiny.pt"],
            "params": ["backbone", "datasets.${item.dataset}", "extract"],
            "outs": ["data/features/${item.dataset}/eval.zarr"],
        },
        "b2n_extract": {
            "matrix": {"dataset": ["alpha"], "seed": "${seeds}"},
            "cmd": f"{SHIP} extract-train --protocol base_to_new --dataset ${{item.dataset}} --seed ${{item.seed}}",
            "deps": ["world/alpha", "tiny.pt"],
            "params": ["backbone", "datasets.${item.dataset}", "fewshot", "extract"],
            "outs": ["data/features/${item.dataset}/base-seed${item.seed}.zarr"],
        },
        "b2n_generator": {
            "matrix": {"dataset": ["alpha"], "seed": "${seeds}"},
            "cmd": f"{SHIP} train-generator --protocol base_to_new --dataset ${{item.dataset}} --seed ${{item.seed}}",
            "deps": ["data/features/${item.dataset}/base-seed${item.seed}.zarr"],
            "params": ["generator"],
            "outs": [
                "data/generators/base_to_new/${item.dataset}/seed${item.seed}.pt",
                {"results/base_to_new/${item.dataset}/seed${item.seed}/generator": {"cache": False}},
            ],
        },
        "b2n_synthesize": {
            "matrix": {"dataset": ["alpha"], "seed": "${seeds}"},
            "cmd": f"{SHIP} synthesize --protocol base_to_new --dataset ${{item.dataset}} --seed ${{item.seed}}",
            "deps": [
                "data/features/${item.dataset}/eval.zarr",
                "data/generators/base_to_new/${item.dataset}/seed${item.seed}.pt",
            ],
            "params": ["synthesize"],
            "outs": [
                "data/synthetic/base_to_new/${item.dataset}/seed${item.seed}.zarr",
                {"results/base_to_new/${item.dataset}/seed${item.seed}/synthesis": {"cache": False}},
            ],
        },
        "b2n_finetune": {
            "matrix": {"dataset": ["alpha"], "seed": "${seeds}"},
            "cmd": f"{SHIP} finetune --protocol base_to_new --dataset ${{item.dataset}} --seed ${{item.seed}}",
            "deps": [
                "data/features/${item.dataset}/eval.zarr",
                "data/features/${item.dataset}/base-seed${item.seed}.zarr",
                "data/generators/base_to_new/${item.dataset}/seed${item.seed}.pt",
                "data/synthetic/base_to_new/${item.dataset}/seed${item.seed}.zarr",
            ],
            "params": ["finetune"],
            "outs": [{"results/base_to_new/${item.dataset}/seed${item.seed}/finetune": {"cache": False}}],
        },
    }
}
STAGES = {"extract_eval@alpha", "b2n_extract@alpha-1", "b2n_generator@alpha-1", "b2n_synthesize@alpha-1"}
STAGES |= {"b2n_finetune@alpha-1"}


def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SHIP_EXTRACT_NPROC"):
        env.pop(name, None)
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _git(args: list[str], cwd: Path) -> str:
    return _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd)


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _tiny_repo(repo: Path) -> None:
    """A git + DVC repository holding the tiny world (DVC-tracked), the tiny checkpoint, params and dvc.yaml."""
    repo.mkdir()
    params = tiny_world.build(repo)
    for spec in params["datasets"].values():  # repo-relative, so every clone finds them
        spec["root"] = os.path.relpath(spec["root"], repo)
        if spec["image_root"]:
            spec["image_root"] = os.path.relpath(spec["image_root"], repo)
    params["backbone"]["pretrained"] = "tiny.pt"
    params["seeds"] = [1]
    params["finetune"]["methods"] = ["zeroshot", "coop_ship", "clip_adapter", "tip_adapter_f_ship"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "add", "-q", "world", "tiny.pt"], repo)  # the team's data: in DVC's cache, pushed with the rest
    _git(["add", "-A"], repo)
    _git(["commit", "-qm", "tiny pipeline"], repo)


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_reruns_nothing(tmp_path):
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    _tiny_repo(origin)
    assert _ran(_run(["dvc", "repro"], origin)) == STAGES
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], origin)
    _git(["add", "-A"], origin)
    _git(["commit", "-qm", "results and remote"], origin)  # dvc.lock and the remote's config go to git
    pushed = _run(["dvc", "push"], origin)
    assert "pushed" in pushed and any(remote.rglob("*"))

    _run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    stores = ["data/features/alpha/eval.zarr", "data/features/alpha/base-seed1.zarr", "world/alpha"]
    assert not any((clone / path).exists() for path in stores)  # git has only their .dvc / dvc.lock records
    _run(["dvc", "pull"], clone)
    assert all((clone / path).exists() for path in stores)
    assert (clone / "data/synthetic/base_to_new/alpha/seed1.zarr/zarr.json").exists()
    status = _run(["dvc", "status"], clone)
    assert "up to date" in status, status
    again = _run(["dvc", "repro"], clone)
    assert _ran(again) == set(), again
    assert "didn't change, skipping" in again
    # The per-seed figures (outs with cache: false) travel through git, the stores through the remote.
    assert (clone / "results/base_to_new/alpha/seed1/finetune/scores.json").exists()
