"""User errors, case by case through the `ship` CLI on a tiny world: every failure a user can cause is one `error:`
line naming what to fix, exit 1 (2 for params), no traceback (`--debug` / SHIP_DEBUG=1 show it); outputs are
replaced whole, with nothing stray left beside them. Damaged stores: tests/test_store_integrity.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline import atomic_files
from pipeline.atomic_files import clean_stale_temps, replace_dir, write_dir_atomic
from tests import tiny_world
from tests.hardening_world import B2N, World, built_world, copy_world, ok, one_line_error, ship

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return built_world(tmp_path_factory)


def _params_with(world: World, tmp: Path, change) -> list[str]:
    """`-p` and `--workdir` args of a copy of the world's params (changed by `change(dict)`) and outputs."""
    params = json.loads(json.dumps(world.params))
    change(params)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    work = copy_world(world, tmp).work if not (tmp / "work").exists() else tmp / "work"
    return ["-p", str(path), "--workdir", str(work)]


def _alpha_copy(world: World, tmp: Path) -> Path:
    dest = tmp / "alpha"
    shutil.copytree(world.params["datasets"]["alpha"]["root"], dest)
    return dest


def _use_alpha(root: Path):
    def change(params):
        params["datasets"]["alpha"]["root"] = str(root)

    return change


# --- backbone and generator files ----------------------------------------------------------------------------------


def test_another_architectures_checkpoint_is_one_line(world, tmp_path):
    line = one_line_error(ship(["extract-eval", "-d", "alpha", *world.args(tmp_path), "-S", "backbone.model=RN50"]))
    assert line.startswith(f"error: backbone.pretrained {world.params['backbone']['pretrained']!r} does not fit")
    assert "the RN50 architecture; is it another architecture's checkpoint? (text pos_embed width changed!)" in line


class _Payload:
    """A pickle that would run code when loaded: makes a directory named by its argument."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.mark.parametrize("content", ["empty", "pickle", "text"])
def test_an_unusable_backbone_file_is_one_line_and_runs_no_code(world, tmp_path, content):
    bad = tmp_path / "weights.pt"
    marker = tmp_path / "pwned"
    bad.write_bytes({"empty": b"", "pickle": pickle.dumps(_Payload(marker)), "text": b"hello"}[content])
    args = ["extract-eval", "-d", "alpha", *world.args(tmp_path), "-S", f"backbone.pretrained={bad}"]
    line = one_line_error(ship(args))
    expected = {
        "empty": "is an empty file (0 bytes)",
        "pickle": "holds pickled Python objects, not plain weights: torch.load(weights_only=True) refused it",
        "text": "is not a torch checkpoint",
    }[content]
    assert line.startswith(f"error: backbone.pretrained '{bad}' {expected}"), line
    assert not marker.exists()


@pytest.mark.parametrize("content", ["empty", "pickle"])
def test_an_unusable_generator_checkpoint_is_one_line(world, tmp_path, content):
    copy = copy_world(world, tmp_path)
    path = copy.layout.generator("base_to_new", "alpha", 1)
    marker = tmp_path / "pwned"
    path.write_bytes({"empty": b"", "pickle": pickle.dumps(_Payload(marker))}[content])
    line = one_line_error(ship(["synthesize", *B2N, *copy.args()]))
    assert line.startswith(f"error: {path} is not a readable generator checkpoint ("), line
    assert line.endswith("rerun the generator stage") or "rerun the generator stage" in line
    assert not marker.exists()


# --- params the schema refuses (exit 2) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("finetune.tip_adapter_f.init_alpha=.inf", "finetune.tip_adapter_f.init_alpha"),
        ("finetune.coop.lr=.nan", "finetune.coop.lr"),
        ("extract.templates=['a photo']", "extract.templates.0"),
        ("extract.templates=['{} and {}']", "extract.templates.0"),
        ("seeds=[1, 9223372036854775808]", "seeds.1"),
    ],
)
def test_params_validation_refuses_early_with_exit_2(world, tmp_path, override, named):
    result = ship(["extract-eval", "-d", "alpha", *world.args(tmp_path), "-S", override])
    assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output
    assert not tmp_path.joinpath("data").exists()


def test_params_naming_a_directory_exits_2(tmp_path):
    line = one_line_error(ship(["extract-eval", "-d", "alpha", "-p", str(tmp_path)]), code=2)
    assert line == f"error: params file {tmp_path} is a directory; pass the YAML file inside it"


def test_a_context_init_that_disagrees_with_n_ctx_is_a_params_error(world, tmp_path):
    args = [
        "finetune",
        *B2N,
        *copy_world(world, tmp_path).args(),
        "-S",
        "finetune.methods=[coop]",
        "-S",
        "finetune.coop.n_ctx=6",
    ]
    line = one_line_error(ship(args), code=2)
    assert line.startswith("error: finetune.coop.ctx_init: context init 'a photo of a' has 4 tokens, but ")
    assert "finetune.coop.n_ctx is 6" in line


# --- prompts over the text context, classifier rows that coincide ----------------------------------------------------


def test_coop_context_over_the_text_context_names_the_class_names(world, tmp_path):
    copy = copy_world(world, tmp_path)
    args = ["finetune", *B2N, *copy.args(), "-S", "finetune.methods=[coop]", "-S", "finetune.coop.n_ctx=28"]
    line = one_line_error(ship([*args, "-S", "finetune.coop.ctx_init=''"]))
    assert line.startswith(
        "error: 6 class name(s) do not fit the text tower's 32-token context with finetune.coop.n_ctx=28 context "
        "tokens (+ start, '.' and end tokens): 'red circle' (33 tokens), 'blue square' (33 tokens)"
    ), line
    assert line.endswith("shorten these class names or lower finetune.coop.n_ctx")


def test_generator_prompt_over_the_text_context_names_the_class_names(world, tmp_path):
    args = ["train-generator", *B2N, *copy_world(world, tmp_path).args(), "-S", "generator.prompt_length=29"]
    line = one_line_error(ship(args))
    assert "do not fit the text tower's 32-token context with generator.prompt_length=29 context tokens" in line
    assert "'red circle' (34 tokens)" in line  # 1 + 29 + 2 words + '.' + 1


def test_a_class_name_over_the_text_context_is_named_at_extraction(world, tmp_path):
    long = " ".join(["very"] * 30) + " long name"
    root = tiny_world.split_file_dataset(tmp_path / "alpha", [*tiny_world.ALPHA[:5], long], seed=1)
    args = _params_with(world, tmp_path, _use_alpha(root))
    line = one_line_error(ship(["extract-eval", "-d", "alpha", *args]))
    assert line.startswith(
        f"error: template 'a photo of a {{}}.' does not fit the text tower's 32-token context for 1 class name(s): "
        f"{long!r} (39 tokens)"
    ), line


def test_classes_whose_classifier_rows_coincide_are_a_warning(world, tmp_path, caplog):
    names = [*tiny_world.ALPHA[:5], "RED CIRCLE"]  # the tokenizer lowercases
    root = tiny_world.split_file_dataset(tmp_path / "alpha", names, seed=1)
    args = _params_with(world, tmp_path, _use_alpha(root))
    with caplog.at_level(logging.WARNING):
        ok(["extract-eval", "-d", "alpha", *args])
    warnings = [r.getMessage() for r in caplog.records if "identical zero-shot classifier rows" in r.getMessage()]
    assert warnings == [
        "classes with identical zero-shot classifier rows (indistinguishable by their prompts): "
        "'red circle' = 'RED CIRCLE'; give them distinct class names"
    ]


# --- training that diverges -----------------------------------------------------------------------------------------


def test_a_diverging_generator_is_one_line(world, tmp_path):
    line = one_line_error(
        ship(["train-generator", *B2N, *copy_world(world, tmp_path).args(), "-S", "generator.lr=1e12"])
    )
    assert re.fullmatch(
        r"error: generator loss is nan in epoch \d+ \(seed 1\); lower generator\.lr \(now 1000000000000\.0\)", line
    ), line


def test_a_diverging_method_is_one_line_naming_method_seed_and_epoch(world, tmp_path):
    copy = copy_world(world, tmp_path)
    args = ["finetune", *B2N, *copy.args(), "-S", "finetune.methods=[coop]", "-S", "finetune.coop.lr=1e30"]
    line = one_line_error(ship(args))
    assert re.fullmatch(r"error: coop seed 1: training loss is nan in epoch \d+; lower its lr \(now 1e\+30\)", line), (
        line
    )


# --- hostile dataset files ------------------------------------------------------------------------------------------


def test_a_dataset_entry_outside_its_root_is_named(world, tmp_path):
    root = _alpha_copy(world, tmp_path)
    split = json.loads((root / "split_demo.json").read_text())
    split["test"][0][0] = "../../../../etc/passwd"
    (root / "split_demo.json").write_text(json.dumps(split))
    line = one_line_error(ship(["extract-eval", "-d", "alpha", *_params_with(world, tmp_path, _use_alpha(root))]))
    assert "entry" in line and "'../../../../etc/passwd'" in line and str(root / "split_demo.json") in line
    assert "resolves outside the image directory" in line


def test_a_decompression_bomb_is_a_corrupt_image_and_can_be_skipped(world, tmp_path, monkeypatch):
    root = _alpha_copy(world, tmp_path)
    split = json.loads((root / "split_demo.json").read_text())
    bomb = root / "images" / split["test"][0][0]
    Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # a bomb: more than twice this many pixels
    args = ["extract-eval", "-d", "alpha", *_params_with(world, tmp_path, _use_alpha(root))]
    line = one_line_error(ship(args))
    assert line == (
        f"error: cannot read image {bomb}: decompression bomb (too many pixels) "
        "(set extract.skip_corrupt=true to skip and list it)"
    )
    ok([*args, "-S", "extract.skip_corrupt=true"])
    from pipeline.feature_store import FeatureStore

    store = FeatureStore.open(Path(args[-1]) / "data/features/alpha/eval.zarr")
    assert store.meta["skipped"] == [f"images/{split['test'][0][0]}"]


# --- the machine's state: a full disk, a debug traceback ----------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_path(world, tmp_path, monkeypatch):
    import zarr.storage._local as local

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    copy = copy_world(world, tmp_path)
    monkeypatch.setattr(local, "_put", full)
    line = one_line_error(ship(["synthesize", *B2N, *copy.args()]))
    partial = copy.layout.synthetic("base_to_new", "alpha", 1).with_name("seed1.zarr.partial")
    assert line == (
        f"error: No space left on device ([Errno 28]) writing {partial}; free some disk space and rerun "
        "(a killed extraction resumes where it stopped)"
    )
    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", lambda *a, **k: full())
    line = one_line_error(ship(["train-generator", *B2N, *copy.args()]))
    results = copy.layout.generator_results("base_to_new", "alpha", 1)
    assert line.startswith(f"error: No space left on device ([Errno 28]) writing {results}; free some disk space")


def test_debug_and_ship_debug_show_the_traceback(world, tmp_path, monkeypatch):
    args = ["train-generator", *B2N, *copy_world(world, tmp_path).args(), "-S", "generator.lr=1e12"]
    from pipeline.generator_training import TrainingDiverged

    assert isinstance(ship([*args, "--debug"]).exception, TrainingDiverged)
    monkeypatch.setenv("SHIP_DEBUG", "1")
    assert isinstance(ship(args).exception, TrainingDiverged)
    monkeypatch.setenv("SHIP_DEBUG", "0")
    one_line_error(ship(args))


# --- outputs replaced whole, nothing stray left -------------------------------------------------------------------


def _fill(path: Path, token: str, n: int = 5) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"f{i}.txt").write_text(token)
    return path


def test_replace_dir_swaps_in_one_step_and_leaves_nothing_beside(tmp_path, monkeypatch):
    dst = _fill(tmp_path / "out", "old")
    replace_dir(_fill(tmp_path / ".out.tmp-1", "new"), dst)
    assert {p.read_text() for p in dst.iterdir()} == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # Where the exchange is unavailable: two renames through a hidden trash, also removed.
    monkeypatch.setattr(atomic_files, "exchange_paths", lambda a, b: False)
    replace_dir(_fill(tmp_path / ".out.tmp-2", "newer"), dst)
    assert {p.read_text() for p in dst.iterdir()} == {"newer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    dst = _fill(tmp_path / "seed1.zarr", "x")
    stale = [_fill(tmp_path / f".seed1.zarr.tmp-{pid}", "x"), _fill(tmp_path / f".seed1.zarr.old-{pid}", "x")]
    legacy = _fill(tmp_path / "seed1.zarr.old", "x")
    live = _fill(tmp_path / f".seed1.zarr.tmp-{os.getppid()}", "x")
    other = _fill(tmp_path / f".seed2.zarr.tmp-{pid}", "x")
    assert sorted(clean_stale_temps(dst)) == sorted([*stale, legacy])
    assert live.exists() and other.exists() and dst.exists()


def test_a_rerun_leaves_no_old_or_temporary_directories(world, tmp_path):
    copy = copy_world(world, tmp_path)
    synthetic = copy.layout.synthetic("base_to_new", "alpha", 1)
    before = sorted(p.name for p in synthetic.parent.iterdir())
    ok(["synthesize", *B2N, *copy.args()])
    ok(["synthesize", *B2N, *copy.args()])
    assert sorted(p.name for p in synthetic.parent.iterdir()) == before == ["seed1.zarr"]
    results = copy.layout.results("base_to_new", "alpha", 1)
    assert sorted(p.name for p in results.iterdir()) == ["finetune", "generator", "synthesis"]


_SWAPPER = """
import sys
from pathlib import Path
from pipeline.atomic_files import write_dir_atomic
dst, i = Path(sys.argv[1]), 0
print("ready", flush=True)
while True:
    i += 1
    write_dir_atomic(dst, {f"f{k}.txt": str(i) for k in range(20)})
"""


def test_a_directory_being_replaced_survives_kill_9_at_any_point(tmp_path):
    dst = tmp_path / "finetune"
    write_dir_atomic(dst, {f"f{k}.txt": "0" for k in range(20)})
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(dst)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = sorted(dst.iterdir())
        assert len(files) == 20 and len({f.read_text() for f in files}) == 1  # one whole version, never a mix
    write_dir_atomic(dst, {"done.txt": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune"]  # killed writers' temporaries cleaned


def test_write_file_atomic_names_the_path_on_a_full_disk(tmp_path):
    target = tmp_path / "gen.pt"

    def fails(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_files.write_file_atomic(target, fails)
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    atomic_files.write_file_atomic(target, lambda f: torch.save({"x": torch.ones(2)}, f))
    assert torch.load(target)["x"].sum() == 2
