"""SHIP generator: what trains, what stays frozen, validation-only selection, and checkpoints."""

from __future__ import annotations

import inspect

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from pipeline.features import LabeledFeatures
from pipeline.generator import CheckpointMismatch, GeneratorConfig, ShipGenerator, vae_loss
from pipeline.generator_training import VAL_SEED_OFFSET, evaluate, train_generator
from pipeline.params.generator import GeneratorParams
from pipeline.synthesis import synthesize_features
from pipeline.text_tower import TextTower

NAMES = ["cat", "dog", "red car", "tree", "sailing boat", "apple"]
DIM = 32  # the tiny model's feature dim
PARAMS = GeneratorParams(
    prompt_length=2, encoder_hidden=64, bias_hidden=64, bias_activation="relu", batch_size=16, epochs=5, lr=3e-3
)
SEED = 1


def clustered(n_per_class: int, views: int, seed: int) -> LabeledFeatures:
    """Unit features clustered around one fixed random centre per class; [N, V, D] when views > 1."""
    centres = F.normalize(torch.randn(len(NAMES), DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    x = F.normalize(centres[labels][:, None] + 0.15 * torch.randn(len(labels), views, DIM, generator=g), dim=-1)
    return LabeledFeatures(x if views > 1 else x[:, 0], labels)


def make_generator(tower: TextTower, prompt_length: int = 2) -> ShipGenerator:
    torch.manual_seed(0)
    return ShipGenerator(tower, NAMES, GeneratorConfig(DIM, tower.width, prompt_length, 64, 64))


@pytest.fixture(scope="module")
def runs(tiny_tower: TextTower) -> dict:
    """The same training run scored against two validation sets: held-out data, and its negation."""
    train, val = clustered(16, 3, seed=1), clustered(4, 1, seed=2)
    flipped = LabeledFeatures(-val.features, val.labels)  # gets worse the better the model fits the data
    return {
        "train": train,
        "val": val,
        "good": train_generator(train, val, NAMES, tiny_tower, PARAMS, "cpu", seed=SEED, show_progress=False),
        "flipped": train_generator(train, flipped, NAMES, tiny_tower, PARAMS, "cpu", seed=SEED, show_progress=False),
    }


def test_gradients_reach_encoder_mlp_prompts_but_not_the_tower(tiny_tower: TextTower):
    model = make_generator(tiny_tower, prompt_length=3)
    model.train()
    assert model.training and model.encoder.training
    assert not model.tower.training  # frozen tower stays in eval whatever the generator's mode
    data = clustered(2, 1, seed=3)
    model.loss(data.features, data.labels, kl_weight=1.0).total.backward()
    named = [*model.encoder.named_parameters(), *model.mean.named_parameters(), *model.log_var.named_parameters()]
    for name, p in [*named, *model.bias_mlp.named_parameters(), ("prompts", model.prompts)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.tower.parameters())
    assert all(not p.requires_grad for p in model.tower.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.tower.parameters()}


def test_shapes_unit_norm_and_state_dict_without_tower(tiny_tower: TextTower):
    model = make_generator(tiny_tower)
    data = clustered(2, 1, seed=4)
    recon, mu, log_var = model(data.features, data.labels)
    assert recon.shape == (12, DIM) and mu.shape == log_var.shape == (12, tiny_tower.width)
    torch.testing.assert_close(recon.norm(dim=-1), torch.ones(12))
    # The cached class prompts are trimmed to the longest EOT: nothing after it reaches the feature.
    assert model.class_emb.shape[:2] == (len(NAMES), int(model.class_eot.max()) + 1)
    keys = set(model.state_dict())
    assert keys == {
        "prompts",
        *(f"encoder.{k}" for k in model.encoder.state_dict()),
        "mean.weight",
        "mean.bias",
        "log_var.weight",
        "log_var.bias",
        *(f"bias_mlp.{k}" for k in model.bias_mlp.state_dict()),
    }
    other = make_generator(tiny_tower)
    other.load_state_dict(model.state_dict())  # strict, yet the tower is not needed
    with pytest.raises(IndexError):
        model.decode(torch.zeros(1, tiny_tower.width), torch.tensor([len(NAMES)]))


def test_vae_loss_by_hand():
    recon, target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    mu, log_var = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    terms = vae_loss(recon, target, mu, log_var, kl_weight=0.5)
    # recon: (1 + 4) / 2; KL per row: 0.5 * (mu^2 + e^lv - 1 - lv) = 0.5 and 0.5 * (e - 2)
    kl = (0.5 + 0.5 * (torch.e - 2)) / 2
    assert terms.recon.item() == pytest.approx(2.5)
    assert terms.kl.item() == pytest.approx(kl)
    assert terms.total.item() == pytest.approx(2.5 + 0.5 * kl)


def test_initialisation_is_the_references(tiny_tower: TextTower):
    # SHIP's weights_init: every Linear ~ N(0, 0.02) with zero bias; the prompt vectors ~ N(0, 0.02).
    model = ShipGenerator(tiny_tower, NAMES, GeneratorConfig(DIM, tiny_tower.width, 4, 512, 512, init_std=0.02))
    linears = [
        m for m in model.modules() if isinstance(m, torch.nn.Linear) and not any(m is t for t in model.tower.modules())
    ]
    assert len(linears) == 5  # encoder, mean head, log-variance head, two in the bias MLP
    for layer in linears:
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert abs(layer.weight.mean().item()) < 0.002
    assert model.prompts.std().item() == pytest.approx(0.02, rel=0.35)
    leaky = ShipGenerator(
        tiny_tower, NAMES, GeneratorConfig(DIM, tiny_tower.width, 4, 8, 8, bias_activation="leaky_relu")
    )
    assert isinstance(leaky.bias_mlp[1], torch.nn.LeakyReLU) and leaky.bias_mlp[1].negative_slope == 0.2


def test_select_last_keeps_the_final_epoch(tiny_tower: TextTower, runs: dict):
    params = PARAMS.model_copy(update={"epochs": 3, "select": "last"})
    out = train_generator(
        runs["flipped"] and runs["train"], runs["val"], NAMES, tiny_tower, params, "cpu", seed=SEED, show_progress=False
    )
    assert out.best_epoch == 3 and out.best_val_loss == out.history[-1]["val_loss"]


def test_a_diverging_generator_names_its_seed_and_lr(tiny_tower: TextTower, runs: dict):
    from pipeline.generator_training import TrainingDiverged

    params = PARAMS.model_copy(update={"epochs": 3, "lr": 1e12})
    with pytest.raises(
        TrainingDiverged, match=r"generator loss is (nan|inf) in epoch \d \(seed 1\); lower generator\.lr"
    ):
        train_generator(runs["train"], runs["val"], NAMES, tiny_tower, params, "cpu", seed=SEED, show_progress=False)


def test_unreadable_checkpoints_are_named(tiny_tower: TextTower, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointMismatch, match=r"empty\.pt is not a readable generator checkpoint"):
        ShipGenerator.load(empty, tiny_tower)
    with pytest.raises(CheckpointMismatch, match="does not exist"):
        ShipGenerator.load(tmp_path / "missing.pt", tiny_tower)
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointMismatch, match=r"evil\.pt is not a readable generator checkpoint"):
        ShipGenerator.load(evil, tiny_tower)


def test_loss_falls(runs: dict):
    history = runs["good"].history
    assert [r["epoch"] for r in history] == list(range(1, PARAMS.epochs + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert runs["good"].steps_per_second > 0


def test_selection_uses_validation_only(runs: dict):
    assert "test" not in inspect.signature(train_generator).parameters
    good, flipped = runs["good"], runs["flipped"]
    for out in (good, flipped):
        vals = [r["val_loss"] for r in out.history]
        assert out.best_epoch == 1 + vals.index(min(vals))
        assert out.best_val_loss == min(vals)
    # Identical training trajectories (validation never touches the training random stream) ...
    assert [r["train_loss"] for r in good.history] == [r["train_loss"] for r in flipped.history]
    # ... yet a different validation set picks a different epoch.
    assert good.best_epoch != flipped.best_epoch
    # The returned model holds the selected epoch's state.
    again = evaluate(good.model, runs["val"], kl_weight=PARAMS.kl_weight, seed=SEED + VAL_SEED_OFFSET, batch_size=16)
    assert again["loss"] == pytest.approx(good.best_val_loss, rel=1e-5)
    assert not good.model.training


def test_training_is_deterministic(tiny_tower: TextTower, runs: dict):
    params = PARAMS.model_copy(update={"epochs": 2})
    a = train_generator(runs["train"], runs["val"], NAMES, tiny_tower, params, "cpu", seed=SEED, show_progress=False)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in runs["good"].history[:2]]
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in runs["good"].history[:2]]


def test_save_load_round_trip(tiny_tower: TextTower, runs: dict, tmp_path):
    model = runs["good"].model
    path = tmp_path / "gen" / "generator.pt"
    model.save(path, backbone="test-tiny-vit/random")
    assert [p.name for p in path.parent.iterdir()] == ["generator.pt"]  # no temp file left behind
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    n_tower = sum(p.numel() for p in tiny_tower.parameters())
    assert path.stat().st_size < 4 * n_trainable + 64_000 < 4 * n_tower  # trainable parts only
    loaded = ShipGenerator.load(path, tiny_tower, expect_backbone="test-tiny-vit/random")
    assert loaded.classnames == NAMES and loaded.config == model.config
    a = synthesize_features(model, [0, 4], per_class=5, seed=3)
    b = synthesize_features(loaded, [0, 4], per_class=5, seed=3)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    with pytest.raises(CheckpointMismatch, match="other-backbone"):
        ShipGenerator.load(path, tiny_tower, expect_backbone="other-backbone")


def test_load_onto_wrong_width_tower_fails(tiny_tower: TextTower, tmp_path):
    path = tmp_path / "generator.pt"
    make_generator(tiny_tower).save(path, backbone="test-tiny-vit/random")
    wide = CLIP(
        embed_dim=DIM,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=1),
    )
    wide_tower = TextTower(wide, open_clip.get_tokenizer("test-tiny-vit"))
    with pytest.raises(CheckpointMismatch, match=r"test-tiny-vit/random.*width 48.*width 64"):
        ShipGenerator.load(path, wide_tower)
