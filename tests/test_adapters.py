"""Fine-tuning methods on toy features: they learn, respect the label space, select on val only, are deterministic,
and follow their reference recipes (schedules, Tip-Adapter's keys and search, CLIP-Adapter on raw features)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.adapters import Adapter, ClassSet, ClipAdapter, CoOp, TipAdapterF, ZeroShot, build_adapter
from pipeline.adapters.base import TrainingData, TrainingDiverged, learning_rate, local_labels
from pipeline.adapters.clip_adapter import VisualAdapter
from pipeline.adapters.tip_adapter_f import cache_keys, search_grid
from pipeline.evaluation import score_task
from pipeline.features import EvalSplit, LabeledFeatures, Task
from pipeline.params.finetune import (
    ClipAdapterParams,
    CoOpParams,
    CoOpShipParams,
    FinetuneParams,
    TipAdapterFParams,
)
from pipeline.synthesis import PoolSource
from pipeline.text_tower import TextTower

# Short runs. The tiny random text tower's gradients w.r.t. the context are ~1000x larger than real CLIP's (its
# embeddings are tiny next to them), so CoOp's lr is scaled down to keep SGD steps of a sensible size.
FAST = FinetuneParams(
    coop=CoOpParams(epochs=20, batch_size=8, warmup_epochs=0, lr=1e-4),
    coop_ship=CoOpShipParams(optimizer="sgd", lr=1e-4, weight_decay=0.0, epochs=20, batch_size=8),
    clip_adapter=ClipAdapterParams(epochs=20, batch_size=8, warmup_epochs=0, lr=0.05),
    tip_adapter_f=TipAdapterFParams(
        epochs=20, batch_size=8, init_alpha=1.0, init_beta=5.5, search_scale=(10.0, 5.0), search_steps=(10, 6)
    ),
)
PROMPT_NAMES = ["apple", "bridge", "cat", "desk", "eagle", "forest"]


def _sample(
    proto: torch.Tensor, classes: list[int], n: int, noise: float, g: torch.Generator, views: int = 0
) -> LabeledFeatures:
    """n noisy unit features around each class prototype ([n*len, views, D] when views > 0), with norms."""
    dim = proto.shape[1]
    y = torch.tensor(classes).repeat_interleave(n)
    shape = (len(y), views, dim) if views else (len(y), dim)
    centre = proto[y].unsqueeze(1) if views else proto[y]
    feats = F.normalize(centre + noise / dim**0.5 * torch.randn(shape, generator=g), dim=-1)
    return LabeledFeatures(feats, y, 1.0 + torch.rand(shape[:-1], generator=g))


def _task(names, proto, text, g, *, noise, shots=8, views=3, n_val=8, n_test=30, n_syn=40):
    """Base = first half of the classes (labelled), new = the rest; synthetic = a perfect generator's samples."""
    n = len(names)
    base, new = list(range((n + 1) // 2)), list(range((n + 1) // 2, n))
    test = _sample(proto, base + new, n_test, noise, g)
    task = Task(
        protocol="base_to_new",
        classnames=list(names),
        labeled=base,
        label_only=new,
        classifiers={"zeroshot": text},
        train=_sample(proto, base, shots, noise, g, views),
        val=_sample(proto, base, n_val, noise, g),
        evals=[EvalSplit("base", test.of_classes(base), base), EvalSplit("new", test.of_classes(new), new)],
        shots=shots,
    )
    return task, PoolSource(_sample(proto, new, n_syn, noise, g))


def vector_task(seed: int = 0, n_classes: int = 10, dim: int = 32, gamma: float = 5.0, noise: float = 0.5):
    """Random unit prototypes; the text classifier is a prototype drowned in a gamma-times larger random direction
    (CLIP-like: the right class is only slightly closer), so zero-shot is well above chance but far from perfect."""
    g = torch.Generator().manual_seed(seed)
    proto = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    text = F.normalize(proto + gamma * F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1), dim=-1)
    return _task([f"class {i}" for i in range(n_classes)], proto, text, g, noise=noise)


def prompt_task(tower: TextTower, seed: int = 2, shift: float = 2.0, noise: float = 0.03):
    """For CoOp: image prototypes are the tower's features of "[true context] {name}." for a random true context
    near "a photo of a", so some learned context fits every class, but the initial one does not."""
    g = torch.Generator().manual_seed(seed)
    init = tower.context_init("a photo of a", 4)
    true_ctx = init + shift * init.std() * torch.randn(init.shape, generator=g)
    emb, eot = tower.context_prompts(PROMPT_NAMES, 4)
    with torch.no_grad():
        proto = tower.encode_embeddings(tower.splice_context(emb, true_ctx), eot)
    text = tower.zero_shot_classifier(PROMPT_NAMES, ["a photo of a {}."])
    return _task(PROMPT_NAMES, proto, text, g, noise=noise)


def toy_for(method: str, tower: TextTower):
    return prompt_task(tower) if method.startswith("coop") else vector_task()


def fitted(method: str, toy, tower: TextTower, seed: int = 1, params: FinetuneParams = FAST, select: str = "val"):
    task, synthetic = toy
    adapter = build_adapter(method, params)
    return adapter, adapter.fit(task, tower, seed, select=select, synthetic=synthetic)


TRAINED = ["coop", "clip_adapter", "tip_adapter_f"]


def _test(task: Task) -> LabeledFeatures:
    return LabeledFeatures.concat([e.test for e in task.evals])


@pytest.mark.parametrize("method", TRAINED)
def test_learns_base_classes_beyond_zero_shot(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    zs = score_task(fitted("zeroshot", toy, tiny_tower)[0], toy[0])
    tuned = score_task(fitted(method, toy, tiny_tower)[0], toy[0])
    assert zs["base"] < 70.0  # the toy leaves room to learn
    assert tuned["base"] >= zs["base"] + 20.0, (zs, tuned)


@pytest.mark.parametrize("method", TRAINED)
def test_ship_improves_new_classes(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    plain = score_task(fitted(method, toy, tiny_tower)[0], toy[0])
    ship = score_task(fitted(f"{method}_ship", toy, tiny_tower)[0], toy[0])
    assert ship["new"] >= plain["new"] + 15.0, (plain, ship)


@pytest.mark.parametrize("method", TRAINED)
def test_label_space_and_logit_shapes(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    task = toy[0]
    plain, _ = fitted(method, toy, tiny_tower)
    ship, _ = fitted(f"{method}_ship", toy, tiny_tower)
    assert plain.label_space == task.labeled
    assert ship.label_space == task.labeled + task.label_only
    feats = _test(task).features[:7]
    new = task.label_only
    assert plain.logits(feats, new).shape == (7, len(new))
    assert plain.logits(feats, [new[0]]).shape == (7, 1)
    assert ship.logits(feats).shape == (7, len(task.classnames))
    # Scores of a class do not depend on which other classes are asked for.
    torch.testing.assert_close(plain.logits(feats, new), plain.logits(feats)[:, new])


def test_plain_tip_adapter_has_no_cache_term_for_new_classes(tiny_tower: TextTower):
    toy = vector_task()
    task = toy[0]
    tip, _ = fitted("tip_adapter_f", toy, tiny_tower)
    zs, _ = fitted("zeroshot", toy, tiny_tower)
    feats = _test(task).features
    torch.testing.assert_close(tip.logits(feats, task.label_only), zs.logits(feats, task.label_only))
    assert not torch.allclose(tip.logits(feats, task.labeled), zs.logits(feats, task.labeled))


def test_training_batches_pair_real_with_synthetic_new_class_features():
    task, synthetic = vector_task()
    space = task.labeled + task.label_only
    recipe = CoOpParams(batch_size=16, drop_last=False, epochs=1)
    data = TrainingData(task, space, recipe, seed=0, device=torch.device("cpu"), synthetic=synthetic)
    n_base = len(task.labeled)
    sizes = []
    for x, y in data.epoch():
        half = len(y) // 2
        assert len(y) % 2 == 0 and x.shape == (len(y), 32)
        assert (y[:half] < n_base).all() and (y[half:] >= n_base).all()  # real base, then synthetic new
        sizes.append(half)
    assert sum(sizes) == len(task.train)
    plain = TrainingData(task, task.labeled, recipe, seed=0, device=torch.device("cpu"))
    assert sum(len(y) for _, y in plain.epoch()) == len(task.train)


def test_training_draws_augmented_views_only_and_drops_a_ragged_batch_as_dassl():
    task, _ = vector_task()  # 5 base classes x 8 shots = 40 images, 3 views each
    tagged = task.train.features.clone()
    tagged[:, 0] = 0.0  # the clean view: never drawn while any augmented view is cached
    task = replace(task, train=LabeledFeatures(tagged, task.train.labels, task.train.norms))
    dassl = TrainingData(task, task.labeled, CoOpParams(batch_size=16, epochs=1), seed=0, device=torch.device("cpu"))
    batches = [len(y) for _, y in dassl.epoch()]
    assert batches == [16, 16] and len(dassl) == 2  # 40 = 16 + 16 + 8: the 8 are dropped
    assert all(x.abs().sum(dim=-1).min() > 0 for x, _ in dassl.epoch())
    keep = TrainingData(
        task, task.labeled, CoOpParams(batch_size=16, drop_last=False, epochs=1), seed=0, device=torch.device("cpu")
    )
    assert [len(y) for _, y in keep.epoch()] == [16, 16, 8]
    # Fewer images than one batch: Dassl keeps them (drop_last only when the set holds a full batch).
    small = TrainingData(task, task.labeled, CoOpParams(batch_size=64, epochs=1), seed=0, device=torch.device("cpu"))
    assert [len(y) for _, y in small.epoch()] == [40]


class _DasslConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """A restatement of Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py, WARMUP_RECOUNT=True): while
    its own epoch counter is below the warm-up it returns the constant lr and counts; afterwards every step is
    handed to the wrapped scheduler."""

    def __init__(self, optimizer, successor, warmup_epochs, constant_lr):
        self.successor, self.warmup_epochs, self.constant_lr = successor, warmup_epochs, constant_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epochs:
            return self.successor.get_last_lr()
        return [self.constant_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epochs:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


@pytest.mark.parametrize(("warmup", "epochs"), [(1, 10), (2, 7), (1, 200)])
def test_dassl_schedule_matches_the_wrapped_torch_schedulers(warmup, epochs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
    sched = _DasslConstantWarmup(opt, cosine, warmup, 1e-5)
    expected = []
    for _ in range(epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    recipe = CoOpParams(epochs=epochs, warmup_epochs=warmup)
    ours = [learning_rate(recipe, e, 0, 1) for e in range(epochs)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert ours[warmup] == pytest.approx(0.002)  # the cosine starts when the warm-up ends


def test_per_step_cosine_matches_torch():
    recipe = CoOpShipParams(optimizer="sgd", lr=0.002, weight_decay=0.0, epochs=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3 * 5)
    for step in range(15):
        assert learning_rate(recipe, step // 5, step, 5) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_tip_cache_keys_are_the_normalised_mean_of_raw_augmented_views():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(5, 4, 8, generator=g), dim=-1)
    norms = 1.0 + 5.0 * torch.rand(5, 4, generator=g)
    train = LabeledFeatures(feats, torch.arange(5), norms)
    raw = feats[:, 1:] * norms[:, 1:, None]  # views 1.. are augmented; view 0 (clean) is not a Tip-Adapter key
    torch.testing.assert_close(cache_keys(train, None), F.normalize(raw.mean(dim=1), dim=-1))
    torch.testing.assert_close(cache_keys(train, 2), F.normalize(raw[:, :2].mean(dim=1), dim=-1))
    assert not torch.allclose(cache_keys(train, None), F.normalize(feats[:, 1:].mean(dim=1), dim=-1))


def test_tip_search_grid_is_tip_adapters():
    # utils.search_hp: [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]
    assert search_grid(7.0, 200)[:3] == pytest.approx([0.1, 0.1345, 0.169])
    assert len(search_grid(7.0, 200)) == 200 and max(search_grid(3.0, 20)) == pytest.approx(2.855)


def test_tip_search_keeps_the_first_best_pair_in_beta_major_order(tiny_tower: TextTower):
    toy = vector_task()
    tip, fit = fitted("tip_adapter_f", toy, tiny_tower)
    task = toy[0]
    p = FAST.tip_adapter_f
    val_labels = local_labels(task.val.labels, tip.label_space, len(task.classnames))
    values = tip.values[:, tip.label_space]
    weights = task.classifiers["zeroshot"][tip.label_space]
    best, pair = 0.0, None
    for beta in search_grid(p.search_scale[0], p.search_steps[0]):
        for alpha in search_grid(p.search_scale[1], p.search_steps[1]):
            logits = tip.logit_scale * task.val.features @ weights.T + alpha * tip._cache_logits(
                task.val.features, values, beta
            )
            acc = 100.0 * (logits.argmax(-1) == val_labels).float().mean().item()
            if acc > best:
                best, pair = acc, (alpha, beta)
    assert (tip.alpha, tip.beta) == pytest.approx(pair)
    assert fit.info["searched_val_acc"] == pytest.approx(best)


def test_clip_adapter_on_unit_features_equals_the_reference_on_raw_ones():
    # The released code adapts the encoder's raw output; the bias-free ReLU MLP is positively homogeneous.
    adapter = VisualAdapter(16, 4, 0.2, torch.Generator().manual_seed(0))
    raw = 7.0 * torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    reference = F.normalize(0.2 * adapter.fc(raw) + 0.8 * raw, dim=-1)
    torch.testing.assert_close(adapter(F.normalize(raw, dim=-1)), reference)


def test_task_checks(tiny_tower: TextTower):
    task, synthetic = vector_task()
    stray = replace(task, train=LabeledFeatures(task.train.features, torch.full_like(task.train.labels, 9)))
    with pytest.raises(ValueError, match=r"outside task\.labeled"):
        build_adapter("clip_adapter", FAST).fit(stray, tiny_tower, 1)
    leaky = PoolSource(LabeledFeatures(synthetic.features, torch.zeros_like(synthetic.labels)))
    with pytest.raises(ValueError, match="synthetic features given for labelled classes"):
        build_adapter("tip_adapter_f_ship", FAST).fit(task, tiny_tower, 1, synthetic=leaky)
    with pytest.raises(ValueError, match="clip_adapter_ship needs synthetic"):
        build_adapter("clip_adapter_ship", FAST).fit(task, tiny_tower, 1)
    with pytest.raises(ValueError, match="outside the label space"):
        local_labels(torch.tensor([0, 7]), [0, 1, 2], 10)


@pytest.mark.parametrize("method", [*TRAINED, "coop_ship", "tip_adapter_f_ship"])
def test_model_selection_reads_validation_only(method: str, tiny_tower: TextTower):
    task, synthetic = toy_for(method, tiny_tower)
    # Test features full of NaN: if fit() looked at them, the curve or the kept state would change.
    nan_evals = [
        replace(e, test=replace(e.test, features=torch.full_like(e.test.features, math.nan))) for e in task.evals
    ]
    adapter, fit = fitted(method, (task, synthetic), tiny_tower)
    adapter_p, fit_p = fitted(method, (replace(task, evals=nan_evals), synthetic), tiny_tower)
    assert fit_p.curve == fit.curve and fit_p.best_epoch == fit.best_epoch
    feats = _test(task).features
    torch.testing.assert_close(adapter_p.logits(feats), adapter.logits(feats))

    # The kept epoch is the first one with the best validation accuracy, and its state is the one kept.
    accs = [row["val_acc"] for row in fit.curve]
    assert [row["epoch"] for row in fit.curve] == list(range(len(accs)))
    assert fit.best_epoch == accs.index(max(accs)) and fit.best_val_acc == max(accs)
    val_labels = local_labels(task.val.labels, adapter.label_space, len(task.classnames))
    pred = adapter.logits(task.val.features, adapter.label_space).argmax(dim=-1)
    expected = fit.info.get("searched_val_acc", fit.best_val_acc)  # Tip-Adapter-F: after the alpha/beta search
    assert 100.0 * (pred == val_labels).float().mean().item() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["coop", "clip_adapter"])
def test_select_last_keeps_the_final_epoch(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    _, fit = fitted(method, toy, tiny_tower, select="last")
    assert fit.best_epoch == FAST.coop.epochs
    assert fit.best_val_acc == fit.curve[-1]["val_acc"]


@pytest.mark.parametrize("method", ["coop_ship", "clip_adapter_ship", "tip_adapter_f_ship"])
def test_deterministic_for_a_seed(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    feats = _test(toy[0]).features
    a, fit_a = fitted(method, toy, tiny_tower, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    b, fit_b = fitted(method, toy, tiny_tower, seed=3)
    assert fit_a.curve == fit_b.curve
    torch.testing.assert_close(a.logits(feats), b.logits(feats), rtol=0, atol=0)
    _, fit_c = fitted(method, toy, tiny_tower, seed=4)
    assert fit_c.curve != fit_a.curve


def test_a_diverging_loss_stops_with_the_method_seed_and_epoch(tiny_tower: TextTower):
    params = FinetuneParams(clip_adapter=ClipAdapterParams(epochs=3, batch_size=8, warmup_epochs=0, lr=1e30))
    with pytest.raises(TrainingDiverged, match=r"clip_adapter seed 1: training loss is nan in epoch \d"):
        fitted("clip_adapter", vector_task(), tiny_tower, params=params)


def test_transfer_to_a_foreign_class_set(tiny_tower: TextTower):
    toy = vector_task()
    foreign, _ = vector_task(seed=5, n_classes=4)
    target = ClassSet(["red", "green", "blue", "grey"], dict(foreign.classifiers))
    feats = _test(foreign).features
    zs, _ = fitted("zeroshot", toy, tiny_tower)
    tip, _ = fitted("tip_adapter_f_ship", toy, tiny_tower)
    ada, _ = fitted("clip_adapter", toy, tiny_tower)
    kw = {"target": target, "tower": tiny_tower}
    # Tip-Adapter-F's cache only knows the source classes: on foreign ones it is zero-shot CLIP.
    torch.testing.assert_close(tip.logits(feats, **kw), zs.logits(feats, **kw))
    assert ada.logits(feats, [1, 3], **kw).shape == (len(feats), 2)
    assert not torch.allclose(ada.logits(feats, **kw), zs.logits(feats, **kw))
    coop, _ = fitted("coop", prompt_task(tiny_tower), tiny_tower)
    assert isinstance(coop, CoOp)
    expected = coop.logit_scale * feats @ coop.text_features(tiny_tower, target.classnames).T
    torch.testing.assert_close(coop.logits(feats, **kw), expected)


@pytest.mark.parametrize("method", ["zeroshot", "coop", "clip_adapter", "tip_adapter_f"])
def test_exported_fits_score_foreign_classes_as_the_original(method: str, tiny_tower: TextTower):
    toy = toy_for(method, tiny_tower)
    foreign, _ = vector_task(seed=5, n_classes=4)
    target = ClassSet(PROMPT_NAMES[:4], dict(foreign.classifiers))
    adapter, _ = fitted(method, toy, tiny_tower)
    restored = build_adapter(method, FAST)
    restored.restore(adapter.export(), torch.device("cpu"))
    feats = _test(foreign).features
    kw = {"target": target, "tower": tiny_tower}
    torch.testing.assert_close(restored.logits(feats, **kw), adapter.logits(feats, **kw))


def test_build_adapter():
    assert isinstance(build_adapter("zeroshot", FAST), ZeroShot)
    for method, cls in (("coop", CoOp), ("clip_adapter", ClipAdapter), ("tip_adapter_f", TipAdapterF)):
        plain, ship = build_adapter(method, FAST), build_adapter(f"{method}_ship", FAST)
        assert type(plain) is cls and type(ship) is cls
        assert not plain.use_synthetic and ship.use_synthetic
        assert ship.method == f"{method}_ship"
    assert build_adapter("coop_ship", FAST).params is FAST.coop_ship  # SHIP's own recipe, not CoOp's
    assert build_adapter("clip_adapter_ship", FAST).params is FAST.clip_adapter
    with pytest.raises(ValueError, match="unknown"):
        build_adapter("zeroshot_ship", FAST)
    with pytest.raises(RuntimeError, match="fit"):
        build_adapter("coop", FAST).logits(torch.zeros(1, 32))


def test_logit_scale_defaults_to_the_backbones_and_params_override_it(tiny_tower: TextTower):
    task, syn = vector_task()
    own, _ = fitted("clip_adapter", (replace(task, logit_scale=18.5), syn), tiny_tower)
    assert own.logit_scale == 18.5
    params = FinetuneParams(clip_adapter=ClipAdapterParams(epochs=2, logit_scale=50.0))
    fixed: Adapter = build_adapter("clip_adapter", params)
    fixed.fit(replace(task, logit_scale=18.5), tiny_tower, seed=1)
    assert fixed.logit_scale == 50.0
