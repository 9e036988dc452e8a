"""Stages `*_finetune` (and `xd_source`): every method for one seed on one task; per-seed scores, curves, per-class.

- base-to-new / GZSL: every method on the dataset's task;
- cross-dataset, no target (`xd_source`): the non-SHIP methods on the source alone; their fits are saved;
- cross-dataset with a target (`xd_finetune`): the saved source fits score the target; the *_ship methods train on
  real source + synthetic target features and score source and target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.adapters import ClassSet
from pipeline.backbone import Backbone, load_backbone
from pipeline.evaluation import score_foreign
from pipeline.feature_store import FeatureStore
from pipeline.features import Task
from pipeline.finetune import curves_frame, per_class_frame, run_methods
from pipeline.fits import load_fits, restore_adapter, save_fits
from pipeline.generator import ShipGenerator
from pipeline.layout import Layout, Protocol
from pipeline.params import Params
from pipeline.results import seed_payload, write_seed_results
from pipeline.synthesis import FreshSource, PoolSource, SyntheticSource
from pipeline.tasks import base_to_new_task, cross_dataset_task, gzsl_task, source_task
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)


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
    """method -> its synthetic features: CoOp+SHIP (and KgCoOp+SHIP) decode fresh latents through the generator
    every step (SHIP's reference, `synthetic: fresh`); the others draw from the synthesize stage's pool."""
    pool: list[PoolSource] = []

    def source(method: str) -> SyntheticSource:
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
    """Whether a *_ship prompt method decodes fresh latents through the generator (`synthetic: fresh`)."""
    section = PROMPT_METHODS.get(method)
    return method.endswith("_ship") and section is not None and getattr(params.finetune, section).synthetic == "fresh"


def check_prompts(params: Params, tower: TextTower, classnames: Sequence[str]) -> None:
    """Before any fit: every learned-context prompt fits the text context (PromptTooLong names the class names that
    do not), and each CoOp context init has n_ctx tokens (a params error)."""
    methods = params.finetune.methods
    for method, section in PROMPT_METHODS.items():
        if method in methods:
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


def layout_of(params: Params) -> dict[str, int | None]:
    return {"workers": params.finetune.workers, "threads": params.finetune.threads}


def run(params: Params, protocol: Protocol, dataset: str, seed: int, target: str | None, layout: Layout) -> None:
    p = with_method_templates(params.for_dataset(dataset))
    backbone = load_backbone(params.backbone)
    identity, tower = backbone.identity(), backbone.text_tower()
    eval_store = FeatureStore.open(layout.eval_store(dataset), identity, kind="eval")
    train_store = FeatureStore.open(layout.train_store(protocol, dataset, seed), identity, kind="train")
    context: dict[str, Any] = {"protocol": protocol, "dataset": dataset, "seed": seed, "select": p.finetune.select}
    methods = list(p.finetune.methods)
    ship = [m for m in methods if m.endswith("_ship")]
    plain = [m for m in methods if m not in ship]

    if protocol == "cross_dataset" and target is None:  # xd_source: the source-only methods, fitted once
        task = source_task(eval_store, train_store)
        check_prompts(p, tower, task.classnames)
        results = run_methods(task, tower, p.finetune, plain, seed, lambda m: None, **layout_of(p))
        save_fits(layout.fits(dataset, seed), results, backbone.key, task.classnames)
        payload = seed_payload(results, context)
    elif protocol == "cross_dataset":
        assert target is not None
        target_store = FeatureStore.open(layout.eval_store(target), identity, kind="eval")
        task = cross_dataset_task(source_task(eval_store, train_store), target_store, target)
        check_prompts(p, tower, task.classnames)
        sources = synthetic_sources(params, task, backbone, layout, protocol, dataset, seed, target)
        results = run_methods(task, tower, p.finetune, ship, seed, sources, **layout_of(p))
        payload = seed_payload(results, {**context, "target": target})
        # The source-only fits, restored, score the target against its own classes.
        fits = load_fits(layout.fits(dataset, seed), backbone.key)
        classes = ClassSet(
            target_store.classnames, {n: target_store.classifier(n) for n in target_store.classifier_names}
        )
        test = target_store.split("test")
        for method in plain:
            if method not in fits["methods"]:
                raise ValueError(f"{layout.fits(dataset, seed)} holds no fit of {method}; rerun the xd_source stage")
            entry = fits["methods"][method]
            acc = score_foreign(restore_adapter(method, entry, p.finetune, backbone.device), test, classes, tower)
            payload["methods"][method] = {
                "scores": {target: round(acc, 4)},
                "best_epoch": entry["best_epoch"],
                "val_acc": round(float(entry["val_acc"]), 4),
                "info": entry["info"],
            }
            log.info("%s seed %d (source fit) on %s: %.2f", method, seed, target, acc)
    else:
        task = (base_to_new_task if protocol == "base_to_new" else gzsl_task)(eval_store, train_store)
        check_prompts(p, tower, task.classnames)
        sources = synthetic_sources(params, task, backbone, layout, protocol, dataset, seed, None)
        results = run_methods(task, tower, p.finetune, methods, seed, sources, **layout_of(p))
        payload = seed_payload(results, context)
    write_seed_results(
        layout.finetune_results(protocol, dataset, seed, target),
        payload,
        curves_frame(results),
        per_class_frame(results),
    )
