"""Under `dvc repro`: kill -9 anywhere recovers identical outputs (benchmarks/fault_injection.py, short version; only
with SHIP_FAULT_INJECTION=1, it takes minutes), and bad params never delete the demo world before failing. Slow:
each runs `dvc repro` in a copy of the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks.fault_injection import _env, make_repo, run_fault_injection, summary


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=600)


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bad_params_never_delete_the_demo_world_before_failing(tmp_path):
    repo = make_repo(tmp_path / "repo", short=True, demo_stages=True)
    world = repo / "data/demo/world"
    committed = _dvc(repo, "commit", "-f", "demo_world")  # the given world stands for a finished demo_world run
    assert committed.returncode == 0, committed.stderr
    before = _tree(world)
    good = (repo / "params.yaml").read_text()

    (repo / "params.yaml").write_text("")  # empty: dvc.yaml's matrices cannot even be resolved
    failed = _dvc(repo, "repro", "demo_world")
    assert failed.returncode != 0 and "Could not find 'datasets'" in failed.stderr + failed.stdout
    assert _tree(world) == before

    params = yaml.safe_load(good)
    params["demo"]["world"]["image_size"] = -5  # parsed by DVC (the stage's params changed), refused by ship
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = _dvc(repo, "repro", "demo_world")
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "demo.world.image_size" in out and "exited with 2" in out
    assert _tree(world) == before  # persist: DVC did not remove it before running the stage

    (repo / "params.yaml").write_text(good)
    status = _dvc(repo, "status", "demo_world")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    assert not any(p.name.startswith(".world.") for p in world.parent.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SHIP_FAULT_INJECTION"),
    reason="about 4 minutes on a 2-core machine: set SHIP_FAULT_INJECTION=1 (or run benchmarks/fault_injection.py)",
)
def test_kill_9_at_any_stage_recovers_identical_outputs(tmp_path):
    result = run_fault_injection(tmp_path, short=True, seed=int(os.environ.get("FAULT_SEED", "0")), echo=print)
    text, ok = summary(result)
    print(text)
    assert ok, text
    # A stage that finished before its kill is forced to run again and killed earlier ("killed (attempt n)"): the
    # uninterrupted run's stage times, which place the kills, move with the machine's load.
    assert all(k.outcome.startswith("killed") for k in result["kills"]), text
