from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.backbone import Backbone, load_backbone
from pipeline.extract import CorruptImageError, extract_features, plan_extraction
from pipeline.feature_store import FeatureStore, StoreBuilder, StoreError, partial_path
from pipeline.params import BackboneParams, DatasetParams, ExtractParams
from tests.conftest import TINY_MODEL
from tests.extract_fixtures import CLASSNAMES, tiny_checkpoint, tiny_splits

EXTRACT = ExtractParams(views=2, batch_size=6, workers=0, block_size=4, templates=("a photo of a {}.", "a {}."))
DATASET = DatasetParams(kind="imagefolder", name="tiny", root="unused", labeled_classes="all")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Backbone:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return load_backbone(BackboneParams(model=TINY_MODEL, pretrained=str(ckpt), device="cpu"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return tiny_splits(tmp_path_factory.mktemp("images"))


def _extract(splits, backbone, out: Path, params: ExtractParams = EXTRACT) -> Path:
    plan = plan_extraction(splits, splits, DATASET, params, backbone)
    return extract_features(plan, backbone, params, out, progress=False)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(path)
    out = {"classifier": store.array("classifier")}
    for split in ("train", "val", "test"):
        for field in ("features", "labels", "valid"):
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
        direct = torch.nn.functional.normalize(backbone.model.encode_image(images), dim=-1)
        clean = torch.stack([backbone.preprocess(Image.open(r.path).convert("RGB")) for r in splits.train])
        direct_train = torch.nn.functional.normalize(backbone.model.encode_image(clean), dim=-1)
    torch.testing.assert_close(test.features, direct, atol=2e-3, rtol=0)  # fp16 storage
    torch.testing.assert_close(train.features[:, 0], direct_train, atol=2e-3, rtol=0)
    # augmented views differ from the clean view but are still unit vectors
    assert (train.features[:, 1] - train.features[:, 0]).abs().max() > 1e-2
    torch.testing.assert_close(train.features.norm(dim=-1), torch.ones(12, 3), atol=2e-3, rtol=0)
    clf = backbone.text_tower().zero_shot_classifier(CLASSNAMES, EXTRACT.templates)
    torch.testing.assert_close(torch.from_numpy(store.array("classifier")), clf)
    # sharded: a handful of files, not one per chunk
    assert sum(1 for p in path.rglob("*") if p.is_file()) < 40


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


def test_store_made_for_another_backbone_is_refused(splits, backbone, tmp_path):
    path = _extract(splits, backbone, tmp_path / "f.zarr")
    other = {**backbone.identity(), "weights_id": "sha256:something-else"}
    with pytest.raises(StoreError, match="weights_id"):
        FeatureStore.open(path, other)


def test_ship_extract_cli_end_to_end_on_an_image_folder(tmp_path, backbone):
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
        "dataset": {"kind": "imagefolder", "name": "folder", "root": str(root), "shots": 2, "val_shots": 1},
        "extract": {"views": 1, "workers": 0, "batch_size": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "features.zarr"
    result = CliRunner().invoke(app, ["extract", "--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(out)
    assert store.meta["base_classes"] == [0, 1] and store.meta["new_classes"] == [2, 3]
    train = store.split("train")
    assert sorted(train.labels.tolist()) == [0, 0, 1, 1]  # 2 shots of base classes only
    assert train.features.shape == (4, 2, 32)
    assert sorted(set(store.split("val").labels.tolist())) == [0, 1]  # never label-only classes
    test = store.split("test")
    assert len(test) == 8
    paths = sorted((root / "test").rglob("*.png"))
    with torch.no_grad():
        images = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
        direct = torch.nn.functional.normalize(backbone.model.encode_image(images), dim=-1)
    # the loader sorts classes and files the same way, so rows line up with the sorted paths
    torch.testing.assert_close(test.features, direct, atol=2e-3, rtol=0)


def test_weights_identity_follows_the_weights_not_the_file(tmp_path):
    def identity(path):
        return load_backbone(BackboneParams(model=TINY_MODEL, pretrained=str(path), device="cpu")).weights_id

    a, b = tiny_checkpoint(tmp_path / "a.pt", seed=0), tiny_checkpoint(tmp_path / "b.pt", seed=0)
    assert a.read_bytes() != b.read_bytes()  # torch.save embeds a random serialization id
    assert identity(a) == identity(b)
    assert identity(tiny_checkpoint(tmp_path / "c.pt", seed=1)) != identity(a)
