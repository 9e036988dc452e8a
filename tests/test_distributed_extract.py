"""Extraction by several ranks of one job (CPU processes, gloo) builds the store one process builds, array for array;
a killed run resumes with any number of ranks; `torchrun ... ship extract-*` and `ship extract-* --nproc` work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.backbone import load_backbone
from pipeline.extract import extract_features
from pipeline.extraction_plans import ExtractionPlan, SplitPlan
from pipeline.feature_store import FeatureStore, StoreBuilder, StoreError, partial_path, progress_file_name
from pipeline.params import BackboneParams, ExtractParams
from pipeline.ranks import RankError, Ranks, rank_context, spawn_ranks
from stages.cli import app
from tests import tiny_world
from tests.conftest import TINY_MODEL
from tests.extract_fixtures import tiny_checkpoint, tiny_splits

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIP = [sys.executable, "-m", "tests.tiny_ship"]  # `ship`, knowing the tests' tiny model config
# train: 12 images in 3 blocks of 4, 2 images (x 3 views) per batch; val: 1 block; test: 2 blocks
EXTRACT = ExtractParams(views=2, batch_size=6, workers=0, block_size=4, templates=("a photo of a {}.",))
ALL_BLOCKS = {("train", 0), ("train", 1), ("train", 2), ("val", 0), ("test", 0), ("test", 1)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    splits = tiny_splits(tmp / "images")
    plan = ExtractionPlan(
        splits=[
            SplitPlan("train", splits.train, 2),
            SplitPlan("val", splits.val, 0),
            SplitPlan("test", splits.test, 0),
        ],
        classnames=list(splits.classnames),
        classifiers={"zeroshot": ["a photo of a {}.", "a {}."]},
        seed=1,
        meta={"kind": "eval"},
    )
    ckpt = tiny_checkpoint(tmp / "tiny.pt")
    reference = extract_features(plan, _backbone(ckpt), EXTRACT, tmp / "one-rank.zarr", progress=False)
    return plan, ckpt, _arrays(reference)


def _backbone(ckpt: Path):
    return load_backbone(BackboneParams(model=TINY_MODEL, pretrained=str(ckpt), device="cpu"))


def _arrays(path: Path) -> dict[str, object]:
    store = FeatureStore.open(path)
    out: dict[str, object] = {name: store.array(name) for name in ("classifiers/zeroshot",)}
    for split in ("train", "val", "test"):
        for field in ("features", "norms", "labels", "valid"):
            out[f"{split}/{field}"] = store.array(f"{split}/{field}")
    out["meta"] = store.meta
    return out


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "meta":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _recorded(out: Path) -> set[tuple[str, int]]:
    """Blocks recorded as done in every rank's progress file of a partial store."""
    done = set()
    for file in partial_path(out).glob("progress*.json"):
        for split, blocks in json.loads(file.read_text())["blocks"].items():
            done |= {(split, b) for b in blocks}
    return done


def _job(plan: ExtractionPlan, ckpt: Path, out: Path, log_dir: Path, die: tuple[int, int] | None = None) -> None:
    """One rank (a spawned process): extract, logging the blocks this rank writes; `die` = (rank, n): that rank
    is killed (os._exit, no clean-up) when it is about to write its (n+1)-th block."""
    ranks_env = Ranks.from_env()
    original = StoreBuilder.write_block
    written: list[tuple[str, int]] = []

    def logged(self, split, block, *arrays):
        if die is not None and die[0] == ranks_env.rank and len(written) == die[1]:
            os._exit(3)
        original(self, split, block, *arrays)
        written.append((split, block))
        (log_dir / f"rank{ranks_env.rank}.json").write_text(json.dumps(written))

    StoreBuilder.write_block = logged
    with rank_context("cpu") as (ranks, device):
        assert ranks.world_size > 1 and device is not None and device.type == "cpu"
        extract_features(plan, _backbone(ckpt), EXTRACT, out, progress=False, ranks=ranks)


def _written(log_dir: Path) -> list[tuple[str, int]]:
    return [tuple(x) for f in sorted(log_dir.glob("rank*.json")) for x in json.loads(f.read_text())]


def test_two_ranks_build_the_one_rank_store(world, tmp_path):
    plan, ckpt, reference = world
    logs = tmp_path / "logs"
    logs.mkdir()
    spawn_ranks(2, _job, plan, ckpt, tmp_path / "two.zarr", logs)
    _assert_same(reference, _arrays(tmp_path / "two.zarr"))
    per_rank = {f.name: {tuple(x) for x in json.loads(f.read_text())} for f in logs.glob("rank*.json")}
    assert set(per_rank) == {"rank0.json", "rank1.json"}
    assert per_rank["rank0.json"] | per_rank["rank1.json"] == ALL_BLOCKS
    assert not per_rank["rank0.json"] & per_rank["rank1.json"]  # each block written once, by one rank
    assert not partial_path(tmp_path / "two.zarr").exists()


def test_killed_two_rank_run_resumes_with_one_rank(world, tmp_path, monkeypatch):
    plan, ckpt, reference = world
    out, logs = tmp_path / "s.zarr", tmp_path / "logs"
    logs.mkdir()
    with pytest.raises(RankError, match="rank 1 of 2 exited with code 3"):
        spawn_ranks(2, _job, plan, ckpt, out, logs, (1, 1))  # rank 1 dies after one block
    assert not out.exists()
    done = _recorded(out)
    assert ("train", 1) in done  # rank 1's first block (round-robin: train 1, val 0, test 1)
    assert (partial_path(out) / progress_file_name(1)).exists()
    rewritten = []
    original = StoreBuilder.write_block
    monkeypatch.setattr(
        StoreBuilder,
        "write_block",
        lambda self, split, block, *a: (rewritten.append((split, block)), original(self, split, block, *a)),
    )
    extract_features(plan, _backbone(ckpt), EXTRACT, out, progress=False)  # one rank now
    assert set(rewritten) == ALL_BLOCKS - done  # what the killed ranks had recorded is not redone
    _assert_same(reference, _arrays(out))
    assert not partial_path(out).exists()


def test_killed_one_rank_run_resumes_with_two_ranks(world, tmp_path, monkeypatch):
    plan, ckpt, reference = world
    out, logs = tmp_path / "s.zarr", tmp_path / "logs"
    logs.mkdir()
    original = StoreBuilder.write_block
    calls = {"n": 0}

    def dies_after_two_blocks(self, *args):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(StoreBuilder, "write_block", dies_after_two_blocks)
    with pytest.raises(KeyboardInterrupt):
        extract_features(plan, _backbone(ckpt), EXTRACT, out, progress=False)
    monkeypatch.setattr(StoreBuilder, "write_block", original)
    done = _recorded(out)
    assert done == {("train", 0), ("train", 1)}
    spawn_ranks(2, _job, plan, ckpt, out, logs)
    written = _written(logs)
    assert sorted(written) == sorted(ALL_BLOCKS - done)  # each remaining block once, none of the done ones
    _assert_same(reference, _arrays(out))


def _tiny_params(tmp: Path) -> Path:
    params = tiny_world.build(tmp)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _store_arrays(path: Path) -> dict[str, object]:
    store = FeatureStore.open(path)
    out: dict[str, object] = {"meta": store.meta}
    for split in store.splits:
        for field in ("features", "norms", "labels", "valid"):
            out[f"{split}/{field}"] = store.array(f"{split}/{field}")
    for name in store.classifier_names:
        out[f"classifiers/{name}"] = store.array(f"classifiers/{name}")
    return out


@pytest.mark.slow
def test_torchrun_and_nproc_match_one_process_through_the_cli(tmp_path):
    params = _tiny_params(tmp_path)
    common = ["-p", str(params), "-S", "extract.block_size=4", "-S", "extract.batch_size=9"]
    train = ["extract-train", "--protocol", "base_to_new", "-d", "alpha", "--seed", "1"]
    runner = CliRunner()
    for cmd in (["extract-eval", "-d", "alpha"], train):
        result = runner.invoke(app, [*cmd, *common, "--workdir", str(tmp_path / "one")])
        assert result.exit_code == 0, result.output
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("WORLD_SIZE", None)
    # `torchrun --nproc_per_node 2 --no-python ship ...` as the README has it, with the tests' tiny model config
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "tests.tiny_ship"]
    proc = subprocess.run(
        [*torchrun, "extract-eval", "-d", "alpha", *common, "--workdir", str(tmp_path / "torchrun")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run(
        [*SHIP, *train, *common, "--workdir", str(tmp_path / "nproc"), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "starting 2 ranks" in proc.stdout + proc.stderr
    one = tmp_path / "one" / "data" / "features" / "alpha"
    _assert_same(_store_arrays(one / "eval.zarr"), _store_arrays(tmp_path / "torchrun/data/features/alpha/eval.zarr"))
    _assert_same(
        _store_arrays(one / "base-seed1.zarr"), _store_arrays(tmp_path / "nproc/data/features/alpha/base-seed1.zarr")
    )


def test_a_failing_rank_fails_the_command_with_one_line(tmp_path):
    params = _tiny_params(tmp_path)
    bad = tmp_path / "world" / "alpha" / "images" / "red_circle" / "test0.png"
    bad.write_bytes(b"not a png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [*SHIP, "extract-eval", "-d", "alpha", "-p", str(params), "--workdir", str(tmp_path), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "cannot read image" in proc.stderr and "test0.png" in proc.stderr
    assert "error: rank" in proc.stderr and "Traceback" not in proc.stderr


def test_ranks_come_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.from_env() == Ranks(3, 8, 1)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(RankError, match="RANK=8, WORLD_SIZE=8"):
        Ranks.from_env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert Ranks.from_env() == Ranks() and not Ranks().distributed


def test_a_rank_joins_only_a_store_rank_zero_prepared(tmp_path):
    with pytest.raises(StoreError, match="rank 1: no partial build"):
        StoreBuilder(tmp_path / "s.zarr", "fingerprint", 4, rank=1)
    StoreBuilder(tmp_path / "s.zarr", "other", 4)  # rank 0, another plan
    with pytest.raises(StoreError, match="prepared by rank 0 with this fingerprint"):
        StoreBuilder(tmp_path / "s.zarr", "fingerprint", 4, rank=1)
    rank0 = StoreBuilder(tmp_path / "s.zarr", "fingerprint", 4)
    assert not rank0.resumed  # the other plan's partial build was reset
    joined = StoreBuilder(tmp_path / "s.zarr", "fingerprint", 4, rank=1)
    assert joined.progress == {} and (partial_path(tmp_path / "s.zarr") / progress_file_name(0)).exists()
