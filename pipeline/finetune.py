"""Fine-tune the requested methods for one seed on one task, and score them.

For each method: fit (epoch selection on validation features only, or the last epoch), then score every test split
of the task under its protocol, per class too.

Process layout. Fitting on cached features is thousands of tiny tensor ops: extra intra-op threads only wait on each
other (and spin against any busy neighbour process), so each fit runs single-threaded (`threads`), and independent
methods run side by side in `workers` forked processes, which share the task's tensors copy-on-write. A fit's
result depends on its seed and thread count only, never on the layout (tests/test_finetune_layout.py).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.adapters import build_adapter
from pipeline.evaluation import SplitPredictions, per_class_rows, predict_task, predictions_frame, task_scores
from pipeline.features import Task
from pipeline.machine import available_cores
from pipeline.params.finetune import FinetuneParams, uses_synthetic
from pipeline.synthesis import SyntheticSource
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

CURVE_SCHEMA = {"method": pl.String, "epoch": pl.Int64, "train_loss": pl.Float64, "val_acc": pl.Float64}


@dataclass
class MethodResult:
    method: str
    scores: dict[str, float]  # split name (and "hm") -> accuracy in percent
    best_epoch: int
    val_acc: float  # validation accuracy of the kept epoch
    info: dict[str, float]
    curve: list[dict[str, float | int | None]]
    per_class: pl.DataFrame
    export: dict[str, Any]  # the fitted state (`Adapter.export`), to score foreign class sets later
    predictions: dict[str, SplitPredictions] = field(default_factory=dict)  # split -> image-by-image record


def fit_method(
    method: str,
    task: Task,
    tower: TextTower,
    params: FinetuneParams,
    seed: int,
    synthetic: SyntheticSource | None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> MethodResult:
    """Fit one method (params resolved for the task's dataset) and score it on the task's test splits."""
    adapter = build_adapter(method, params)
    fit = adapter.fit(task, tower, seed, select=params.select, synthetic=synthetic, on_epoch=on_epoch)
    # One pass over each test split: the scores, the per-class table and the per-image record agree by construction.
    predictions = predict_task(adapter, task)
    scores = task_scores(task.protocol, predictions)
    log.info(
        "%s seed %d: %s",
        method,
        seed,
        "  ".join(f"{k} {v:.2f}" for k, v in scores.items()),
    )
    return MethodResult(
        method=method,
        scores=scores,
        best_epoch=fit.best_epoch,
        val_acc=fit.best_val_acc,
        info=fit.info,
        curve=fit.curve,
        per_class=per_class_rows(task, predictions).with_columns(method=pl.lit(method)),
        export=adapter.export(),
        predictions=predictions,
    )


def default_workers(methods: Sequence[str], device: torch.device, threads: int) -> int:
    """One process per method up to the cores available (each running `threads` threads); one on a GPU, where the
    device does the work and forking a CUDA process is unsafe."""
    if device.type != "cpu":
        return 1
    return max(1, min(len(methods), available_cores() // max(threads, 1)))


# What forked workers inherit (set just before the pool forks; never pickled).
_INHERITED: dict[str, Any] = {}


def _fit_inherited(method: str) -> MethodResult:
    torch.set_num_threads(_INHERITED["threads"])
    job = _INHERITED
    synthetic = job["synthetic_for"](method) if uses_synthetic(method) else None
    return fit_method(method, job["task"], job["tower"], job["params"], job["seed"], synthetic)


def run_methods(
    task: Task,
    tower: TextTower,
    params: FinetuneParams,
    methods: Sequence[str],
    seed: int,
    synthetic_for: Callable[[str], SyntheticSource | None],
    *,
    workers: int | None = None,
    threads: int = 1,
    show_progress: bool = True,
) -> list[MethodResult]:
    """Fit and score `methods` for `seed`; `synthetic_for(method)` gives a *_ship method its synthetic features.

    `workers` processes (None: `default_workers`) each fit one method at a time with `threads` threads; results come
    back in the order of `methods` and are the same for any number of workers."""
    if not methods:
        raise ValueError("no fine-tuning methods to run")
    task = task.to(tower.device)
    workers = default_workers(methods, tower.device, threads) if workers is None else max(1, workers)
    log.info("fine-tuning %s for seed %d: %d process(es) x %d thread(s)", ", ".join(methods), seed, workers, threads)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        overall = progress.add_task(f"fine-tuning seed {seed}", total=len(methods))
        if workers == 1:
            results = []
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for method in methods:
                    progress.update(overall, description=f"fine-tuning seed {seed}: {method}")
                    synthetic = synthetic_for(method) if uses_synthetic(method) else None
                    results.append(fit_method(method, task, tower, params, seed, synthetic))
                    progress.advance(overall)
            finally:
                torch.set_num_threads(previous)
            return results
        _INHERITED.update(task=task, tower=tower, params=params, seed=seed, synthetic_for=synthetic_for)
        _INHERITED["threads"] = threads
        try:
            # fork: the workers inherit the task's tensors and the tower without copying or pickling them.
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_fit_inherited, method) for method in methods]
                for future in futures:
                    future.add_done_callback(lambda _: progress.advance(overall))
                results = [future.result() for future in futures]
        finally:
            _INHERITED.clear()
        return results


def curves_frame(results: Sequence[MethodResult]) -> pl.DataFrame:
    rows = [{"method": r.method, **row} for r in results for row in r.curve]
    return pl.DataFrame(rows, schema=CURVE_SCHEMA)


def per_class_frame(results: Sequence[MethodResult]) -> pl.DataFrame:
    frames = [r.per_class.select("method", "class", "classname", "split", "accuracy", "n_test") for r in results]
    return pl.concat(frames) if frames else pl.DataFrame()


def seed_predictions(
    results: Sequence[MethodResult], foreign: Mapping[str, Mapping[str, SplitPredictions]] | None = None
) -> pl.DataFrame:
    """Every method's per-image record of one seed as one table (`pipeline.evaluation.predictions_frame`);
    `foreign` adds records scored outside a task (cross-dataset source fits on a target: `predict_foreign`)."""
    records: dict[str, dict[str, SplitPredictions]] = {r.method: dict(r.predictions) for r in results}
    for method, splits in (foreign or {}).items():
        records.setdefault(method, {}).update(splits)
    return predictions_frame(records)
