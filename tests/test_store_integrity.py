"""Store integrity: a completed store records every file it holds; a deleted, truncated or altered file is refused
by every stage that reads the store, with one line naming the store and the stage that rebuilds it; `ship verify`
lists every problem; a store's bytes do not depend on where the repository lives; two writers of one store never
interleave; a torn progress file never blocks a rerun."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline.feature_store import PROGRESS, FeatureStore, StoreBuilder, StoreError, partial_path
from pipeline.layout import Layout, writer_stage
from pipeline.store_integrity import verify_store
from tests import tiny_world
from tests.hardening_world import B2N, FAST_METHODS, World, built_world, copy_world, ok, one_line_error, ship

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return built_world(tmp_path_factory)


def _first_chunk(store: Path, array: str) -> Path:
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    assert files, f"{store / array} has no chunk file"
    return files[0]


def delete(file: Path) -> str:
    file.unlink()
    return "is missing"


def truncate(file: Path) -> str:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    return f"has {len(data) // 2} bytes, expected {len(data)}"


def flip(file: Path) -> str:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # mid-shard: zarr may decode it to other numbers without any error
    file.write_bytes(bytes(data))
    return "does not match its checksum (altered)"


DAMAGES = {"deleted": delete, "truncated": truncate, "flipped": flip}
# (stage command, the store it reads, an array of that store, the stage that rebuilds the store)
READERS: list[tuple[list[str], Callable[[Layout], Path], str, str]] = [
    (
        ["train-generator", *B2N],
        lambda lay: lay.train_store("base_to_new", "alpha", 1),
        "train/features",
        "b2n_extract@alpha-1",
    ),
    (["synthesize", *B2N], lambda lay: lay.eval_store("alpha"), "test/labels", "extract_eval@alpha"),
    (["finetune", *B2N, "-S", FAST_METHODS], lambda lay: lay.eval_store("alpha"), "test/valid", "extract_eval@alpha"),
    (
        ["finetune", *B2N, "-S", FAST_METHODS],
        lambda lay: lay.train_store("base_to_new", "alpha", 1),
        "val/features",
        "b2n_extract@alpha-1",
    ),
    (
        ["finetune", *B2N, "-S", FAST_METHODS],
        lambda lay: lay.synthetic("base_to_new", "alpha", 1),
        "synthetic/features",
        "b2n_synthesize@alpha-1",
    ),
]


def test_a_completed_store_lists_every_file_it_holds(world):
    for path in (
        world.layout.eval_store("alpha"),
        world.layout.train_store("base_to_new", "alpha", 1),
        world.layout.synthetic("base_to_new", "alpha", 1),
    ):
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        assert sorted(attrs["manifest"]) == [f for f in files if f != "zarr.json"]
        for rel, entry in attrs["manifest"].items():
            data = (path / rel).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert verify_store(path) == []
        assert not (path.parent / (path.name + ".lock")).exists()  # the build lock is gone once the store is done


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize(("command", "store_of", "array", "stage"), READERS, ids=[f"{r[0][0]}-{r[2]}" for r in READERS])
def test_a_damaged_store_is_refused_by_every_stage_that_reads_it(
    world, tmp_path, damage, command, store_of, array, stage
):
    copy = copy_world(world, tmp_path)
    store = store_of(copy.layout)
    file = _first_chunk(store, array)
    problem = DAMAGES[damage](file)
    line = one_line_error(ship([*command, *copy.args()]))
    rel = file.relative_to(store).as_posix()
    assert line.startswith(f"error: feature store {store} is damaged: {rel} {problem}"), line
    assert line.endswith(f"rerun: dvc repro -f -s {stage}"), line


def test_verify_lists_every_problem_and_passes_sound_stores(world, tmp_path):
    copy = copy_world(world, tmp_path)
    train = copy.layout.train_store("base_to_new", "alpha", 1)
    flip(_first_chunk(train, "train/features"))
    delete(_first_chunk(train, "val/labels"))
    (train / "train" / "stray").write_text("x")
    result = ship(["verify", str(train), str(copy.layout.eval_store("alpha"))])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{train}: val/labels/c/0 is missing" in lines
    assert f"{train}: train/stray is not part of the store" in lines
    assert f"{train}: train/features/c/0/0/0 does not match its checksum (altered)" in lines
    assert f"ok: {copy.layout.eval_store('alpha')}" in lines
    assert lines[-1] == f"error: 1 of 2 store(s) damaged ({train}: rerun: dvc repro -f -s b2n_extract@alpha-1)"
    # A directory is searched for stores.
    result = ship(["verify", str(copy.work / "data" / "synthetic")])
    assert result.exit_code == 0 and result.output.startswith("ok: ") and "seed1.zarr" in result.output


def test_a_deleted_array_an_altered_zarr_json_and_an_added_file_are_refused(world, tmp_path):
    copy = copy_world(world, tmp_path)
    train = copy.layout.train_store("base_to_new", "alpha", 1)
    args = ["train-generator", *B2N, *copy.args()]
    shutil.rmtree(train / "train" / "labels")
    line = one_line_error(ship(args))
    assert f"feature store {train} is damaged: train/labels/c/0 is missing (and 1 more problem(s)" in line

    copy = copy_world(world, tmp_path / "b")
    train = copy.layout.train_store("base_to_new", "alpha", 1)
    meta = train / "zarr.json"
    meta.write_text(meta.read_text().replace('"red circle"', '"red circlE"'))
    line = one_line_error(ship(["train-generator", *B2N, *copy.args()]))
    assert line.startswith(f"error: feature store {train} is damaged: its zarr.json was altered"), line

    copy = copy_world(world, tmp_path / "d")
    train = copy.layout.train_store("base_to_new", "alpha", 1)
    array_meta = train / "train" / "labels" / "zarr.json"
    array_meta.write_text(array_meta.read_text().replace('"fill_value": -1', '"fill_value": -2'))  # same size
    with pytest.raises(StoreError, match=r"train/labels/zarr\.json does not match its checksum"):
        FeatureStore.open(train)  # metadata is checked at open: zarr trusts it for shapes, codecs, fill values

    copy = copy_world(world, tmp_path / "c")
    train = copy.layout.train_store("base_to_new", "alpha", 1)
    chunk = _first_chunk(train, "train/labels")
    (chunk.parent / "1").write_bytes(chunk.read_bytes())  # a shard zarr would read as rows it never wrote
    line = one_line_error(ship(["train-generator", *B2N, *copy.args()]))
    assert "train/labels/c/1 is not part of the store" in line


def test_writer_stages_follow_the_layout():
    lay = Layout(Path("/somewhere/repo"))
    assert writer_stage(lay.eval_store("shapes")) == "extract_eval@shapes"
    assert writer_stage(lay.train_store("base_to_new", "shapes", 2)) == "b2n_extract@shapes-2"
    assert writer_stage(lay.train_store("cross_dataset", "shapes", 3)) == "xd_extract@shapes-3"
    assert writer_stage(lay.train_store("gzsl", "zoo", 1)) == "gzsl_extract@zoo"
    assert writer_stage(lay.synthetic("base_to_new", "shapes", 1)) == "b2n_synthesize@shapes-1"
    assert writer_stage(lay.synthetic("cross_dataset", "shapes", 1, "patterns")) == "xd_synthesize@shapes-patterns-1"
    assert writer_stage(lay.synthetic("gzsl", "zoo", 3)) == "gzsl_synthesize@zoo-3"
    assert writer_stage(Path("elsewhere/x.zarr")) is None
    # The names are dvc.yaml's: every stage named here exists there.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("extract_eval", "b2n_extract", "xd_extract", "gzsl_extract", "b2n_synthesize", "xd_synthesize"):
        assert name in stages


# --- item 4: the same store built in two checkouts is the same bytes ----------------------------------------------


def _relative_world(root: Path) -> Path:
    params = tiny_world.build(root)
    for spec in params["datasets"].values():
        for key in ("root", "image_root"):
            if spec.get(key):
                spec[key] = os.path.relpath(spec[key], root)
    params["backbone"]["pretrained"] = os.path.relpath(params["backbone"]["pretrained"], root)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stores_are_the_same_bytes_wherever_the_repository_lives(tmp_path, monkeypatch):
    outputs = []
    for name in ("one", "elsewhere/two"):
        root = _relative_world(tmp_path / name)
        monkeypatch.chdir(root)
        for command in (["extract-eval", "-d", "alpha"], ["extract-train", *B2N], ["train-generator", *B2N]):
            ok([*command, "-p", "params.yaml", "--workdir", "."])
        ok(["synthesize", *B2N, "-p", "params.yaml", "--workdir", "."])
        outputs.append(_all_files(root / "data"))
    one, two = outputs
    assert sorted(one) == sorted(two)
    stores = [rel for rel in one if ".zarr/" in rel]
    assert any(rel.endswith("eval.zarr/zarr.json") for rel in stores) and len(stores) > 20
    for rel in stores:  # every file of every store, zarr.json (meta, manifest) included
        assert one[rel] == two[rel], rel
    for rel in one:
        assert str(tmp_path).encode() not in one[rel], f"{rel} holds an absolute path"


# --- item 5: two writers of one store -------------------------------------------------------------------------------

_SLOW_SHIP = """
import sys, time
import tests.conftest  # registers the tiny test architecture with open_clip
from pipeline.feature_store import StoreBuilder
write_block = StoreBuilder.write_block
def slow(self, *args, **kwargs):
    time.sleep(0.7)
    return write_block(self, *args, **kwargs)
StoreBuilder.write_block = slow
from stages.cli import app
app()
"""


def _arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(node[...]) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def test_a_second_writer_of_a_store_fails_at_once_and_a_killed_writer_frees_it(world, tmp_path):
    work = tmp_path / "work"
    args = ["extract-eval", "-d", "alpha", *world.args(work), "-S", "extract.block_size=4"]
    store = Layout(work).eval_store("alpha")
    progress = partial_path(store) / PROGRESS
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", _SLOW_SHIP, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (progress.exists() and json.loads(progress.read_text() or "{}").get("blocks", {}).get("test")):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first writer never wrote a block"
            time.sleep(0.05)
        before = sorted(p.relative_to(partial_path(store)) for p in partial_path(store).rglob("*"))
        line = one_line_error(ship(args))
        assert f"{store} is being written by another process (pid {first.pid}" in line, line
        after = sorted(p.relative_to(partial_path(store)) for p in partial_path(store).rglob("*"))
        assert set(after) >= set(before)  # the second wrote nothing of its own: no block of it interleaved
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not store.exists() and partial_path(store).exists()
    ok(args)  # the kernel dropped the dead writer's lock: the rerun takes it and resumes the partial build
    assert verify_store(store) == []
    assert not (store.parent / "eval.zarr.lock").exists()
    reference, resumed = _arrays(world.layout.eval_store("alpha")), _arrays(store)
    assert sorted(reference) == sorted(resumed)
    for name in reference:
        np.testing.assert_array_equal(reference[name], resumed[name], err_msg=name)


# --- resuming never trips over what a kill left --------------------------------------------------------------------


class _Killed(Exception):
    pass


def _killed_after_one_block(args: list[str], monkeypatch) -> None:
    original = StoreBuilder.write_block

    def dies(self, *a, **k):
        original(self, *a, **k)
        raise _Killed

    monkeypatch.setattr(StoreBuilder, "write_block", dies)
    result = ship(args)
    assert isinstance(result.exception, _Killed)
    monkeypatch.setattr(StoreBuilder, "write_block", original)


@pytest.mark.parametrize(
    "progress",
    [b"", b'{"fingerprint": "abc", "blo', b"\x00\xff\xfe", b"[1, 2]", b'{"fingerprint": 3}', "blocks-not-ints"],
)
def test_a_torn_or_garbled_progress_file_does_not_block_the_rerun(world, tmp_path, monkeypatch, progress):
    work = tmp_path / "work"
    args = ["extract-eval", "-d", "alpha", *world.args(work), "-S", "extract.block_size=4"]
    _killed_after_one_block(args, monkeypatch)
    store = Layout(work).eval_store("alpha")
    file = partial_path(store) / PROGRESS
    if progress == "blocks-not-ints":
        state = json.loads(file.read_text())
        progress = json.dumps({"fingerprint": state["fingerprint"], "blocks": {"test": ["0"]}}).encode()
    file.write_bytes(progress)
    ok(args)
    assert verify_store(store) == []
    reference = _arrays(world.layout.eval_store("alpha"))
    for name, value in _arrays(store).items():
        np.testing.assert_array_equal(reference[name], value, err_msg=name)


def test_temporaries_a_kill_left_in_a_partial_store_never_enter_the_store(world, tmp_path, monkeypatch):
    work = tmp_path / "work"
    args = ["extract-eval", "-d", "alpha", *world.args(work), "-S", "extract.block_size=4"]
    _killed_after_one_block(args, monkeypatch)
    store = Layout(work).eval_store("alpha")
    partial = partial_path(store)
    chunk = _first_chunk(partial, "test/features")
    strays = [chunk.with_name(chunk.name + "." + "ab" * 16 + ".partial"), partial / f".{PROGRESS}.tmp-999999"]
    for stray in strays:
        stray.write_text("torn")
    written = []
    original = StoreBuilder.write_block
    monkeypatch.setattr(
        StoreBuilder, "write_block", lambda self, s, b, *a: (written.append(b), original(self, s, b, *a))[1]
    )
    ok(args)
    assert 0 not in written  # resumed, not restarted
    assert verify_store(store) == []
    assert not any(p.name.endswith(".partial") or ".tmp-" in p.name for p in store.rglob("*"))


def test_a_store_of_the_previous_format_asks_for_a_rebuild(world, tmp_path):
    copy = copy_world(world, tmp_path)
    store = copy.layout.eval_store("alpha")
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["format"] = 2
    (store / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"has format 2, expected 3; rerun: dvc repro -f -s extract_eval@alpha"):
        FeatureStore.open(store)


def test_a_decode_error_while_reading_is_a_store_error_naming_the_fix(world, tmp_path):
    copy = copy_world(world, tmp_path)
    store = copy.layout.eval_store("alpha")
    opened = FeatureStore.open(store)
    chunk = _first_chunk(store, "test/features")
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF  # the first chunk's zstd frame header
    chunk.write_bytes(bytes(data))
    unchecked = FeatureStore(store, opened.group, opened.meta, manifest=None)  # as if no checksum had caught it
    with pytest.raises(StoreError) as err:
        unchecked.split("test")
    message = str(err.value)
    assert message.startswith(f"feature store {store} is damaged: test/features cannot be read (RuntimeError: Zstd")
    assert message.endswith("; rerun: dvc repro -f -s extract_eval@alpha") and "\n" not in message
