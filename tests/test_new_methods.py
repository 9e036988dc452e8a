"""GDA, KgCoOp and TaskRes (each with and without SHIP): each is checked against its reference algorithm re-run here
on tiny inputs (GDA's closed form in numpy, KgCoOp's loss and first SGD step by hand, TaskRes's classifier), then
fitted and scored on the toy tasks, and saved/restored through the cross-dataset fits file."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from pipeline.adapters import ClassSet, CoOp, Gda, KgCoOp, TaskRes, build_adapter
from pipeline.adapters.base import build_optimizer
from pipeline.adapters.gda import training_samples
from pipeline.adapters.kgcoop import knowledge_guided_term
from pipeline.adapters.taskres import base_text_features, default_epochs
from pipeline.evaluation import score_task
from pipeline.features import LabeledFeatures, Task
from pipeline.finetune import fit_method
from pipeline.finetune_seed import fresh_synthetic, with_method_templates
from pipeline.fits import load_fits, restore_adapter, save_fits
from pipeline.layout import Layout
from pipeline.params import load_params, parse_params
from pipeline.params.finetune import CoOpParams, FinetuneParams, GdaParams, KgCoOpParams, TaskResParams
from pipeline.synthesis import PoolSource
from pipeline.text_tower import TextTower
from stages.cli import app
from tests import tiny_world
from tests.test_adapters import PROMPT_NAMES, prompt_task, vector_task
from tests.test_params import ROOT
from tests.test_stages import _stage_commands

FAST = FinetuneParams(
    coop=CoOpParams(epochs=20, batch_size=8, warmup_epochs=0, lr=1e-4),
    gda=GdaParams(knn=16),
    kgcoop=KgCoOpParams(epochs=20, batch_size=8, warmup_epochs=0, lr=1e-4, synthetic="pool"),
    taskres=TaskResParams(epochs=20, batch_size=8, warmup_epochs=0, lr=1e-2, alpha=0.5),
)
NEW = ["gda", "kgcoop", "taskres"]
REFERENCE_ALPHAS = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]  # main_base2new.py / main_few_shots.py


def toy_for(method: str, tower: TextTower):
    return prompt_task(tower) if method.startswith("kgcoop") else vector_task()


def fitted(method: str, toy, tower: TextTower, seed: int = 1, params: FinetuneParams = FAST, select: str = "val"):
    task, synthetic = toy
    adapter = build_adapter(method, params)
    return adapter, adapter.fit(task, tower, seed, select=select, synthetic=synthetic)


def _test(task: Task) -> LabeledFeatures:
    return LabeledFeatures.concat([e.test for e in task.evals])


def source_of(task: Task) -> Task:
    """A cross-dataset source like `xd_source`'s: the toy's labelled classes only, every one labelled."""
    n = len(task.labeled)
    return replace(
        task,
        protocol="cross_dataset",
        classnames=task.classnames[:n],
        label_only=[],
        classifiers={k: v[:n] for k, v in task.classifiers.items()},
        evals=task.evals[:1],
    )


# --- GDA: the reference's closed form, in numpy ------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _np_samples(train: LabeledFeatures) -> tuple[np.ndarray, np.ndarray]:
    """The reference's samples: every augmented view (views 1.., not the clean view 0), L2-normalised."""
    views = train.features.shape[1] - 1
    return _np(train.features[:, 1:].reshape(-1, train.features.shape[-1])), train.labels.repeat_interleave(
        views
    ).numpy()


def _np_class_mean_precision(groups):
    return np.linalg.pinv(np.mean([np.cov(x.T) for x in groups], axis=0))


def _np_ks_precision(groups):
    centre = np.concatenate([x - x.mean(axis=0) for x in groups])
    n, dim = centre.shape
    cov = np.cov(centre.T)
    return dim * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(dim))


def _np_knn(vecs, text, k, copies):
    """main_base2new.py's new-class estimate, line by line."""
    dim, means, precisions = vecs.shape[1], [], []
    for w in text:
        near = vecs[np.argsort(-(vecs @ w), kind="stable")[:k]]
        means.append(np.concatenate([near, np.repeat(w[None], copies, axis=0)]).mean(axis=0))
        cov = (near - w).T @ (near - w) / (k - 1)
        precisions.append(dim * np.linalg.pinv((k - 1) * cov + np.trace(cov) * np.eye(dim)))
    return np.stack(means), np.mean(precisions, axis=0)


def _np_head(means, precision, n_classes):
    w = means @ precision
    return w, np.log(1.0 / n_classes) - 0.5 * np.einsum("nd,dc,nc->n", means, precision, means)


def _np_alpha(val, val_labels, text, w, b, scale=100.0):
    best_acc, best_alpha = 0.0, 0.1
    for alpha in REFERENCE_ALPHAS:
        acc = 100.0 * np.mean((scale * val @ text.T + alpha * (val @ w.T + b)).argmax(-1) == val_labels)
        if acc > best_acc:
            best_acc, best_alpha = acc, alpha
    return best_alpha


def gda_toy():
    """4-D features: 3 labelled classes (8 shots x 2 augmented views), 3 label-only ones."""
    return vector_task(seed=3, n_classes=6, dim=4, gamma=1.0, noise=0.6)


@pytest.mark.parametrize("estimator", ["class_mean", "ks"])
def test_gda_matches_the_reference_closed_form(estimator: str, tiny_tower: TextTower):
    task, synthetic = gda_toy()
    params = FinetuneParams(gda=GdaParams(estimator=estimator, knn=10))
    gda, fit = fitted("gda", (task, synthetic), tiny_tower, params=params)

    vecs, labels = _np_samples(task.train)
    text, n = _np(task.text_classifier), len(task.classnames)
    base, new = task.labeled, task.label_only
    groups = [vecs[labels == c] for c in base]
    precision = (_np_class_mean_precision if estimator == "class_mean" else _np_ks_precision)(groups)
    w, b = _np_head(np.stack([g.mean(axis=0) for g in groups]), precision, n)
    val_labels = task.val.labels.numpy()  # base classes 0..2 are their own positions in the label space
    alpha = _np_alpha(_np(task.val.features), val_labels, text[base], w, b)
    assert gda.alpha == alpha and fit.info["alpha"] == alpha
    means_new, precision_new = _np_knn(vecs, text[new], 10, 16)
    w_new, b_new = _np_head(means_new, precision_new, n)

    f = _np(_test(task).features)
    expected = 100.0 * f @ text.T + alpha * np.concatenate([f @ w.T + b, f @ w_new.T + b_new], axis=1)
    np.testing.assert_allclose(_np(gda.logits(_test(task).features)), expected, rtol=1e-4, atol=1e-3)


def test_gda_ship_estimates_label_only_classes_from_synthetic_features(tiny_tower: TextTower):
    task, synthetic = gda_toy()  # 40 synthetic features per new class
    params = FinetuneParams(gda=GdaParams(synthetic_per_class=40))
    gda, _ = fitted("gda_ship", (task, synthetic), tiny_tower, params=params)
    assert gda.label_space == task.labeled + task.label_only

    vecs, labels = _np_samples(task.train)
    syn, syn_labels = _np(synthetic.features), synthetic.labels.numpy()
    groups = [vecs[labels == c] for c in task.labeled] + [syn[syn_labels == c] for c in task.label_only]
    text = _np(task.text_classifier)
    w, b = _np_head(np.stack([g.mean(axis=0) for g in groups]), _np_class_mean_precision(groups), 6)
    alpha = _np_alpha(_np(task.val.features), task.val.labels.numpy(), text, w, b)
    assert gda.alpha == alpha
    f = _np(_test(task).features)
    np.testing.assert_allclose(
        _np(gda.logits(_test(task).features)), 100.0 * f @ text.T + alpha * (f @ w.T + b), rtol=1e-4, atol=1e-3
    )

    # Without their covariance contribution, only the labelled classes' covariances are pooled.
    params = FinetuneParams(gda=GdaParams(synthetic_per_class=40, synthetic_covariance=False))
    lean, _ = fitted("gda_ship", (task, synthetic), tiny_tower, params=params)
    w, b = _np_head(np.stack([g.mean(axis=0) for g in groups]), _np_class_mean_precision(groups[:3]), 6)
    np.testing.assert_allclose(_np(lean.weights), w, rtol=1e-4, atol=1e-4)


def test_gda_estimator_and_samples_follow_the_reference(tiny_tower: TextTower):
    p = GdaParams()
    assert list(p.alphas) == REFERENCE_ALPHAS and (p.knn, p.knn_text_weight, p.logit_scale) == (64, 16, 100.0)
    task, synthetic = gda_toy()
    b2n, _ = fitted("gda", (task, synthetic), tiny_tower)
    xd, _ = fitted("gda", (source_of(task), None), tiny_tower)
    assert (b2n.estimator, xd.estimator) == ("class_mean", "ks")  # main_base2new.py vs main_few_shots.py
    vecs, labels = training_samples(task.train, None)
    expected, expected_labels = _np_samples(task.train)
    np.testing.assert_array_equal(_np(vecs), expected)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    assert training_samples(task.train, 1)[0].shape == (len(task.train), 4)


def test_gda_keeps_fitted_rows_for_known_names_and_estimates_the_others(tiny_tower: TextTower):
    task, synthetic = gda_toy()
    gda, _ = fitted("gda", (task, synthetic), tiny_tower)
    assert isinstance(gda, Gda)
    names = [task.classnames[c] for c in task.labeled]
    unknown = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(9)), dim=-1)
    target = ClassSet([*names, "x", "y"], {"zeroshot": torch.cat([task.text_classifier[task.labeled], unknown])})
    feats = _test(task).features
    foreign = gda.logits(feats, target=target, tower=tiny_tower)
    own = gda.logits(feats, task.labeled)
    # Same rows; the uniform prior is over 5 classes instead of 6: a constant shift.
    torch.testing.assert_close(foreign[:, :3], own + gda.alpha * math.log(6 / 5), rtol=1e-5, atol=1e-4)
    means, precision = _np_knn(_np(training_samples(task.train, None)[0]), _np(unknown), 16, 16)
    w, b = _np_head(means, precision, 5)
    f = _np(feats)
    np.testing.assert_allclose(
        _np(foreign[:, 3:]), 100.0 * f @ _np(unknown).T + gda.alpha * (f @ w.T + b), rtol=1e-4, atol=1e-3
    )


# --- KgCoOp: the loss and the first SGD step, by hand -------------------------------------------------------------


def test_kgcoop_loss_and_first_step_match_a_hand_computation(tiny_tower: TextTower):
    task, _ = prompt_task(tiny_tower)
    task = replace(task, train=task.train.clean())  # one view per image: the batch is the whole training set
    lr, wd, weight = 1e-4, 5e-4, 8.0
    params = KgCoOpParams(epochs=1, batch_size=64, warmup_epochs=0, lr=lr, weight_decay=wd, weight=weight)
    kg = KgCoOp(params)
    fit = kg.fit(task, tiny_tower, seed=0, select="last")

    names = [task.classnames[c] for c in task.labeled]
    emb, eot = tiny_tower.context_prompts(names, 4)
    ctx0 = tiny_tower.context_init("a photo of a", 4)
    ctx = ctx0.clone().requires_grad_(True)
    text = tiny_tower.encode_embeddings(tiny_tower.splice_context(emb, ctx), eot, truncate=False, normalize=False)
    text = text / text.norm(dim=-1, keepdim=True)
    hand = task.text_classifier[task.labeled]
    x, y = task.train.features, task.train.labels
    logits = task.logit_scale * x @ text.T
    ce = -(logits - logits.logsumexp(dim=-1, keepdim=True))[torch.arange(len(y)), y].mean()
    cos = (text * hand).sum(-1) / (text.norm(dim=-1) * hand.norm(dim=-1))
    loss = ce + weight * (1.0 - cos.mean())
    loss.backward()

    assert fit.curve[1]["train_loss"] == pytest.approx(loss.item(), rel=1e-5)
    # SGD with momentum, first step: the buffer is the gradient (+ weight decay x parameter).
    expected = -lr * (ctx.grad + wd * ctx0)
    torch.testing.assert_close(kg.context.ctx.detach() - ctx0, expected, rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(knowledge_guided_term(text.detach(), hand), 1.0 - cos.detach().mean())


def test_kgcoop_defaults_are_its_reference_recipe():
    p = KgCoOpParams()
    assert (p.optimizer, p.lr, p.momentum, p.weight_decay) == ("sgd", 2e-3, 0.9, 5e-4)
    assert (p.schedule, p.warmup_epochs, p.warmup_lr, p.epochs, p.batch_size) == ("dassl_cosine", 1, 1e-5, 100, 128)
    assert (p.n_ctx, p.ctx_init, p.weight, p.logit_scale) == (4, "a photo of a", 8.0, None)
    assert p.templates is None  # the zero-shot classifier, except where a preset names KgCoOp's own prompt


def test_kgcoop_stays_closer_to_the_hand_crafted_embeddings_than_coop(tiny_tower: TextTower):
    toy = prompt_task(tiny_tower)
    task = toy[0]
    coop, _ = fitted("coop", toy, tiny_tower, select="last")
    kg, _ = fitted("kgcoop", toy, tiny_tower, select="last")
    assert isinstance(coop, CoOp) and isinstance(kg, KgCoOp) and type(coop) is not type(kg)
    zs = task.text_classifier
    gap = [1.0 - F.cosine_similarity(a.text_features(tiny_tower, task.classnames), zs).mean() for a in (coop, kg)]
    assert gap[1] < 0.5 * gap[0], gap
    # lambda = 0 is CoOp.
    same = FinetuneParams(kgcoop=FAST.kgcoop.model_copy(update={"weight": 0.0}), coop=FAST.coop)
    plain, _ = fitted("kgcoop", toy, tiny_tower, params=same, select="last")
    torch.testing.assert_close(plain.context.ctx, coop.context.ctx)


# --- TaskRes: the classifier for a given residual and alpha -------------------------------------------------------


def test_taskres_logits_are_the_normalised_base_plus_scaled_residual(tiny_tower: TextTower):
    task, synthetic = vector_task()
    tr, _ = fitted("taskres", (task, synthetic), tiny_tower)
    assert isinstance(tr, TaskRes) and tr.alpha == 0.5
    residual = tr.residual.weight.detach()
    assert residual.abs().max() > 0  # it trained
    base = task.text_classifier  # no templates: the task's classifier is the base
    rows = base.clone()
    rows[task.labeled] = base[task.labeled] + 0.5 * residual
    rows = rows / rows.norm(dim=-1, keepdim=True)
    feats = _test(task).features
    torch.testing.assert_close(tr.logits(feats), tr.logit_scale * feats @ rows.T)
    # Label-only classes have no residual: zero-shot CLIP.
    torch.testing.assert_close(tr.logits(feats, task.label_only), tr.logit_scale * feats @ base[task.label_only].T)


def test_taskres_base_is_the_mean_of_unnormalised_template_features(tiny_tower: TextTower):
    names, templates = PROMPT_NAMES[:3], ["a photo of a {}.", "art of the {}."]
    base = base_text_features(tiny_tower, names, templates)
    per_template = [
        tiny_tower.encode_tokens(tiny_tower.tokenize([t.format(n) for n in names]), truncate=False, normalize=False)
        for t in templates
    ]
    torch.testing.assert_close(base, torch.stack(per_template).mean(dim=0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base.norm(dim=-1), torch.ones(3))
    one = base_text_features(tiny_tower, names, templates[:1])
    torch.testing.assert_close(F.normalize(one, dim=-1), tiny_tower.zero_shot_classifier(names, templates[:1]))

    task, synthetic = prompt_task(tiny_tower)
    params = FinetuneParams(taskres=FAST.taskres.model_copy(update={"templates": tuple(templates), "epochs": 1}))
    tr, _ = fitted("taskres", (task, synthetic), tiny_tower, params=params)
    torch.testing.assert_close(tr.base, base_text_features(tiny_tower, task.classnames, templates))


def test_taskres_defaults_are_its_reference_recipe(tiny_tower: TextTower):
    shapes = load_params(ROOT / "params.yaml").for_dataset("shapes").finetune.taskres
    assert (shapes.optimizer, shapes.lr, shapes.weight_decay, shapes.eps, shapes.batch_size) == (
        "adam",
        2e-3,
        5e-4,
        1e-8,
        256,
    )
    assert (shapes.schedule, shapes.warmup_epochs, shapes.warmup_lr, shapes.alpha) == ("dassl_cosine", 1, 1e-5, 0.5)
    assert (default_epochs(1), default_epochs(4), default_epochs(8), default_epochs(16)) == (100, 100, 200, 200)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], shapes)
    assert type(optimizer) is torch.optim.Adam  # Dassl's adam: L2 weight decay, not AdamW's decoupled one
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 5e-4)
    # epochs: null -> by shots (the toy has 8): 200 epochs.
    task, _ = vector_task()
    _, fit = fitted("taskres", (task, None), tiny_tower, params=FinetuneParams(taskres=shapes))
    assert len(fit.curve) == 201


def test_presets_carry_the_per_dataset_values():
    p = load_params(ROOT / "params.yaml")
    spec = p.datasets["shapes"]
    data = p.model_dump(mode="json")
    for name in ("imnet", "flowers", "dtd"):
        data["datasets"][name] = {**spec.model_dump(mode="json"), "preset": None}
    data["datasets"]["imnet"]["preset"] = "imagenet"
    data["datasets"]["flowers"]["preset"] = "oxford_flowers"
    data["datasets"]["dtd"]["preset"] = "dtd"
    p = parse_params(data)
    imnet, flowers, dtd = (p.for_dataset(n).finetune for n in ("imnet", "flowers", "dtd"))
    assert (imnet.taskres.lr, imnet.taskres.alpha, len(imnet.taskres.templates)) == (2e-4, 0.5, 8)
    assert imnet.taskres.templates[-1] == "a photo of a {}."
    assert (flowers.taskres.lr, flowers.taskres.alpha) == (2e-3, 1.0)
    assert dtd.kgcoop.templates == ("a photo of a {}, a type of texture.",)
    # The stage gives TaskRes the zero-shot templates where no preset names its own.
    resolved = with_method_templates(p.for_dataset("flowers"))
    assert resolved.finetune.taskres.templates == tuple(resolved.extract.templates)
    assert with_method_templates(p.for_dataset("imnet")).finetune.taskres.templates == imnet.taskres.templates
    assert fresh_synthetic(p, "kgcoop_ship") and fresh_synthetic(p, "coop_ship")
    assert not fresh_synthetic(p, "kgcoop") and not fresh_synthetic(p, "taskres_ship")


# --- every new method: fit, score, label spaces, selection, save/restore -----------------------------------------


@pytest.mark.parametrize("method", NEW)
def test_fit_and_score_with_and_without_ship(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    task = toy[0]
    zs = score_task(fitted("zeroshot", toy, tiny_tower)[0], task)
    plain, _ = fitted(method, toy, tiny_tower)
    ship, _ = fitted(f"{method}_ship", toy, tiny_tower)
    plain_scores, ship_scores = score_task(plain, task), score_task(ship, task)
    assert plain_scores["base"] >= zs["base"] + 20.0, (zs, plain_scores)
    assert ship_scores["new"] >= plain_scores["new"] + 15.0, (plain_scores, ship_scores)
    assert plain.label_space == task.labeled and ship.label_space == task.labeled + task.label_only
    feats = _test(task).features[:7]
    assert plain.logits(feats).shape == (7, len(task.classnames))
    assert ship.logits(feats, task.label_only).shape == (7, len(task.label_only))
    torch.testing.assert_close(plain.logits(feats, task.label_only), plain.logits(feats)[:, task.label_only])
    assert torch.isfinite(ship.logits(feats)).all()


@pytest.mark.parametrize("method", [*NEW, "gda_ship", "kgcoop_ship", "taskres_ship"])
def test_selection_reads_validation_only_and_a_seed_fixes_the_fit(method: str, tiny_tower: TextTower):
    task, synthetic = toy_for(method, tiny_tower)
    nan_evals = [
        replace(e, test=replace(e.test, features=torch.full_like(e.test.features, math.nan))) for e in task.evals
    ]
    adapter, fit = fitted(method, (task, synthetic), tiny_tower, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    again, fit_again = fitted(method, (replace(task, evals=nan_evals), synthetic), tiny_tower, seed=3)
    assert fit_again.curve == fit.curve and fit_again.best_epoch == fit.best_epoch
    feats = _test(task).features
    torch.testing.assert_close(again.logits(feats), adapter.logits(feats), rtol=0, atol=0)
    # The kept state scores validation as recorded.
    pred = adapter.logits(task.val.features, adapter.label_space).argmax(dim=-1)
    val_labels = torch.as_tensor([adapter.label_space.index(int(c)) for c in task.val.labels])
    expected = fit.info.get("searched_val_acc", fit.best_val_acc)
    assert 100.0 * (pred == val_labels).float().mean().item() == pytest.approx(expected)


@pytest.mark.parametrize("method", NEW)
def test_fits_round_trip_and_score_foreign_classes(method: str, tiny_tower: TextTower, tmp_path):
    toy = toy_for(method, tiny_tower)
    task = toy[0]
    source = source_of(task)
    result = fit_method(method, source, tiny_tower, FAST, 1, None)
    original = build_adapter(method, FAST)
    original.fit(source, tiny_tower, 1)
    save_fits(tmp_path / "fits.pt", [result], "tiny", source.classnames)
    entry = load_fits(tmp_path / "fits.pt", "tiny")["methods"][method]
    restored = restore_adapter(method, entry, FAST, torch.device("cpu"))

    # A target naming two fitted classes (domain-generalisation style) and two the source never saw.
    foreign, _ = vector_task(seed=5, n_classes=4, dim=task.text_classifier.shape[1])
    names = [task.classnames[0], task.classnames[2], "tulip", "quarry"]
    target = ClassSet(names, dict(foreign.classifiers))
    feats = _test(foreign).features
    kw = {"target": target, "tower": tiny_tower}
    torch.testing.assert_close(restored.logits(feats, **kw), original.logits(feats, **kw))
    assert restored.logits(feats, [1, 3], **kw).shape == (len(feats), 2)
    if method == "taskres":  # no residual for names the source never saw: the target's zero-shot classifier
        zs = original.logit_scale * feats @ target.classifier()[2:].T
        torch.testing.assert_close(original.logits(feats, [2, 3], **kw), zs)


def test_gda_exports_float16_samples_when_lossless(tiny_tower: TextTower):
    task, synthetic = gda_toy()
    exact = replace(task, train=replace(task.train, features=task.train.features.half().float()))
    assert fitted("gda", (exact, synthetic), tiny_tower)[0].export()["vecs"].dtype == torch.float16
    assert fitted("gda", (task, synthetic), tiny_tower)[0].export()["vecs"].dtype == torch.float32


def test_build_adapter_registers_the_new_methods():
    for method, cls in (("gda", Gda), ("kgcoop", KgCoOp), ("taskres", TaskRes)):
        plain, ship = build_adapter(method, FAST), build_adapter(f"{method}_ship", FAST)
        assert type(plain) is cls and type(ship) is cls
        assert not plain.use_synthetic and ship.use_synthetic and ship.method == f"{method}_ship"
        assert ship.params is getattr(FAST, method)
    assert set(FinetuneParams().methods) == {
        "zeroshot",
        "coop",
        "coop_ship",
        "clip_adapter",
        "clip_adapter_ship",
        "tip_adapter_f",
        "tip_adapter_f_ship",
    }  # the paper's methods; the new ones run when `finetune.methods` names them


def test_ship_variants_need_synthetic_features(tiny_tower: TextTower):
    task, synthetic = vector_task()
    for method in ("gda_ship", "taskres_ship"):
        with pytest.raises(ValueError, match=f"{method} needs synthetic"):
            build_adapter(method, FAST).fit(task, tiny_tower, 1)
    leaky = PoolSource(LabeledFeatures(synthetic.features, torch.zeros_like(synthetic.labels)))
    with pytest.raises(ValueError, match="synthetic features given for labelled classes"):
        build_adapter("gda_ship", FAST).fit(task, tiny_tower, 1, synthetic=leaky)


def test_every_protocol_runs_the_new_methods_through_the_stages(tmp_path):
    """The stages end to end on the tiny world (one seed): kgcoop_ship decodes fresh latents, TaskRes encodes its
    templates, the source fits (GDA's samples included) are saved and restored to score the cross-dataset target."""
    params = tiny_world.build(tmp_path)
    methods = ["zeroshot", "gda", "gda_ship", "kgcoop", "kgcoop_ship", "taskres", "taskres_ship"]
    params["seeds"] = [1]
    params["base_to_new"]["datasets"] = ["alpha"]
    params["finetune"].update(
        methods=methods, kgcoop={"epochs": 2, "batch_size": 4}, taskres={"epochs": 2, "batch_size": 4}
    )
    path, work = tmp_path / "params.yaml", tmp_path / "work"
    path.write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd in _stage_commands(params):
        result = runner.invoke(app, [*cmd, "-p", str(path), "--workdir", str(work)])
        assert result.exit_code == 0, (cmd, result.output)
    layout = Layout(work)

    def scores(*where):
        return json.loads((layout.finetune_results(*where) / "scores.json").read_text())["methods"]

    b2n, gzsl = scores("base_to_new", "alpha", 1), scores("gzsl", "gamma", 1)
    assert set(b2n) == set(gzsl) == set(methods)
    assert all({"base", "new", "hm"} <= set(b2n[m]["scores"]) for m in methods)
    assert all({"seen", "unseen", "hm"} <= set(gzsl[m]["scores"]) for m in methods)
    assert b2n["gda"]["info"]["alpha"] in REFERENCE_ALPHAS
    source, target = scores("cross_dataset", "alpha", 1), scores("cross_dataset", "alpha", 1, "beta")
    assert set(source) == {"zeroshot", "gda", "kgcoop", "taskres"}
    assert set(target) == set(methods)
    assert set(target["gda"]["scores"]) == {"beta"} and set(target["gda_ship"]["scores"]) == {"source", "beta"}
