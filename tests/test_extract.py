from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.backbone import Backbone, load_backbone
from pipeline.extract import CorruptImageError, extract_features, load_rgb
from pipeline.extraction_plans import ExtractionPlan, SplitPlan
from pipeline.feature_store import FeatureStore, StoreBuilder, StoreError, partial_path
from pipeline.params import BackboneParams, ExtractParams
from tests.conftest import TINY_MODEL
from tests.extract_fixtures import CLASSNAMES, tiny_checkpoint, tiny_splits

TEMPLATES = ["a photo of a {}.", "a {}."]
EXTRACT = ExtractParams(views=2, batch_size=6, workers=0, block_size=4, templates=tuple(TEMPLATES))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Backbone:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return load_backbone(BackboneParams(model=TINY_MODEL, pretrained=str(ckpt), device="cpu"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_splits(tmp_path_factory.mktemp("images"))


def _plan(splits, views: int) -> ExtractionPlan:
    return ExtractionPlan(
        splits=[
            SplitPlan("train", splits.train, views),
            SplitPlan("val", splits.val, 0),
            SplitPlan("test", splits.test, 0),
        ],
        classnames=list(splits.classnames),
        classifiers={"zeroshot": TEMPLATES},
        seed=1,
        meta={"kind": "eval"},
    )


def _extract(splits, backbone, out: Path, params: ExtractParams = EXTRACT) -> Path:
    return extract_features(_plan(splits, params.views), backbone, params, out, progress=False)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(path)
    out = {"classifier": store.array("classifiers/zeroshot")}
    for split in ("train", "val", "test"):
        for field in ("features", "norms", "labels", "valid"):
            out[f"{split}/{field}"] = store.array(f"{split}/{field}")
    return out


def test_store_matches_direct_model_calls(splits, backbone, tmp_path):
    path = _extract(splits, backbone, tmp_path / "f.zarr")
    store = FeatureStore.open(path, backbone.identity())
    assert store.classnames == CLASSNAMES
    assert store.meta["backbone"]["weights_id"].startswith("state-sha256:")
    train, test = store.split("train"), store.split("test")
    assert train.features.shape == (12, 3, 32)  # 4 classes x 3 shots, clean + 2 views, embed dim 32
    assert test.features.shape == (8, 32)
    assert train.labels.tolist() == [r.label for r in splits.train]
    with torch.no_grad():
        images = torch.stack([backbone.preprocess(Image.open(r.path).convert("RGB")) for r in splits.test])
        raw = backbone.model.encode_image(images)
        direct = torch.nn.functional.normalize(raw, dim=-1)
        clean = torch.stack([backbone.preprocess(Image.open(r.path).convert("RGB")) for r in splits.train])
        direct_train = torch.nn.functional.normalize(backbone.model.encode_image(clean), dim=-1)
    torch.testing.assert_close(test.features, direct, atol=2e-3, rtol=0)  # fp16 storage
    torch.testing.assert_close(train.features[:, 0], direct_train, atol=2e-3, rtol=0)
    # The raw encoder output is recoverable (Tip-Adapter's keys average raw features): features x norms.
    torch.testing.assert_close(test.raw(), raw, atol=3e-3 * float(raw.norm(dim=-1).max()), rtol=0)
    # augmented views differ from the clean view but are still unit vectors
    assert (train.features[:, 1] - train.features[:, 0]).abs().max() > 1e-2
    torch.testing.assert_close(train.features.norm(dim=-1), torch.ones(12, 3), atol=2e-3, rtol=0)
    clf = backbone.text_tower().zero_shot_classifier(CLASSNAMES, TEMPLATES)
    torch.testing.assert_close(store.classifier("zeroshot"), clf)
    # sharded: a handful of files, not one per chunk
    assert sum(1 for p in path.rglob("*") if p.is_file()) < 60


def test_same_inputs_give_identical_store(splits, backbone, tmp_path):
    a = _arrays(_extract(splits, backbone, tmp_path / "a.zarr"))
    b = _arrays(_extract(splits, backbone, tmp_path / "b.zarr"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_interrupted_run_resumes_to_identical_store(splits, backbone, tmp_path, monkeypatch):
    reference = _arrays(_extract(splits, backbone, tmp_path / "ref.zarr"))
    out = tmp_path / "killed.zarr"
    original = StoreBuilder.write_block
    calls = {"n": 0}

    def dies_after_two_blocks(self, *args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StoreBuilder, "write_block", dies_after_two_blocks)
    with pytest.raises(KeyboardInterrupt):
        _extract(splits, backbone, out)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(StoreError, match="interrupted build"):
        FeatureStore.open(out)
    monkeypatch.setattr(StoreBuilder, "write_block", original)
    written = []
    monkeypatch.setattr(
        StoreBuilder,
        "write_block",
        lambda self, split, block, *a: (written.append((split, block)), original(self, split, block, *a)),
    )
    _extract(splits, backbone, out)
    assert ("train", 0) not in written and ("train", 1) not in written  # resumed, not redone
    resumed = _arrays(out)
    for key in reference:
        np.testing.assert_array_equal(reference[key], resumed[key], err_msg=key)
    assert not partial_path(out).exists()


def test_changed_inputs_restart_instead_of_resuming(splits, backbone, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    original = StoreBuilder.write_block

    def dies(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreBuilder, "write_block", dies)
    with pytest.raises(KeyboardInterrupt):
        _extract(splits, backbone, out)
    monkeypatch.setattr(StoreBuilder, "write_block", original)
    other = EXTRACT.model_copy(update={"views": 1})
    path = _extract(splits, backbone, out, other)
    assert FeatureStore.open(path).split("train").features.shape[1] == 2


def test_corrupt_image_is_an_error_naming_the_file(splits, backbone, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    broken = type(splits)(
        splits.name,
        splits.classnames,
        splits.train,
        splits.val,
        [*splits.test[:3], type(splits.test[0])(bad, 0, CLASSNAMES[0])],
    )
    with pytest.raises(CorruptImageError, match=r"broken\.png"):
        _extract(broken, backbone, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()

    skipping = EXTRACT.model_copy(update={"skip_corrupt": True})
    store = FeatureStore.open(_extract(broken, backbone, tmp_path / "c.zarr", skipping))
    assert store.meta["skipped"] == [str(bad)]
    assert len(store.split("test")) == 3


def test_decompression_bombs_are_corrupt_images(splits, backbone, tmp_path, monkeypatch):
    big = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(big)
    # PIL refuses images over twice MAX_IMAGE_PIXELS: 64 x 64 = 4096 > 2 x 2000 (the others have 1920 pixels).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    bombed = type(splits)(splits.name, splits.classnames, splits.train, splits.val, [type(splits.test[0])(big, 0, "x")])
    with pytest.raises(CorruptImageError, match=r"bomb\.png: decompression bomb"):
        _extract(bombed, backbone, tmp_path / "d.zarr")
    skipping = EXTRACT.model_copy(update={"skip_corrupt": True})
    assert FeatureStore.open(_extract(bombed, backbone, tmp_path / "d.zarr", skipping)).meta["skipped"] == [str(big)]


def test_sixteen_bit_images_keep_their_tones(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)  # a ramp, not PIL's all-white clip
    assert rgb.min() == 0 and rgb.max() == 255


def test_store_made_for_another_backbone_is_refused(splits, backbone, tmp_path):
    path = _extract(splits, backbone, tmp_path / "f.zarr")
    other = {**backbone.identity(), "weights_id": "sha256:something-else"}
    with pytest.raises(StoreError, match="weights_id"):
        FeatureStore.open(path, other)


def test_ship_extract_train_cli_end_to_end_on_an_image_folder(tmp_path, backbone):
    import yaml
    from typer.testing import CliRunner

    from stages.cli import app
    from tests.extract_fixtures import write_images

    root = tmp_path / "folder"
    write_images(root / "train", 5, seed=1)
    write_images(root / "val", 2, seed=2)
    write_images(root / "test", 2, seed=3)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    params = {
        "backbone": {"model": TINY_MODEL, "pretrained": str(ckpt), "device": "cpu"},
        "datasets": {"folder": {"kind": "imagefolder", "root": str(root)}},
        "base_to_new": {"datasets": ["folder"]},
        "fewshot": {"shots": 2},
        "extract": {"views": 1, "workers": 0, "batch_size": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    args = ["--params", str(tmp_path / "params.yaml"), "--workdir", str(tmp_path)]
    for command in (["extract-eval", "-d", "folder"], ["extract-train", "--protocol", "base_to_new", "-d", "folder"]):
        result = runner.invoke(
            app, [*command, "--seed", "1", *args] if "extract-train" in command else [*command, *args]
        )
        assert result.exit_code == 0, result.output
    store = FeatureStore.open(tmp_path / "data/features/folder/base-seed1.zarr", kind="train")
    assert store.meta["labeled"] == [0, 1]
    train = store.split("train")
    assert sorted(train.labels.tolist()) == [0, 0, 1, 1]  # 2 shots of base classes only
    assert train.features.shape == (4, 2, 32)
    assert sorted(set(store.split("val").labels.tolist())) == [0, 1]  # never label-only classes
    ev = FeatureStore.open(tmp_path / "data/features/folder/eval.zarr", kind="eval")
    assert ev.meta["base"] == [0, 1] and ev.meta["new"] == [2, 3]
    test = ev.split("test")
    assert len(test) == 8
    paths = sorted((root / "test").rglob("*.png"))
    with torch.no_grad():
        images = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
        direct = torch.nn.functional.normalize(backbone.model.encode_image(images), dim=-1)
    # the loader sorts classes and files the same way, so rows line up with the sorted paths
    torch.testing.assert_close(test.features, direct, atol=2e-3, rtol=0)
    # The dataset preset's template (the generic one here) made the classifier.
    assert ev.meta["classifiers"] == {"zeroshot": ["a photo of a {}."]}


def test_weights_identity_follows_the_weights_not_the_file(tmp_path):
    def identity(path):
        return load_backbone(BackboneParams(model=TINY_MODEL, pretrained=str(path), device="cpu")).weights_id

    a, b = tiny_checkpoint(tmp_path / "a.pt", seed=0), tiny_checkpoint(tmp_path / "b.pt", seed=0)
    assert a.read_bytes() != b.read_bytes()  # torch.save embeds a random serialization id
    assert identity(a) == identity(b)
    assert identity(tiny_checkpoint(tmp_path / "c.pt", seed=1)) != identity(a)
