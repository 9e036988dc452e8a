"""The demo world (deterministic, well-formed, CoOp layout) and the demo backbone's pre-training (loadable, seeded)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import open_clip
import pytest
import torch

from pipeline.backbone import register_model_configs
from pipeline.demo import world
from pipeline.demo.pretrain import DEMO_MODEL, pretrain_backbone
from pipeline.params.demo import DemoBackboneParams, DemoWorldParams

# The class set is fixed (64 classes), so "tiny" means few images per class.
TINY = DemoWorldParams(web_per_class=2, train_per_class=2, val_per_class=1, test_per_class=2)
TINY_TRAINING = DemoBackboneParams(epochs=1, batch_size=32, warmup=0.5)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "world"
    world.generate_world(TINY, out, workers=1)
    return out


def test_generation_is_deterministic_and_independent_of_workers(tiny_world: Path, tmp_path: Path):
    world.generate_world(TINY, tmp_path / "again", workers=2)
    assert tree_hashes(tmp_path / "again") == tree_hashes(tiny_world)

    world.generate_world(TINY.model_copy(update={"seed": 1}), tmp_path / "other", workers=1)
    other = tree_hashes(tmp_path / "other")
    same = tree_hashes(tiny_world)
    assert other.keys() == same.keys()  # same layout ...
    pngs = [k for k in same if k.endswith(".png")]
    assert all(other[k] != same[k] for k in pngs)  # ... different pixels


def test_split_file_is_well_formed(tiny_world: Path):
    names = (tiny_world / world.CLASSNAMES_FILE).read_text().splitlines()
    assert names == world.classnames() and len(names) >= 60 and len(set(names)) == len(names)
    split = json.loads((tiny_world / world.SPLIT_FILE).read_text())
    assert set(split) == {"train", "val", "test"}
    expected = {"train": TINY.train_per_class, "val": TINY.val_per_class, "test": TINY.test_per_class}
    seen_paths: set[str] = set()
    for name, rows in split.items():
        counts = [0] * len(names)
        for rel, label, classname in rows:
            assert (tiny_world / "images" / rel).is_file()
            assert classname == names[label]
            counts[label] += 1
            seen_paths.add(rel)
        assert counts == [expected[name]] * len(names), name
    assert len(seen_paths) == sum(len(rows) for rows in split.values())  # no image in two splits
    labels = sorted({label for rows in split.values() for _, label, _ in rows})
    assert labels == list(range(len(names)))


def test_base_and_new_halves_each_cover_every_colour_and_shape():
    classes = world.demo_classes()
    assert [c.label for c in classes] == list(range(len(classes)))
    n_base = math.ceil(len(classes) / 2)
    for half in (classes[:n_base], classes[n_base:]):
        assert {c.colour for c in half} == set(world.COLOURS)
        assert {c.shape for c in half} == set(world.SHAPES)
    # New classes are unseen combinations of seen words, not a fixed colour block.
    assert len({(c.colour, c.shape) for c in classes}) == len(classes)


def test_web_captions_name_their_class(tiny_world: Path):
    names = world.classnames()
    rows = json.loads((tiny_world / world.WEB_CAPTIONS_FILE).read_text())
    assert len(rows) == TINY.web_per_class * len(names)
    for rel, label, caption in rows:
        assert (tiny_world / "web" / rel).is_file()
        colour, shape = names[label].split()
        assert colour in caption and shape in caption, caption
    assert len({caption for _, _, caption in rows}) > len(rows) // 2  # varied templates, not one string


def test_interrupted_generation_leaves_no_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = {"n": 0}
    real = world.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(world, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        world.generate_world(TINY, tmp_path / "world", workers=1)
    assert list(tmp_path.iterdir()) == []


def test_pretraining_writes_a_loadable_deterministic_checkpoint(
    tiny_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    figures = pretrain_backbone(TINY_TRAINING, tiny_world, first, max_steps=2)
    pretrain_backbone(TINY_TRAINING, tiny_world, second, max_steps=2)
    assert figures["steps"] == 2 and math.isfinite(figures["final_loss"])
    assert {"zero_shot_base", "zero_shot_new", "train_seconds", "images_per_second"} <= figures.keys()

    a = torch.load(first, weights_only=True)["state_dict"]
    b = torch.load(second, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "two seeded pre-training runs differ"

    register_model_configs()
    torch.manual_seed(TINY_TRAINING.seed)
    init = open_clip.create_model(DEMO_MODEL).state_dict()
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(init[k], a[k])]
    assert len(changed) > len(a) // 2, "pre-training left most weights at their initial values"

    caplog.clear()  # pre-training itself builds the model without weights, which open_clip warns about
    with caplog.at_level(logging.WARNING):
        model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=str(first))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    loaded = model.state_dict()
    assert loaded.keys() == a.keys()
    assert all(torch.equal(loaded[k], a[k]) for k in a)
