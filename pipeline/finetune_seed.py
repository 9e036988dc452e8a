"""One seed of one protocol's fine-tuning, from the stores on disk to the per-seed results payload.

- base-to-new / GZSL: every method on the dataset's task;
- cross-dataset, no target (`xd_source`): the non-SHIP methods on the source alone; their fits are saved;
- cross-dataset with a target (`xd_finetune`): the saved source fits score the target; the *_ship methods train on
  real source + synthetic target features and score source and target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.adapters import ClassSet
from pipeline.backbone import Backbone, load_backbone
from pipeline.evaluation import SplitPredictions, predict_foreign
from pipeline.feature_store import FeatureStore
from pipeline.features import Task
from pipeline.finetune import MethodResult, curves_frame, per_class_frame, run_methods, seed_predictions
from pipeline.fits import load_fits, restore_adapter, save_fits
from pipeline.generator import ShipGenerator
from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from pipeline.params.finetune import is_oracle, ship_method, uses_synthetic
from pipeline.results import seed_payload, write_seed_results
from pipeline.synthesis import FreshSource, PoolSource, SyntheticSource
from pipeline.tasks import protocol_task
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)


@dataclass
class SeedOutcome:
    """What the finetune stage writes: the scores payload and the fitted methods' curves and per-class scores."""

    payload: dict[str, Any]
    results: list[MethodResult]
    foreign: dict[str, dict[str, SplitPredictions]] = field(default_factory=dict)  # source fits scored on a target

    def write(self, out: Path) -> None:
        """scores.json, curves.csv, per_class.csv and predictions.parquet into the directory `out`, replaced whole."""
        predictions = seed_predictions(self.results, self.foreign)
        write_seed_results(out, self.payload, curves_frame(self.results), per_class_frame(self.results), predictions)


def synthetic_sources(
    params: Params,
    task: Task,
    backbone: Backbone,
    layout: Layout,
    protocol: Protocol,
    dataset: str,
    seed: int,
    target: str | None,
) -> Callable[[str], SyntheticSource]:
    """method -> its synthetic features: CoOp+SHIP (and KgCoOp+SHIP) decode fresh latents through the generator every
    step (SHIP's reference, `synthetic: fresh`); the others draw from the synthesize stage's pool (read once); an
    oracle row draws real augmented views of the new classes' few-shot draw instead (base-to-new only)."""
    pool: list[PoolSource] = []

    def source(method: str) -> SyntheticSource:
        if is_oracle(method):
            store = FeatureStore.open(layout.oracle_store(dataset, seed), backbone.identity(), kind="train")
            return PoolSource(store.split("train").views_as_rows()).to(backbone.device)
        if fresh_synthetic(params, method):
            path = layout.generator(protocol, dataset, seed)
            generator = ShipGenerator.load(path, backbone.text_tower(), expect_backbone=backbone.key)
            generator.set_classnames(task.classnames)  # decoded labels are then task class indices
            return FreshSource(generator, task.label_only)
        if not pool:
            path = layout.synthetic(protocol, dataset, seed, target)
            store = FeatureStore.open(path, backbone.identity(), kind="synthetic")
            # A cross-dataset pool is labelled with the target's own class indices; the task puts them after the
            # source's classes.
            offset = task.label_only[0] if protocol == "cross_dataset" else 0
            pool.append(PoolSource(store.split("synthetic").relabel(offset)).to(backbone.device))
        return pool[0]

    return source


# Methods with a learned CoOp context -> their params section.
PROMPT_METHODS = {"coop": "coop", "coop_ship": "coop_ship", "kgcoop": "kgcoop", "kgcoop_ship": "kgcoop"}


def fresh_synthetic(params: Params, method: str) -> bool:
    """Whether a *_ship prompt method decodes fresh latents through the generator (`synthetic: fresh`); its oracle
    row draws real features instead."""
    section = PROMPT_METHODS.get(method)
    return method.endswith("_ship") and section is not None and getattr(params.finetune, section).synthetic == "fresh"


def check_prompts(params: Params, tower: TextTower, classnames: Sequence[str], methods: Sequence[str]) -> None:
    """Before any fit: every learned-context prompt fits the text context (PromptTooLong names the class names that
    do not), and each CoOp context init has n_ctx tokens (a params error)."""
    for method in methods:
        section = PROMPT_METHODS.get(ship_method(method))
        if section is None:
            continue
        recipe = getattr(params.finetune, section)
        tower.check_prompts_fit(classnames, recipe.n_ctx, f"finetune.{section}.n_ctx")
        if recipe.ctx_init:
            tower.context_init(recipe.ctx_init, recipe.n_ctx, f"finetune.{section}")
    if any(fresh_synthetic(params, m) for m in methods):
        tower.check_prompts_fit(classnames, params.generator.prompt_length, "generator.prompt_length")


def with_method_templates(params: Params) -> Params:
    """TaskRes's base classifier averages the unnormalised text features of its templates, so the adapter encodes
    them itself: null `finetune.taskres.templates` (no preset value) are the zero-shot templates."""
    taskres = params.finetune.taskres
    if taskres.templates is not None or not params.extract.templates:
        return params
    taskres = taskres.model_copy(update={"templates": tuple(params.extract.templates)})
    return params.model_copy(update={"finetune": params.finetune.model_copy(update={"taskres": taskres})})


def score_source_fits(
    params: Params,
    layout: Layout,
    source: str,
    seed: int,
    target: str,
    target_store: FeatureStore,
    backbone: Backbone,
    methods: Sequence[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, SplitPredictions]]]:
    """The source-only fits saved by `xd_source`, restored, scored on the target against its own classes: their
    payload entries, and their image-by-image records."""
    path = layout.fits(source, seed)
    fits = load_fits(path, backbone.key)
    classes = ClassSet(target_store.classnames, {n: target_store.classifier(n) for n in target_store.classifier_names})
    test, tower = target_store.split("test"), backbone.text_tower()
    scored, records = {}, {}
    for method in methods:
        if method not in fits["methods"]:
            raise ValueError(f"{path} holds no fit of {method}; rerun the xd_source stage")
        entry = fits["methods"][method]
        adapter = restore_adapter(method, entry, params.finetune, backbone.device)
        record = predict_foreign(adapter, test, classes, tower)
        acc, records[method] = record.accuracy, {target: record}
        scored[method] = {
            "scores": {target: round(acc, 4)},
            "best_epoch": entry["best_epoch"],
            "val_acc": round(float(entry["val_acc"]), 4),
            "info": entry["info"],
        }
        log.info("%s seed %d (source fit) on %s: %.2f", method, seed, target, acc)
    return scored, records


def finetune_seed(
    params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout
) -> SeedOutcome:
    """Fit and score every method of `finetune.methods` for one seed (see the module docstring for which methods
    each protocol fits); `params` are the whole params, resolved here for `dataset`."""
    p = with_method_templates(params.for_dataset(dataset))
    backbone = load_backbone(params.backbone)
    identity = backbone.identity()
    eval_store = FeatureStore.open(layout.eval_store(dataset), identity, kind="eval")
    train_store = FeatureStore.open(layout.train_store(protocol, dataset, seed), identity, kind="train")
    target_store = None if target is None else FeatureStore.open(layout.eval_store(target), identity, kind="eval")
    context: dict[str, Any] = {"protocol": protocol, "dataset": dataset, "seed": seed, "select": p.finetune.select}
    if target is not None:
        context["target"] = target
    methods = list(p.finetune.methods)
    if protocol != "base_to_new":
        # Only base-to-new has images of its label-only classes outside evaluation (GZSL's unseen images are all
        # test images; a cross-dataset target's are not drawn): its oracle rows run there alone.
        skipped = [m for m in methods if is_oracle(m)]
        if skipped:
            log.info("%s: %s run in base-to-new only", protocol, ", ".join(skipped))
        methods = [m for m in methods if m not in skipped]
    ship = [m for m in methods if uses_synthetic(m)]
    plain = [m for m in methods if m not in ship]
    if protocol == "cross_dataset":
        # The source-only methods are fitted once (no target); a target's stage trains only the *_ship methods.
        methods = plain if target is None else ship

    task = protocol_task(protocol, eval_store, train_store, target_store, target)
    check_prompts(p, backbone.text_tower(), task.classnames, methods)
    sources = synthetic_sources(p, task, backbone, layout, protocol, dataset, seed, target)
    results = run_methods(
        task,
        backbone.text_tower(),
        p.finetune,
        methods,
        seed,
        sources,
        workers=p.finetune.workers,
        threads=p.finetune.threads,
    )
    outcome = SeedOutcome(seed_payload(results, context), results)
    if protocol == "cross_dataset" and target is None:
        save_fits(layout.fits(dataset, seed), results, backbone.key, task.classnames)
    elif protocol == "cross_dataset":
        assert target_store is not None and target is not None
        scored, outcome.foreign = score_source_fits(p, layout, dataset, seed, target, target_store, backbone, plain)
        outcome.payload["methods"] |= scored
    return outcome
