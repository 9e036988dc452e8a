"""Fine-tuning methods on toy features: they learn, respect the label space, select on val only, are deterministic."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.adapters import Adapter, ClassSet, ClipAdapter, CoOp, TipAdapterF, ZeroShot, build_adapter
from pipeline.adapters.base import TrainingData, local_labels
from pipeline.evaluation import base_to_new
from pipeline.features import LabeledFeatures, TaskFeatures
from pipeline.params.finetune import ClipAdapterParams, CoOpParams, FinetuneParams, TipAdapterFParams
from pipeline.text_tower import TextTower

# Short runs. The tiny random text tower's gradients w.r.t. the context are ~1000x larger than real CLIP's (its
# embeddings are tiny next to them), so CoOp's lr is scaled down to keep SGD steps of a sensible size.
FAST = FinetuneParams(
    seeds=(1,),
    coop=CoOpParams(epochs=20, batch_size=8, warmup_epochs=0, lr=1e-4),
    clip_adapter=ClipAdapterParams(epochs=20, batch_size=8, warmup_epochs=0, lr=0.05),
    tip_adapter_f=TipAdapterFParams(epochs=20, batch_size=8),
)
PROMPT_NAMES = ["apple", "bridge", "cat", "desk", "eagle", "forest"]


def _sample(
    proto: torch.Tensor, classes: list[int], n: int, noise: float, g: torch.Generator, views: int = 0
) -> LabeledFeatures:
    """n noisy unit features around each class prototype ([n*len, views, D] when views > 0)."""
    dim = proto.shape[1]
    y = torch.tensor(classes).repeat_interleave(n)
    shape = (len(y), views, dim) if views else (len(y), dim)
    centre = proto[y].unsqueeze(1) if views else proto[y]
    return LabeledFeatures(F.normalize(centre + noise / dim**0.5 * torch.randn(shape, generator=g), dim=-1), y)


def _task(names, proto, text, g, *, noise, shots=8, views=3, n_val=8, n_test=30, n_syn=40) -> TaskFeatures:
    """Base = first half of the classes (labelled), new = the rest; synthetic = a perfect generator's samples."""
    n = len(names)
    base, new = list(range((n + 1) // 2)), list(range((n + 1) // 2, n))
    return TaskFeatures(
        classnames=list(names),
        base=base,
        new=new,
        labeled=base,
        text_classifier=text,
        train=_sample(proto, base, shots, noise, g, views),
        val=_sample(proto, base, n_val, noise, g),
        test=_sample(proto, base + new, n_test, noise, g),
        synthetic=_sample(proto, new, n_syn, noise, g),
    )


def vector_task(seed: int = 0, n_classes: int = 10, dim: int = 32, gamma: float = 5.0, noise: float = 0.5):
    """Random unit prototypes; the text classifier is a prototype drowned in a gamma-times larger random direction
    (CLIP-like: the right class is only slightly closer), so zero-shot is well above chance but far from perfect."""
    g = torch.Generator().manual_seed(seed)
    proto = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    text = F.normalize(proto + gamma * F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1), dim=-1)
    return _task([f"class {i}" for i in range(n_classes)], proto, text, g, noise=noise)


def prompt_task(tower: TextTower, seed: int = 2, shift: float = 2.0, noise: float = 0.03) -> TaskFeatures:
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


def toy_for(method: str, tower: TextTower) -> TaskFeatures:
    return prompt_task(tower) if method.startswith("coop") else vector_task()


def fitted(method: str, task: TaskFeatures, tower: TextTower, seed: int = 1) -> tuple[Adapter, object]:
    adapter = build_adapter(method, FAST)  # type: ignore[arg-type]
    return adapter, adapter.fit(task, tower, seed)


TRAINED = ["coop", "clip_adapter", "tip_adapter_f"]


@pytest.mark.parametrize("method", TRAINED)
def test_learns_base_classes_beyond_zero_shot(method: str, tiny_tower: TextTower):
    task = toy_for(method, tiny_tower)
    zs = base_to_new(fitted("zeroshot", task, tiny_tower)[0], task)
    tuned = base_to_new(fitted(method, task, tiny_tower)[0], task)
    assert zs["base"] < 70.0  # the toy leaves room to learn
    assert tuned["base"] >= zs["base"] + 20.0, (zs, tuned)


@pytest.mark.parametrize("method", TRAINED)
def test_ship_improves_new_classes(method: str, tiny_tower: TextTower):
    task = toy_for(method, tiny_tower)
    plain = base_to_new(fitted(method, task, tiny_tower)[0], task)
    ship = base_to_new(fitted(f"{method}_ship", task, tiny_tower)[0], task)
    assert ship["new"] >= plain["new"] + 15.0, (plain, ship)


@pytest.mark.parametrize("method", TRAINED)
def test_label_space_and_logit_shapes(method: str, tiny_tower: TextTower):
    task = toy_for(method, tiny_tower)
    plain, _ = fitted(method, task, tiny_tower)
    ship, _ = fitted(f"{method}_ship", task, tiny_tower)
    assert plain.label_space == task.labeled
    assert ship.label_space == task.labeled + task.new
    feats = task.test.features[:7]
    assert plain.logits(feats, task.new).shape == (7, len(task.new))
    assert plain.logits(feats, [task.new[0]]).shape == (7, 1)
    assert ship.logits(feats).shape == (7, len(task.classnames))
    # Scores of a class do not depend on which other classes are asked for.
    torch.testing.assert_close(plain.logits(feats, task.new), plain.logits(feats)[:, task.new])


def test_plain_tip_adapter_has_no_cache_term_for_new_classes(tiny_tower: TextTower):
    task = vector_task()
    tip, _ = fitted("tip_adapter_f", task, tiny_tower)
    zs, _ = fitted("zeroshot", task, tiny_tower)
    feats = task.test.features
    torch.testing.assert_close(tip.logits(feats, task.new), zs.logits(feats, task.new))
    assert not torch.allclose(tip.logits(feats, task.base), zs.logits(feats, task.base))


def test_training_batches_pair_real_with_synthetic_new_class_features():
    task = vector_task()
    space = task.labeled + task.new
    data = TrainingData(task, space, use_synthetic=True, batch_size=16, seed=0, device=torch.device("cpu"))
    n_base = len(task.labeled)
    sizes = []
    for x, y in data.epoch():
        half = len(y) // 2
        assert len(y) % 2 == 0 and x.shape == (len(y), 32)
        assert (y[:half] < n_base).all() and (y[half:] >= n_base).all()  # real base, then synthetic new
        sizes.append(half)
    assert sum(sizes) == len(task.train)
    plain = TrainingData(task, task.labeled, use_synthetic=False, batch_size=16, seed=0, device=torch.device("cpu"))
    assert sum(len(y) for _, y in plain.epoch()) == len(task.train)


def test_task_checks(tiny_tower: TextTower):
    task = vector_task()
    stray = replace(task, train=LabeledFeatures(task.train.features, torch.full_like(task.train.labels, 9)))
    with pytest.raises(ValueError, match=r"outside task\.labeled"):
        build_adapter("clip_adapter", FAST).fit(stray, tiny_tower, 1)
    leaky = replace(task, synthetic=LabeledFeatures(task.synthetic.features, torch.zeros_like(task.synthetic.labels)))
    with pytest.raises(ValueError, match="synthetic features given for labelled classes"):
        build_adapter("tip_adapter_f_ship", FAST).fit(leaky, tiny_tower, 1)
    with pytest.raises(ValueError, match="clip_adapter_ship needs synthetic"):
        build_adapter("clip_adapter_ship", FAST).fit(replace(task, synthetic=None), tiny_tower, 1)
    with pytest.raises(ValueError, match="outside the label space"):
        local_labels(torch.tensor([0, 7]), [0, 1, 2], 10)


@pytest.mark.parametrize("method", [*TRAINED, "coop_ship", "tip_adapter_f_ship"])
def test_model_selection_reads_validation_only(method: str, tiny_tower: TextTower):
    task = toy_for(method, tiny_tower)
    # Test features full of NaN: if fit() looked at them, the curve or the kept state would change.
    poisoned = replace(task, test=LabeledFeatures(torch.full_like(task.test.features, float("nan")), task.test.labels))
    adapter, fit = fitted(method, task, tiny_tower)
    adapter_p, fit_p = fitted(method, poisoned, tiny_tower)
    assert fit_p.curve == fit.curve and fit_p.best_epoch == fit.best_epoch
    torch.testing.assert_close(adapter_p.logits(task.test.features), adapter.logits(task.test.features))

    # The kept epoch is the first one with the best validation accuracy, and its state is the one kept.
    accs = [row["val_acc"] for row in fit.curve]
    assert [row["epoch"] for row in fit.curve] == list(range(len(accs)))
    assert fit.best_epoch == accs.index(max(accs)) and fit.best_val_acc == max(accs)
    val_labels = local_labels(task.val.labels, adapter.label_space, len(task.classnames))
    pred = adapter.logits(task.val.features, adapter.label_space).argmax(dim=-1)
    expected = fit.info.get("searched_val_acc", fit.best_val_acc)  # Tip-Adapter-F: after the alpha/beta search
    assert 100.0 * (pred == val_labels).float().mean().item() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["coop_ship", "clip_adapter_ship", "tip_adapter_f_ship"])
def test_deterministic_for_a_seed(method: str, tiny_tower: TextTower):
    task = toy_for(method, tiny_tower)
    a, fit_a = fitted(method, task, tiny_tower, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    b, fit_b = fitted(method, task, tiny_tower, seed=3)
    assert fit_a.curve == fit_b.curve
    torch.testing.assert_close(a.logits(task.test.features), b.logits(task.test.features), rtol=0, atol=0)
    _, fit_c = fitted(method, task, tiny_tower, seed=4)
    assert fit_c.curve != fit_a.curve


def test_transfer_to_a_foreign_class_set(tiny_tower: TextTower):
    task = vector_task()
    foreign = vector_task(seed=5, n_classes=4)
    target = ClassSet(["red", "green", "blue", "grey"], foreign.text_classifier)
    feats = foreign.test.features
    zs, _ = fitted("zeroshot", task, tiny_tower)
    tip, _ = fitted("tip_adapter_f_ship", task, tiny_tower)
    ada, _ = fitted("clip_adapter", task, tiny_tower)
    # Tip-Adapter-F's cache only knows the source classes: on foreign ones it is zero-shot CLIP.
    torch.testing.assert_close(tip.logits(feats, target=target), zs.logits(feats, target=target))
    assert ada.logits(feats, [1, 3], target=target).shape == (len(feats), 2)
    assert not torch.allclose(ada.logits(feats, target=target), zs.logits(feats, target=target))
    coop, _ = fitted("coop", prompt_task(tiny_tower), tiny_tower)
    assert isinstance(coop, CoOp)
    expected = coop.logit_scale * feats @ coop.text_features(target.classnames).T
    torch.testing.assert_close(coop.logits(feats, target=target), expected)


def test_build_adapter():
    assert isinstance(build_adapter("zeroshot", FAST), ZeroShot)
    for method, cls in (("coop", CoOp), ("clip_adapter", ClipAdapter), ("tip_adapter_f", TipAdapterF)):
        plain, ship = build_adapter(method, FAST), build_adapter(f"{method}_ship", FAST)  # type: ignore[arg-type]
        assert type(plain) is cls and type(ship) is cls
        assert not plain.use_synthetic and ship.use_synthetic
        assert ship.method == f"{method}_ship"
    with pytest.raises(ValueError, match="unknown"):
        build_adapter("zeroshot_ship", FAST)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="fit"):
        build_adapter("coop", FAST).logits(torch.zeros(1, 32))


def test_logit_scale_defaults_to_the_backbones_and_params_override_it(tiny_tower):
    task = replace(vector_task(), logit_scale=18.5)
    own, _ = fitted("clip_adapter", task, tiny_tower)
    assert own.logit_scale == 18.5
    params = FinetuneParams(clip_adapter=ClipAdapterParams(epochs=2, logit_scale=50.0))
    fixed = build_adapter("clip_adapter", params)
    fixed.fit(task, tiny_tower, seed=1)
    assert fixed.logit_scale == 50.0
