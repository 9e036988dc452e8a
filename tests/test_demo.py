"""The demo world (deterministic; three datasets read back by the real loaders; base/new and seen/unseen word
coverage; the DAG's world without the web domain) and the demo backbone's pre-training (seeded; its shipped file
loads as the float16 values of the trained weights)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from pipeline.backbone import register_model_configs
from pipeline.datasets.coop import load_demo_dataset
from pipeline.datasets.xlsa17 import load_xlsa17_dataset
from pipeline.demo import catalogue, world
from pipeline.demo.pretrain import DEMO_MODEL, read_weights, save_weights, train_backbone
from pipeline.params.demo import DemoBackboneParams, DemoWorldParams

# The class sets are fixed (48 + 30 + 36 classes), so "tiny" means few images per class.
TINY = DemoWorldParams(
    web_per_class=1,
    train_per_class=2,
    val_per_class=1,
    test_per_class=1,
    gzsl_trainval_per_class=2,
    gzsl_test_seen_per_class=1,
    gzsl_test_unseen_per_class=1,
)
TINY_TRAINING = DemoBackboneParams(epochs=1, batch_size=32, warmup=0.5)
BASE_TO_NEW = [ds for ds in catalogue.DATASETS if ds.kind == "base_to_new"]
GZSL = [ds for ds in catalogue.DATASETS if ds.kind == "gzsl"]


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


def test_world_layout(tiny_world: Path):
    assert sorted(p.name for p in tiny_world.iterdir()) == sorted(
        [world.MANIFEST_FILE, world.WEB_DIR, *(d.name for d in catalogue.DATASETS)]
    )
    assert (tiny_world / world.WEB_DIR / world.WEB_CAPTIONS_FILE).is_file()
    for ds in BASE_TO_NEW:
        assert (tiny_world / ds.name / world.CLASSNAMES_FILE).read_text().splitlines() == ds.classnames()
    for ds in GZSL:
        assert {p.name for p in (tiny_world / ds.name).iterdir()} == {"att_splits.mat", "res101.mat", "images"}


def test_manifest_hashes_every_file_of_the_world(tiny_world: Path, tmp_path: Path):
    manifest = json.loads((tiny_world / world.MANIFEST_FILE).read_text())
    files = [p for p in tiny_world.rglob("*") if p.is_file() and p.name != world.MANIFEST_FILE]
    assert manifest["files"] == len(files) > 100
    copy = tmp_path / "copy"
    shutil.copytree(tiny_world, copy)
    assert world.write_manifest(copy) == manifest["sha256"]  # same files, same hash
    image = next(p for p in files if p.suffix == ".png").relative_to(tiny_world)
    (copy / image).write_bytes((copy / image).read_bytes() + b"\0")  # one byte more in one image
    assert world.write_manifest(copy) != manifest["sha256"]
    (copy / image).unlink()  # a file fewer
    assert world.write_manifest(copy) != manifest["sha256"]
    assert json.loads((copy / world.MANIFEST_FILE).read_text())["files"] == manifest["files"] - 1


@pytest.mark.parametrize("ds", BASE_TO_NEW, ids=lambda d: d.name)
def test_base_to_new_datasets_read_back_through_the_coop_loader(tiny_world: Path, ds: catalogue.DemoDataset):
    splits = load_demo_dataset(ds.name, tiny_world / ds.name)
    assert splits.classnames == ds.classnames() and len(set(splits.classnames)) == len(splits.classnames)
    expected = {"train": TINY.train_per_class, "val": TINY.val_per_class, "test": TINY.test_per_class}
    paths = set()
    for name, records in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        counts = [0] * len(splits.classnames)
        for r in records:
            assert r.path.is_file() and r.path.is_relative_to(tiny_world / ds.name / world.IMAGES_DIR)
            assert r.path.parent.name == ds.classes()[r.label].dirname
            counts[r.label] += 1
            paths.add(r.path)
        assert counts == [expected[name]] * len(splits.classnames), name
    assert len(paths) == len(splits.train) + len(splits.val) + len(splits.test)  # no image in two splits


@pytest.mark.parametrize("ds", GZSL, ids=lambda d: d.name)
def test_gzsl_dataset_reads_back_through_the_xlsa17_loader(tiny_world: Path, ds: catalogue.DemoDataset):
    root = tiny_world / ds.name
    splits = load_xlsa17_dataset(ds.name, root, root / world.IMAGES_DIR)
    assert splits.classnames == ds.classnames()  # "07.Red_fish" in att_splits.mat, cleaned by the loader
    assert splits.unseen == ds.unseen_labels()
    assert splits.seen == sorted(set(range(len(ds.classnames()))) - set(ds.unseen_labels()))
    for records, classes, per_class in (
        (splits.trainval, splits.seen, TINY.gzsl_trainval_per_class),
        (splits.test_seen, splits.seen, TINY.gzsl_test_seen_per_class),
        (splits.test_unseen, splits.unseen, TINY.gzsl_test_unseen_per_class),
    ):
        assert sorted(r.label for r in records) == sorted(c for c in classes for _ in range(per_class))
        assert all(r.path.is_file() and r.path.parent.name == ds.classes()[r.label].dirname for r in records)
    listed = [*splits.trainval, *splits.test_seen, *splits.test_unseen]
    assert len({r.path for r in listed}) == len(listed)


@pytest.mark.parametrize("ds", BASE_TO_NEW, ids=lambda d: d.name)
def test_base_and_new_halves_each_cover_every_word(ds: catalogue.DemoDataset):
    classes = ds.classes()
    assert ds.new_classes == "combinations"  # the default world
    assert [c.label for c in classes] == list(range(len(classes)))
    assert len({(c.attribute, c.noun) for c in classes}) == len(classes) == len(ds.attributes) * len(ds.nouns)
    n_base = math.ceil(len(classes) / 2)
    for half in (classes[:n_base], classes[n_base:]):
        assert {c.attribute for c in half} == set(ds.attributes)
        assert {c.noun for c in half} == set(ds.nouns)
    # New classes are unseen combinations of seen words, not a block of one attribute.
    assert ds.classes() == classes  # the order is fixed (part of the world's definition)


@pytest.mark.parametrize("name", [ds.name for ds in BASE_TO_NEW])
def test_new_nouns_world_names_new_classes_by_nouns_no_base_class_uses(name: str):
    ds = catalogue.dataset(name, "new_nouns")
    classes = ds.classes()
    assert [c.label for c in classes] == list(range(len(classes)))
    assert {(c.attribute, c.noun) for c in classes} == {
        (c.attribute, c.noun) for c in catalogue.dataset(name).classes()
    }
    n_base = math.ceil(len(classes) / 2)
    base, new = classes[:n_base], classes[n_base:]
    base_nouns, new_nouns = {c.noun for c in base}, {c.noun for c in new}
    assert not base_nouns & new_nouns and base_nouns | new_nouns == set(ds.nouns)
    assert len(base_nouns) == len(new_nouns) == len(ds.nouns) // 2
    for half in (base, new):
        assert {c.attribute for c in half} == set(ds.attributes)  # attribute words are shared
        assert len(half) == len(ds.attributes) * len(ds.nouns) // 2  # every (attribute, noun) of its nouns
        nouns = [c.noun for c in half]
        assert nouns != sorted(nouns, key=nouns.index)  # labels within a half are shuffled, not grouped by noun
    assert catalogue.dataset(name, "new_nouns").classes() == classes  # fixed


def test_new_nouns_world_reorders_base_to_new_labels_only(tiny_world: Path, tmp_path: Path):
    out = tmp_path / "world"
    world.generate_world(TINY.model_copy(update={"new_classes": "new_nouns"}), out, workers=1)
    for ds in catalogue.world_datasets("new_nouns"):
        assert (out / ds.name / world.CLASSNAMES_FILE).exists() == (ds.kind == "base_to_new")
        if ds.kind == "base_to_new":
            splits = load_demo_dataset(ds.name, out / ds.name)
            assert splits.classnames == ds.classnames() != catalogue.dataset(ds.name).classnames()
            n_base = math.ceil(len(splits.classnames) / 2)
            base_nouns = {ds.classes()[r.label].noun for r in splits.train if r.label < n_base}
            test_new_nouns = {ds.classes()[r.label].noun for r in splits.test if r.label >= n_base}
            assert base_nouns and test_new_nouns and not base_nouns & test_new_nouns
            assert all(r.path.parent.name == ds.classes()[r.label].dirname for r in splits.test)
    # Neither zoo nor the web corpus (the pre-training data) depends on the base-to-new split: the same bytes as in
    # the default world, web labels in the default class order.
    assert tree_hashes(out / "zoo") == tree_hashes(tiny_world / "zoo")
    assert tree_hashes(out / world.WEB_DIR) == tree_hashes(tiny_world / world.WEB_DIR)
    corpus = json.loads((out / world.WEB_DIR / world.WEB_CAPTIONS_FILE).read_text())
    assert corpus["classnames"] == world.global_classnames()


def test_world_without_web_domain_has_the_same_benchmark_files(tiny_world: Path, tmp_path: Path):
    """The DAG's world leaves out the web domain (only pre-training reads it); every other file is the same."""
    world.generate_world(TINY, tmp_path / "world", workers=1, web=False)
    without = tree_hashes(tmp_path / "world")
    full = tree_hashes(tiny_world)
    assert not (tmp_path / "world" / world.WEB_DIR).exists()
    web = {k for k in full if k.startswith(f"{world.WEB_DIR}/")}
    assert web and without.keys() - {world.MANIFEST_FILE} == full.keys() - web - {world.MANIFEST_FILE}
    assert all(without[k] == full[k] for k in without if k != world.MANIFEST_FILE)


@pytest.mark.parametrize("ds", GZSL, ids=lambda d: d.name)
def test_unseen_classes_are_unseen_combinations_of_seen_words(ds: catalogue.DemoDataset):
    classes = ds.classes()
    unseen = set(ds.unseen_labels())
    seen = [c for c in classes if c.label not in unseen]
    assert 0.2 <= len(unseen) / len(classes) <= 0.35  # like CUB (25%), AWA2 and FLO (20%)
    assert {c.attribute for c in seen} == set(ds.attributes) and {c.noun for c in seen} == set(ds.nouns)
    for word in (*ds.attributes, *ds.nouns):  # every word is in as many unseen classes as any other
        assert sum(word in (classes[u].attribute, classes[u].noun) for u in unseen) == 2, word
    assert sorted(unseen) != list(range(len(classes) - len(unseen), len(classes)))  # interleaved, as in xlsa17


def test_datasets_have_disjoint_names_and_shared_words():
    names = [set(ds.classnames()) for ds in catalogue.DATASETS]
    assert sum(len(n) for n in names) == len(set().union(*names)) == len(catalogue.global_classnames())
    shapes, patterns = catalogue.dataset("shapes"), catalogue.dataset("patterns")
    assert set(patterns.nouns) == set(shapes.nouns)  # cross-dataset transfer shapes -> patterns: shared nouns
    assert not set(patterns.attributes) & set(shapes.attributes)
    assert set(catalogue.dataset("zoo").attributes) <= set(shapes.attributes)


def test_web_captions_name_their_class(tiny_world: Path):
    corpus = json.loads((tiny_world / world.WEB_DIR / world.WEB_CAPTIONS_FILE).read_text())
    assert corpus["classnames"] == catalogue.global_classnames()
    rows = corpus["images"]
    assert len(rows) == TINY.web_per_class * len(corpus["classnames"])
    for rel, label, caption in rows:
        assert (tiny_world / world.WEB_DIR / rel).is_file()
        attribute, noun = corpus["classnames"][label].split()
        assert {attribute, noun} <= set(re.findall(r"\w+", caption)), caption
    assert len({caption for _, _, caption in rows}) > len(rows) * 0.9  # varied templates, not one string


def test_world_generation_does_not_import_the_dataset_loaders():
    """The demo_world stage lists its code deps in dvc.yaml without the loaders: generating must not import them."""
    code = "import sys, stages.demo_world; print(sorted(m for m in sys.modules if m.startswith('pipeline.datasets')))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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


def test_pretraining_is_seeded_and_its_weights_load_as_shipped(
    tiny_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    model_a, figures = train_backbone(TINY_TRAINING, tiny_world, max_steps=2)
    model_b, _ = train_backbone(TINY_TRAINING, tiny_world, max_steps=2)
    assert figures["steps"] == 2 and math.isfinite(figures["final_loss"])
    assert {"train_seconds", "train_cpu_seconds", "images_per_second", "logit_scale", "torch_threads"} <= figures.keys()
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "two seeded pre-training runs differ"

    register_model_configs()
    torch.manual_seed(TINY_TRAINING.seed)
    init = open_clip.create_model(DEMO_MODEL).state_dict()
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(init[k], a[k])]
    assert len(changed) > len(a) // 2, "pre-training left most weights at their initial values"

    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(a, first, TINY_TRAINING)
    save_weights(b, second, TINY_TRAINING)
    assert first.read_bytes() == second.read_bytes()  # same weights, same bytes
    state, recipe = read_weights(first)
    assert recipe == TINY_TRAINING.model_dump()
    assert all(state[k].dtype == (torch.float16 if a[k].is_floating_point() else a[k].dtype) for k in a)

    caplog.clear()  # pre-training itself builds the model without weights, which open_clip warns about
    with caplog.at_level(logging.WARNING):
        model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=str(first))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    loaded = model.state_dict()
    assert loaded.keys() == a.keys()
    assert all(loaded[k].dtype == a[k].dtype for k in a)  # float32 in memory, as trained
    assert all(torch.equal(loaded[k], a[k].to(torch.float16).to(a[k].dtype)) for k in a)  # the float16 values


def test_unused_world_is_a_marker_with_a_manifest(tmp_path: Path):
    """Real weights and no dataset in the world: the stage writes a marker, and the manifest its dependants read."""
    from pipeline.params import load_params
    from stages import demo_world

    overrides = [
        "backbone.pretrained=openai",
        *(f"datasets.{name}.root={tmp_path / 'elsewhere' / name}" for name in ("shapes", "patterns", "zoo")),
        f"datasets.zoo.image_root={tmp_path / 'elsewhere' / 'zoo' / 'images'}",
    ]
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides)
    out = tmp_path / "world"
    demo_world.run(params, out)
    assert sorted(p.name for p in out.iterdir()) == ["NOT_USED.txt", world.MANIFEST_FILE]
    assert json.loads((out / world.MANIFEST_FILE).read_text())["files"] == 1


def test_pretrain_demo_writes_weights_and_provenance_and_re_exports_them_identically(tmp_path: Path):
    """`ship pretrain-demo` on a tiny world and recipe: the weights load through the pipeline's loader, provenance.json
    describes them, and `--from-checkpoint` of that file (the export path alone) writes the very same bytes."""
    from pipeline.demo import weights
    from pipeline.demo.shipping import make_demo_weights
    from pipeline.params import load_params

    overrides = [f"demo.world.{k}={v}" for k, v in TINY.model_dump().items() if k.endswith("per_class")]
    overrides += [f"demo.backbone.{k}={v}" for k, v in TINY_TRAINING.model_dump().items()]
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides)
    out = tmp_path / "backbone"
    provenance = make_demo_weights(params, out)
    assert sorted(p.name for p in out.iterdir()) == [weights.PROVENANCE_FILE, weights.WEIGHTS_FILE]
    assert json.loads((out / weights.PROVENANCE_FILE).read_text()) == provenance
    shipped = out / weights.WEIGHTS_FILE
    assert provenance["weights"]["sha256"] == weights.file_sha256(shipped)
    assert provenance["recipe"] == TINY_TRAINING.model_dump()
    assert provenance["web_corpus"]["web_per_class"] == TINY.web_per_class
    assert provenance["web_corpus"]["files"] == len(world.global_classnames()) * TINY.web_per_class + 1  # + captions
    assert provenance["code"]["sha256"] == weights.code_digest(weights.code_hashes())
    assert provenance["training"]["steps"] == 108 // TINY_TRAINING.batch_size  # 108 classes x 1 web image
    quality = provenance["quality"]
    assert quality["zero_shot"].keys() == quality["zero_shot_ensemble"].keys() == {d.name for d in world.DATASETS}
    assert quality["templates"]["shapes"] == ["a photo of a {}."]  # the demo preset's, as the DAG's zero-shot
    assert set(quality["web_top1"]) == {"preset", "ensemble"}

    again = tmp_path / "again"
    exported = make_demo_weights(params, again, from_checkpoint=shipped, training_figures=out / weights.PROVENANCE_FILE)
    assert (again / weights.WEIGHTS_FILE).read_bytes() == shipped.read_bytes()
    assert exported["weights"] == provenance["weights"] and exported["quality"] == provenance["quality"]
    assert exported["training"] == {
        **provenance["training"],
        "source": "exported with --from-checkpoint " + shipped.name,
    }
    assert provenance["training"]["trained_by"] == "ship pretrain-demo"

    other = load_params(Path(__file__).resolve().parents[1] / "params.yaml", [*overrides, "demo.backbone.seed=1"])
    with pytest.raises(weights.PretrainError, match="trained with recipe"):
        make_demo_weights(other, tmp_path / "other", from_checkpoint=shipped)
    assert not (tmp_path / "other").exists()
