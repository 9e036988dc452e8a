"""Dataset loaders on tiny fake trees in each layout, and the few-shot / base-to-new protocol sampling."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.datasets import DatasetSplits, ImageRecord, build_protocol_splits, load_dataset, sample_few_shot
from pipeline.datasets.imagefolder import load_imagefolder_dataset
from pipeline.params.dataset import COOP_DATASETS, DatasetParams
from tests.dataset_trees import (
    COOP_SPLIT_FILE_TREES,
    IMAGENET_CLASSES,
    build_coop_tree,
    build_demo_tree,
    build_imagefolder_tree,
    build_split_file_tree,
    write_split_file_tree,
)


def _assert_consistent(splits: DatasetSplits) -> None:
    """Labels index classnames, every class name matches its label, paths are absolute existing files."""
    for split in (splits.train, splits.val, splits.test):
        for record in split:
            assert 0 <= record.label < len(splits.classnames)
            assert record.classname == splits.classnames[record.label]
            assert record.path.is_absolute()
            assert record.path.is_file(), record.path
    assert {r.label for r in splits.train} == set(range(len(splits.classnames)))
    assert not {r.path for r in splits.train} & {r.path for r in splits.val}


# --- CoOp layouts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_coop_layout_loads(tmp_path: Path, name: str) -> None:
    tree = build_coop_tree(tmp_path / name, name)
    splits = load_dataset(DatasetParams(kind="coop", name=name, root=str(tree.root)))
    assert splits.name == name
    assert splits.classnames == tree.classnames
    assert {s: len(getattr(splits, s)) for s in ("train", "val", "test")} == tree.sizes
    _assert_consistent(splits)


def test_coop_names_cover_all_layouts() -> None:
    assert set(COOP_DATASETS) == {*COOP_SPLIT_FILE_TREES, "fgvc_aircraft", "imagenet"}


def test_split_file_classnames_are_cleaned(tmp_path: Path) -> None:
    splits = load_dataset(
        DatasetParams(kind="coop", name="oxford_pets", root=str(build_split_file_tree(tmp_path, "oxford_pets").root))
    )
    assert splits.classnames == ["face", "sea lion", "wild cat"]
    assert splits.meta["split_file"] == str(tmp_path.absolute() / "split_zhou_OxfordPets.json")


def test_stanford_cars_images_are_relative_to_root(tmp_path: Path) -> None:
    splits = load_dataset(
        DatasetParams(
            kind="coop", name="stanford_cars", root=str(build_split_file_tree(tmp_path, "stanford_cars").root)
        )
    )
    assert splits.train[0].path.parent.parent == tmp_path.absolute() / "cars_train"


def test_imagenet_labels_follow_sorted_wnids_and_val_is_held_out_of_train(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "imagenet")
    splits = load_dataset(DatasetParams(kind="coop", name="imagenet", root=str(tmp_path)))
    wnids = sorted(IMAGENET_CLASSES)
    assert splits.classnames == [IMAGENET_CLASSES[w] for w in wnids]
    for label, wnid in enumerate(wnids):
        train = sorted(r.path.name for r in splits.train if r.label == label)
        val = sorted(r.path.name for r in splits.val if r.label == label)
        assert all(r.path.parent.name == wnid for r in splits.train + splits.val if r.label == label)
        assert max(train) < min(val)  # val = the last images by sorted filename
    assert all(r.path.parent.parent.name == "val" for r in splits.test)


def test_unknown_coop_name_lists_valid_names(tmp_path: Path) -> None:
    # params validation rejects it first; load_dataset checks again for params built without validation
    with pytest.raises(ValueError, match="'cifar10'") as err:
        DatasetParams(kind="coop", name="cifar10", root=str(tmp_path))
    assert all(name in str(err.value) for name in COOP_DATASETS)
    unvalidated = DatasetParams.model_construct(kind="coop", name="cifar10", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset.name='cifar10' is not a CoOp dataset") as err:
        load_dataset(unvalidated)
    assert all(name in str(err.value) for name in COOP_DATASETS)


def test_missing_split_file_names_path_and_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(DatasetParams(kind="coop", name="dtd", root=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "split_zhou_DescribableTextures.json") in message
    assert "expected layout" in message and "<root>/images/" in message


def test_missing_image_dir_names_path(tmp_path: Path) -> None:
    (tmp_path / "split_zhou_EuroSAT.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "2750")):
        load_dataset(DatasetParams(kind="coop", name="eurosat", root=str(tmp_path)))


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root"):
        load_dataset(DatasetParams(kind="coop", name="food101", root=str(tmp_path / "nowhere")))


def _corrupt_split(tmp_path: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """An oxford_pets tree whose split file is rewritten by `edit(split_dict)`."""
    split = write_split_file_tree(tmp_path, "images", "split_zhou_OxfordPets.json", ["a", "b"])
    edit(split)
    split_file = tmp_path / "split_zhou_OxfordPets.json"
    split_file.write_text(json.dumps(split))
    return split_file


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s["test"][1].__setitem__(2, "b"),
            r"test\[1\].*names label 0 'b', but entry train\[0\] named it 'a'",
        ),
        (
            lambda s: s["train"].append(["a/x.jpg", 2, "a"]),
            r"train\[10\].*gives class 'a' label 2, but entry train\[0\] gave it label 0",
        ),
        (lambda s: s["train"].append(["a/x.jpg", 5, "f"]), r"labels must be 0..C-1.*\[2, 3, 4\]"),
        (lambda s: s["train"].append(["a/x.jpg", "0", "a"]), r"train\[10\].*label must be a non-negative integer"),
        (lambda s: s["train"].append(["a/x.jpg", 0]), r"train\[10\].*expected \[impath, label, classname\]"),
        (lambda s: s["train"].append(["/abs/x.jpg", 0, "a"]), r"impath must be a non-empty path relative"),
        (lambda s: s.pop("val"), r"key 'val' is missing"),
    ],
    ids=[
        "label-two-names",
        "name-two-labels",
        "label-gap",
        "label-not-int",
        "short-entry",
        "absolute-impath",
        "no-val",
    ],
)
def test_bad_split_file_entries_are_named(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], expected: str
) -> None:
    split_file = _corrupt_split(tmp_path, edit)
    with pytest.raises(ValueError, match=expected) as err:
        load_dataset(DatasetParams(kind="coop", name="oxford_pets", root=str(tmp_path)))
    assert str(split_file) in str(err.value)


def test_split_file_with_wrong_image_prefix_fails_at_load(tmp_path: Path) -> None:
    _corrupt_split(tmp_path, lambda s: s["train"].__setitem__(0, ["images/a/train_000.jpg", 0, "a"]))
    with pytest.raises(FileNotFoundError, match=r"first train image .*images/images/a/train_000.jpg"):
        load_dataset(DatasetParams(kind="coop", name="oxford_pets", root=str(tmp_path)))


def test_split_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "split_zhou_OxfordPets.json").write_text("[not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dataset(DatasetParams(kind="coop", name="oxford_pets", root=str(tmp_path)))


def test_fgvc_unknown_variant_names_file_and_line(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "fgvc_aircraft")
    test_file = tmp_path / "data" / "images_variant_test.txt"
    test_file.write_text(test_file.read_text() + "1234567 Boeing 999\n")
    with pytest.raises(ValueError, match=r"images_variant_test.txt:10: .*'Boeing 999'"):
        load_dataset(DatasetParams(kind="coop", name="fgvc_aircraft", root=str(tmp_path)))


def test_imagenet_class_folder_not_in_classnames(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "imagenet")
    (tmp_path / "images" / "train" / "n99999999").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['n99999999'\] are not listed in .*classnames.txt"):
        load_dataset(DatasetParams(kind="coop", name="imagenet", root=str(tmp_path)))


# --- demo and image folder ----------------------------------------------------------------------------------


def test_demo_uses_split_file_path(tmp_path: Path) -> None:
    tree = build_demo_tree(tmp_path)
    splits = load_dataset(DatasetParams(kind="demo", name="demo", root=str(tmp_path)))
    assert splits.classnames == tree.classnames
    assert len(splits.train) == tree.sizes["train"] and len(splits.test) == tree.sizes["test"]
    assert splits.train[0].path.suffix == ".png"
    _assert_consistent(splits)


def test_demo_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split_demo\.json"):
        load_dataset(DatasetParams(kind="demo", root=str(tmp_path)))


def test_imagefolder_holds_out_val_per_class(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"zebra": 20, "big_cat": 7, "sea-lion": 4})
    splits = load_dataset(DatasetParams(kind="imagefolder", name="zoo", root=str(tmp_path)))
    assert splits.classnames == ["big cat", "sea lion", "zebra"]  # sorted folder names
    assert Counter(r.label for r in splits.val) == {0: 1, 1: 1, 2: 2}  # round(10%), at least 1
    assert Counter(r.label for r in splits.train) == {0: 6, 1: 3, 2: 18}  # notes.txt skipped
    assert len(splits.test) == 6
    _assert_consistent(splits)
    again = load_imagefolder_dataset("zoo", tmp_path)
    assert again.val == splits.val


def test_imagefolder_uses_val_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3}, val_per_class=2)
    splits = load_dataset(DatasetParams(kind="imagefolder", name="ab", root=str(tmp_path)))
    assert len(splits.train) == 6 and len(splits.val) == 4
    assert all(r.path.parent.parent.name == "val" for r in splits.val)


def test_imagefolder_class_mismatch_names_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match=rf"{tmp_path / 'test'}: class folders differ.*not in train \['c'\]"):
        load_dataset(DatasetParams(kind="imagefolder", name="ab", root=str(tmp_path)))


def test_imagefolder_missing_test_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "test")):
        load_dataset(DatasetParams(kind="imagefolder", name="x", root=str(tmp_path)))


def test_imagefolder_empty_class_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train' / 'c'}: class folder has no images"):
        load_dataset(DatasetParams(kind="imagefolder", name="x", root=str(tmp_path)))


# --- few-shot protocol --------------------------------------------------------------------------------------


def _fake_splits(num_classes: int, train: int = 20, val: int = 6, test: int = 5) -> DatasetSplits:
    """In-memory records (no files): the protocol never touches the images."""

    def records(split: str, n: int) -> list[ImageRecord]:
        return [
            ImageRecord(Path(f"/d/{split}/{c}/{i:03d}.jpg"), c, f"class {c}")
            for c in range(num_classes)
            for i in range(n)
        ]

    classnames = [f"class {c}" for c in range(num_classes)]
    return DatasetSplits("fake", classnames, records("train", train), records("val", val), records("test", test))


def test_sample_few_shot_counts_and_small_class_warning(caplog: pytest.LogCaptureFixture) -> None:
    records = [*_fake_splits(3).train, ImageRecord(Path("/d/rare/0.jpg"), 3, "rare bird")]
    with caplog.at_level(logging.WARNING):
        sampled = sample_few_shot(records, shots=4, seed=1)
    assert Counter(r.label for r in sampled) == {0: 4, 1: 4, 2: 4, 3: 1}
    assert "'rare bird'" in caplog.text and "shots=4" in caplog.text


def test_sample_few_shot_is_deterministic_and_order_independent() -> None:
    records = _fake_splits(4).train
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    first = sample_few_shot(records, shots=3, seed=7)
    assert first == sample_few_shot(shuffled, shots=3, seed=7)
    assert first != sample_few_shot(records, shots=3, seed=8)


@pytest.mark.parametrize("num_classes", [5, 6])
def test_protocol_base_to_new(num_classes: int) -> None:
    splits = _fake_splits(num_classes)
    params = DatasetParams(kind="demo", shots=4, val_shots=2, seed=3, labeled_classes="base")
    protocol = build_protocol_splits(splits, params)
    n_base = math.ceil(num_classes / 2)
    assert Counter(r.label for r in protocol.train) == dict.fromkeys(range(n_base), 4)
    assert Counter(r.label for r in protocol.val) == dict.fromkeys(range(n_base), 2)  # never new classes
    assert protocol.test == splits.test
    assert protocol.classnames == splits.classnames
    assert protocol.meta["labeled_classes"] == "base" and protocol.meta["shots"] == "4"


def test_protocol_all_labelled_shares_base_draws() -> None:
    splits = _fake_splits(4)
    base = build_protocol_splits(splits, DatasetParams(shots=2, seed=5, labeled_classes="base"))
    every = build_protocol_splits(splits, DatasetParams(shots=2, seed=5, labeled_classes="all"))
    assert {r.label for r in every.train} == {0, 1, 2, 3} == {r.label for r in every.val}
    assert [r for r in every.train if r.label < 2] == base.train


def test_protocol_labelled_class_without_train_images() -> None:
    splits = _fake_splits(4)
    splits = DatasetSplits(
        splits.name, splits.classnames, [r for r in splits.train if r.label != 1], splits.val, splits.test
    )
    with pytest.raises(ValueError, match=r"labelled classes \[1\] \(\['class 1'\]\) have no train images"):
        build_protocol_splits(splits, DatasetParams(labeled_classes="base"))


def test_protocol_on_loaded_demo(tmp_path: Path) -> None:
    build_demo_tree(tmp_path, num_classes=5)
    params = DatasetParams(kind="demo", root=str(tmp_path), shots=2, val_shots=1, seed=1)
    protocol = build_protocol_splits(load_dataset(params), params)
    assert Counter(r.label for r in protocol.train) == {0: 2, 1: 2, 2: 2}
    assert {r.label for r in protocol.val} == {0, 1, 2}
    assert len(protocol.test) == 15
