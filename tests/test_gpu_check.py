"""benchmarks/gpu_check.py (`make gpu-check`): its CPU form runs here, so the script a GPU machine runs first keeps
working; its device check, failure rows and rank extraction are checked on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_tiny_form_passes_every_check_and_prints_one_table(tmp_path):
    out = tmp_path / "table.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out)]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    table = json.loads(out.read_text())
    assert [(r["check"], r["status"]) for r in table["rows"]] == [
        (gpu_check.SETUP, "pass"),
        (gpu_check.EXTRACT, "pass"),
        (gpu_check.COSINE, "pass"),
        (gpu_check.BARE, "info"),
        (gpu_check.THROUGHPUT, "info"),
        (gpu_check.BACKBONE, "pass"),
        (gpu_check.GENERATOR, "pass"),
        (gpu_check.COOP, "pass"),
        (gpu_check.COOP_SHIP, "pass"),
        (gpu_check.RANKS, "skip"),
    ]
    figures = {r["check"]: r["figure"] for r in table["rows"]}
    assert "float32 on cpu vs float32 on cpu, 32 images: min 1.00000" in figures[gpu_check.COSINE]
    assert figures[gpu_check.COOP].startswith("base ") and "tensors on cpu" in figures[gpu_check.COOP]
    assert figures[gpu_check.RANKS].startswith("skipped: --device cpu")
    assert table["setup"]["device"] == "cpu" and table["setup"]["model"] == gpu_check.TINY
    for check in gpu_check.ROWS:  # one table: every check printed once
        assert result.stdout.count(check) == 1, check


def test_device_check_names_every_tensor_off_the_device():
    class Holder:  # an object of the project's own kind is looked into; others are not
        pass

    Holder.__module__ = "pipeline.fake"
    holder = Holder()
    holder.cache = {"keys": [torch.zeros(2)]}
    holder.head = nn.Linear(2, 2)
    holder.head.scratch = torch.ones(1)  # a plain tensor attribute of a module
    found = dict(gpu_check.held_tensors(holder, "h"))
    assert set(found) == {"h.cache['keys'][0]", "h.head.weight", "h.head.bias", "h.head.scratch"}
    assert gpu_check.check_devices({"h": holder}, torch.device("cpu")) == 4
    with pytest.raises(gpu_check.DeviceMismatch) as err:
        gpu_check.check_devices({"h": holder}, torch.device("meta"))
    assert str(err.value) == (
        "4 of 4 tensors are not on meta: h.cache['keys'][0] (cpu), h.head.weight (cpu), h.head.bias (cpu), "
        "h.head.scratch (cpu)"
    )


def test_a_check_that_raises_is_a_fail_row_and_the_checks_that_need_it_do_not_run():
    checks = gpu_check.Checks()

    def broken() -> tuple[str, str]:
        raise gpu_check.DeviceMismatch("1 of 3 tensors are not on cuda:0: x (cpu)")

    assert not checks.run("first", broken)
    assert checks.run("second", lambda: ("12 images/s", gpu_check.INFO))
    assert not checks.run("third", lambda: ("never", gpu_check.PASS), needs=["first", "second"])
    assert [(r.check, r.figure, r.status) for r in checks.rows] == [
        ("first", "DeviceMismatch: 1 of 3 tensors are not on cuda:0: x (cpu)", "FAIL"),
        ("second", "12 images/s", "info"),
        ("third", "not run: needs first", "FAIL"),
    ]
    text = gpu_check.markdown(checks.rows, "title")
    assert "| first | DeviceMismatch: 1 of 3 tensors are not on cuda:0: x (cpu) | FAIL |" in text


@pytest.mark.slow
def test_the_rank_extraction_builds_the_one_rank_store(tmp_path):
    # The GPU check's 2-rank path, with 2 CPU ranks (gloo) instead of 2 GPUs (nccl): the tiny model's config must
    # reach the spawned ranks.
    from pipeline.backbone import load_backbone
    from pipeline.extract import extract_features
    from pipeline.extraction_plans import eval_plan
    from pipeline.params import parse_params

    configs = gpu_check.write_tiny_config(tmp_path / "configs")
    setup = gpu_check.Setup("cpu", gpu_check.TINY, 8, 4, 8, 4, 2, 2, 0, (24, 48), 64, configs)
    gpu_check.write_image_folder(tmp_path / "images", setup)
    checkpoint = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    import open_clip

    torch.save({"state_dict": open_clip.create_model(gpu_check.TINY).state_dict()}, checkpoint)
    params = parse_params(gpu_check.params_for(setup, tmp_path / "images", checkpoint))
    p = params.for_dataset("check")
    plan = eval_plan(params, "check")
    assert setup.block_size == 4  # two blocks: one per rank
    extract_features(plan, load_backbone(params.backbone), p.extract, tmp_path / "one.zarr", progress=False)
    gpu_check.extract_with_ranks(2, params.backbone, p.extract, plan, tmp_path / "two.zarr", configs)
    assert gpu_check.compare_stores(tmp_path / "one.zarr", tmp_path / "two.zarr") is None
