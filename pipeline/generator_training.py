"""Training SHIP's generator: a plain loop, read top to bottom.

Augmentation comes from the feature cache: each epoch draws one cached augmented view per training image, so the
CLIP image encoder never runs here. Model selection uses the validation split only (`select="val"`: the epoch with
the lowest validation loss) or none (`"last"`, as SHIP's reference); this module never sees test data. Everything
random (init, views, shuffling, eps) comes from `seed`, so a CPU run is repeatable.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.errors import ExpectedError
from pipeline.features import LabeledFeatures
from pipeline.generator import ShipGenerator
from pipeline.params.generator import GeneratorParams
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)


class TrainingDiverged(ExpectedError, FloatingPointError):
    """A training loss became inf or nan; the message names the run and the knob to turn."""


# Validation eps come from their own generator, re-seeded for every evaluation: every epoch is scored on the
# same draw (comparable across epochs), and evaluating never perturbs the training random stream.
VAL_SEED_OFFSET = 1_000_003


@dataclass
class TrainingOutcome:
    model: ShipGenerator  # holds the best-validation state, in eval mode
    history: list[dict[str, float]]  # one row per epoch (epoch is 1-based)
    best_epoch: int
    best_val_loss: float
    steps_per_second: float  # optimizer steps per second of training time (validation excluded)


@torch.no_grad()
def evaluate(
    model: ShipGenerator, data: LabeledFeatures, *, kl_weight: float, seed: int, batch_size: int
) -> dict[str, float]:
    """Deterministic loss on `data` (one feature per image): a single eps draw fixed by `seed`."""
    data = data.clean()
    if len(data) == 0:
        raise ValueError("cannot evaluate the generator on an empty feature set")
    was_training = model.training
    model.eval()
    device = model.prompts.device
    g = torch.Generator().manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(data), batch_size):
        x = data.features[i : i + batch_size].to(device, torch.float32)
        y = data.labels[i : i + batch_size].to(device)
        terms = model.loss(x, y, kl_weight=kl_weight, generator=g)
        sums += torch.stack([t.detach().double().cpu() for t in terms]) * len(x)
    model.train(was_training)
    total, recon, kl = (sums / len(data)).tolist()
    return {"loss": total, "recon": recon, "kl": kl}


def train_generator(
    train: LabeledFeatures,
    val: LabeledFeatures,
    classnames: list[str],
    tower: TextTower,
    params: GeneratorParams,
    device: torch.device | str,
    *,
    seed: int,
    show_progress: bool = True,
) -> TrainingOutcome:
    """Fit the generator on `train` ([N, V, D] cached views or [N, D]); keep the epoch `params.select` says.

    `params` must be resolved for the dataset (`Params.for_dataset`). Labels index `classnames` (pass all classes,
    so label-only ones can be synthesized later). The tower is moved to `device` together with the generator.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need training and validation features (got {len(train)} train, {len(val)} val)")
    if params.epochs is None:
        raise ValueError("generator.epochs is not resolved for a dataset")
    epochs = params.epochs
    device = torch.device(device)
    feature_dim = int(train.features.shape[-1])

    # --- model + optimizer (init seeded without touching the caller's global RNG) ---
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShipGenerator.from_params(tower, classnames, feature_dim, params)
    model.to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=params.lr, weight_decay=params.weight_decay)
    g = torch.Generator().manual_seed(seed)  # views, shuffling and eps: one CPU stream, device-independent

    n, bs = len(train), params.batch_size
    steps_per_epoch = math.ceil(n / bs)
    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state = math.inf, 0, None
    train_seconds = 0.0
    log.info(
        "training SHIP generator: %d images (%s views), %d val, %d classes, %d epochs x %d steps on %s",
        n,
        train.features.shape[1] if train.has_views else 1,
        len(val),
        len(classnames),
        epochs,
        steps_per_epoch,
        device,
    )

    columns = (
        TextColumn("[bold]generator[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task("epoch 1", total=epochs * steps_per_epoch)
        for epoch in range(1, epochs + 1):
            # --- one epoch: a fresh cached view per image, a fresh shuffle ---
            t0 = time.perf_counter()
            model.train()
            views = train.sample_views(g)
            perm = torch.randperm(n, generator=g)
            x_all = views.features[perm].to(device, torch.float32)
            y_all = views.labels[perm].to(device)
            sums = torch.zeros(3, device=device)  # summed on-device: no host sync per step
            for i in range(0, n, bs):
                x, y = x_all[i : i + bs], y_all[i : i + bs]
                terms = model.loss(x, y, kl_weight=params.kl_weight, generator=g)
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                optimizer.step()
                sums += torch.stack([t.detach() for t in terms]) * len(x)
                progress.advance(task)
            train_total, train_recon, train_kl = (sums / n).tolist()
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            if not math.isfinite(train_total):
                raise TrainingDiverged(
                    f"generator loss is {train_total} in epoch {epoch} (seed {seed}); lower generator.lr "
                    f"(now {params.lr})"
                )

            # --- validation (the only data model selection may look at) ---
            val_terms = evaluate(model, val, kl_weight=params.kl_weight, seed=seed + VAL_SEED_OFFSET, batch_size=bs)
            row = {
                "epoch": epoch,
                "train_loss": train_total,
                "train_recon": train_recon,
                "train_kl": train_kl,
                "val_loss": val_terms["loss"],
                "val_recon": val_terms["recon"],
                "val_kl": val_terms["kl"],
                "seconds": seconds,
            }
            history.append(row)
            keep = epoch == epochs if params.select == "last" else val_terms["loss"] < best_val
            if keep:
                best_val, best_epoch = val_terms["loss"], epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log.info(
                "epoch %d/%d  train %.4f (recon %.4f, kl %.4f)  val %.4f%s",
                epoch,
                epochs,
                train_total,
                train_recon,
                train_kl,
                val_terms["loss"],
                "  *best" if best_epoch == epoch else "",
            )
            progress.update(task, description=f"epoch {epoch} train {train_total:.3f} val {val_terms['loss']:.3f}")

    assert best_state is not None  # val is non-empty and losses are finite, so some epoch was best
    model.load_state_dict(best_state)
    model.eval()
    steps_per_second = epochs * steps_per_epoch / max(train_seconds, 1e-9)
    log.info("best epoch %d (val loss %.4f); %.1f steps/s", best_epoch, best_val, steps_per_second)
    return TrainingOutcome(model, history, best_epoch, best_val, steps_per_second)
