"""The process layout of fine-tuning changes speed only: the same results for any number of workers."""

from __future__ import annotations

import pytest
import torch

from pipeline.finetune import default_workers, run_methods, seed_predictions
from pipeline.text_tower import TextTower
from tests.test_adapters import FAST, vector_task

METHODS = ["zeroshot", "clip_adapter", "clip_adapter_ship", "tip_adapter_f", "tip_adapter_f_ship"]


def test_forked_workers_give_the_sequential_results(tiny_tower: TextTower):
    task, synthetic = vector_task()
    one = run_methods(task, tiny_tower, FAST, METHODS, 1, lambda m: synthetic, workers=1, show_progress=False)
    two = run_methods(task, tiny_tower, FAST, METHODS, 1, lambda m: synthetic, workers=2, show_progress=False)
    assert [r.method for r in two] == METHODS  # in the order asked, not the order finished
    for a, b in zip(one, two, strict=True):
        assert a.scores == b.scores and a.curve == b.curve and a.info == b.info
        assert a.per_class.equals(b.per_class)
        # The per-image record is what the scores are computed from, and it too is the same for any layout.
        assert {k: r.accuracy for k, r in a.predictions.items()} == {k: v for k, v in a.scores.items() if k != "hm"}
    assert seed_predictions(one).equals(seed_predictions(two))


def test_the_callers_thread_count_is_restored(tiny_tower: TextTower):
    """A fit runs with `threads` threads; the caller gets its own setting back, also when a fit fails."""
    task, synthetic = vector_task()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the fits' `threads` below, so a leaked setting shows
    try:
        run_methods(
            task, tiny_tower, FAST, ["zeroshot"], 1, lambda m: synthetic, workers=1, threads=1, show_progress=False
        )
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="unknown fine-tuning method"):
            run_methods(
                task, tiny_tower, FAST, ["nonsense"], 1, lambda m: synthetic, workers=1, threads=1, show_progress=False
            )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_default_layout_fits_the_machine():
    cpu = torch.device("cpu")
    assert default_workers(METHODS, cpu, threads=1) >= 1
    assert default_workers(["coop"], cpu, threads=1) == 1
    assert default_workers(METHODS, torch.device("cuda"), threads=1) == 1
