"""Fine-tune every requested method for every seed on one task's cached features, and score them.

For each (method, seed): fit (epoch selection on validation features only), then score the test split under the
base-to-new and the joint protocol, per class, and on any cross-dataset transfer targets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import polars as pl
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.adapters import build_adapter
from pipeline.evaluation import TransferTask, base_to_new, joint, per_class_accuracy, transfer
from pipeline.features import LabeledFeatures, TaskFeatures
from pipeline.params.finetune import FinetuneParams, Method
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

SCORES = ("base", "new", "hm", "joint_base", "joint_new", "joint_hm")
WITH_STD = ("base", "new", "hm")


@dataclass(frozen=True)
class FinetuneResults:
    """Everything `run_finetune` measured. Accuracies are percentages.

    runs: one row per (method, seed): method, seed, base, new, hm, joint_base, joint_new, joint_hm, best_epoch,
          val_acc (validation accuracy of the kept epoch).
    curves: method, seed, epoch, train_loss, val_acc (epoch 0 = initial state, train_loss null).
    per_class: method, class, classname, split (base/new), accuracy (base-to-new protocol, mean over seeds).
    transfer: method, seed, dataset, accuracy (cross-dataset targets; empty without any).
    """

    runs: pl.DataFrame
    curves: pl.DataFrame
    per_class: pl.DataFrame
    transfer: pl.DataFrame

    def metrics_dict(self) -> dict[str, dict[str, float]]:
        """{method: {base, new, hm, base_std, new_std, hm_std, joint_base, joint_new, joint_hm}} plus, with transfer
        targets, {"transfer.<dataset>", "transfer.<dataset>_std", "transfer.average"} (the mean over targets).

        Means over seeds, rounded to 2 decimals; std is the sample std over seeds. A value that is undefined is
        left out (std of a single seed; "new" and H when every class is labelled), so consumers see no nulls.
        """
        out: dict[str, dict[str, float]] = {}
        for method in self.runs["method"].unique(maintain_order=True).to_list():
            rows = self.runs.filter(pl.col("method") == method)
            m: dict[str, float | None] = {}
            for key in SCORES:
                values = rows[key].to_list()
                m[key] = _round(_mean(values))
                if key in WITH_STD:
                    m[f"{key}_std"] = _round(_std(values))
            t = self.transfer.filter(pl.col("method") == method)
            if len(t):
                per_dataset = t.group_by("dataset", maintain_order=True).agg(pl.col("accuracy"))
                means = []
                for name, accs in per_dataset.iter_rows():
                    means.append(_mean(accs))
                    m[f"transfer.{name}"] = _round(means[-1])
                    m[f"transfer.{name}_std"] = _round(_std(accs))
                m["transfer.average"] = _round(_mean(means))
            out[method] = {k: v for k, v in m.items() if v is not None}
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mu = _mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def _round(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 2)


def _to(feats: LabeledFeatures | None, device: torch.device) -> LabeledFeatures | None:
    return None if feats is None else feats.to(device)


def task_to(task: TaskFeatures, device: torch.device) -> TaskFeatures:
    """The task with every tensor on `device`."""
    return replace(
        task,
        text_classifier=task.text_classifier.to(device),
        train=task.train.to(device),
        val=task.val.to(device),
        test=task.test.to(device),
        synthetic=_to(task.synthetic, device),
    )


def check_methods(methods: Sequence[Method], task: TaskFeatures) -> None:
    """Fail before training anything if a *_ship method has no synthetic features to train on."""
    ship = [m for m in methods if m.endswith("_ship")]
    if ship and task.synthetic is None:
        raise ValueError(
            f"{', '.join(ship)} need{'s' if len(ship) == 1 else ''} synthetic features of the label-only classes, "
            "but the task has none (run the synthesis stage, or drop the *_ship methods)"
        )


def run_finetune(
    task: TaskFeatures,
    tower: TextTower,
    params: FinetuneParams,
    transfer_tasks: Sequence[TransferTask] = (),
    *,
    show_progress: bool = True,
) -> FinetuneResults:
    """Fit and score params.methods x params.seeds on `task` (+ score each fit on `transfer_tasks`)."""
    if not params.methods:
        raise ValueError("finetune.methods is empty: nothing to run")
    check_methods(params.methods, task)
    task = task_to(task, tower.device)
    runs: list[dict] = []
    curves: list[dict] = []
    per_class: list[pl.DataFrame] = []
    transfers: list[dict] = []
    n_runs = len(params.methods) * len(params.seeds)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        overall = progress.add_task("fine-tuning", total=n_runs)
        epochs = progress.add_task("", total=None)
        for method in params.methods:
            for seed in params.seeds:
                progress.reset(epochs, total=None, description=f"  {method} seed {seed}")
                adapter = build_adapter(method, params)
                fit = adapter.fit(
                    task, tower, seed, on_epoch=lambda done, total: progress.update(epochs, completed=done, total=total)
                )
                scores = base_to_new(adapter, task) | joint(adapter, task)
                runs.append(
                    {
                        "method": method,
                        "seed": seed,
                        **scores,
                        "best_epoch": fit.best_epoch,
                        "val_acc": fit.best_val_acc,
                    }
                )
                curves += [{"method": method, "seed": seed, **row} for row in fit.curve]
                per_class.append(per_class_accuracy(adapter, task).with_columns(method=pl.lit(method)))
                for t in transfer_tasks:
                    acc = transfer(adapter, t.test, t.classes)
                    transfers.append({"method": method, "seed": seed, "dataset": t.name, "accuracy": acc})
                log.info(
                    "%s seed %d: base %.2f new %.2f H %.2f | joint base %.2f new %.2f H %.2f",
                    method,
                    seed,
                    *(scores[k] for k in SCORES),
                )
                progress.advance(overall)

    method_order = pl.Enum(list(dict.fromkeys(params.methods)))
    classes = (
        pl.concat(per_class)
        .group_by("method", "class", "classname", "split")
        .agg(pl.col("accuracy").mean())
        .sort(pl.col("method").cast(method_order), "class")
        .select("method", "class", "classname", "split", "accuracy")
    )
    return FinetuneResults(
        runs=pl.DataFrame(runs, schema=_RUN_SCHEMA),
        curves=pl.DataFrame(curves, schema=_CURVE_SCHEMA),
        per_class=classes,
        transfer=pl.DataFrame(transfers, schema=_TRANSFER_SCHEMA),
    )


_RUN_SCHEMA = {
    "method": pl.String,
    "seed": pl.Int64,
    **{k: pl.Float64 for k in SCORES},
    "best_epoch": pl.Int64,
    "val_acc": pl.Float64,
}
_CURVE_SCHEMA = {
    "method": pl.String,
    "seed": pl.Int64,
    "epoch": pl.Int64,
    "train_loss": pl.Float64,
    "val_acc": pl.Float64,
}
_TRANSFER_SCHEMA = {"method": pl.String, "seed": pl.Int64, "dataset": pl.String, "accuracy": pl.Float64}
