"""Dataset loaders on tiny fake trees in each layout, paths kept inside their image root, and the few-shot /
base-to-new draw checked image for image against CoOp's algorithm (restated here with Python's global `random`)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.datasets import (
    DatasetError,
    DatasetSplits,
    ImageRecord,
    build_protocol_splits,
    coop_draw,
    dassl_fewshot,
    default_val_shots,
    labeled_class_indices,
    load_dataset,
)
from pipeline.datasets.imagefolder import IMAGE_EXTENSIONS, load_imagefolder_dataset
from pipeline.params.dataset import COOP_DATASETS, DatasetSpec
from tests.dataset_trees import (
    COOP_SPLIT_FILE_TREES,
    IMAGENET_CLASSES,
    build_coop_tree,
    build_demo_tree,
    build_imagefolder_tree,
    build_split_file_tree,
    write_image,
    write_split_file_tree,
)


def _load(spec: DatasetSpec) -> DatasetSplits:
    """`load_dataset` as the stages call it: the spec and the name params list it under."""
    return load_dataset(spec, spec.name or "dataset")


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
    # store metadata must not depend on where the data lives: relative paths only
    assert all(not os.path.isabs(value) for value in splits.meta.values()), splits.meta


# --- CoOp layouts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_coop_layout_loads(tmp_path: Path, name: str) -> None:
    tree = build_coop_tree(tmp_path / name, name)
    splits = _load(DatasetSpec(kind="coop", name=name, root=str(tree.root)))
    assert splits.name == name
    assert splits.classnames == tree.classnames
    assert {s: len(getattr(splits, s)) for s in ("train", "val", "test")} == tree.sizes
    _assert_consistent(splits)
    assert all(str(tmp_path) not in value for value in splits.meta.values())


def test_coop_names_cover_all_layouts() -> None:
    assert set(COOP_DATASETS) == {*COOP_SPLIT_FILE_TREES, "fgvc_aircraft", "imagenet"}


def test_split_file_classnames_are_cleaned(tmp_path: Path) -> None:
    splits = _load(
        DatasetSpec(kind="coop", name="oxford_pets", root=str(build_split_file_tree(tmp_path, "oxford_pets").root))
    )
    assert splits.classnames == ["face", "sea lion", "wild cat"]
    assert splits.meta == {"split_file": "split_zhou_OxfordPets.json", "image_dir": "images"}


def test_stanford_cars_images_are_relative_to_root(tmp_path: Path) -> None:
    splits = _load(
        DatasetSpec(kind="coop", name="stanford_cars", root=str(build_split_file_tree(tmp_path, "stanford_cars").root))
    )
    assert splits.train[0].path.parent.parent == tmp_path.absolute() / "cars_train"


def test_imagenet_labels_follow_sorted_wnids_train_in_listing_order_no_val(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "imagenet")
    train_dir = tmp_path / "images" / "train"
    (train_dir / "n01440764" / ".hidden.JPEG").write_bytes(b"")  # skipped, as CoOp's listdir_nohidden
    (train_dir / "n01440764" / "README.txt").write_text("not an image")  # skipped: no image extension
    splits = _load(DatasetSpec(kind="coop", name="imagenet", root=str(tmp_path)))
    wnids = sorted(IMAGENET_CLASSES)
    assert splits.classnames == [IMAGENET_CLASSES[w] for w in wnids]
    assert splits.val == []  # CoOp's ImageNet has no val split; the draw takes val from train
    assert splits.meta["val_source"].startswith("train images not drawn for train")
    for label, wnid in enumerate(wnids):
        # CoOp lists train images with os.listdir (unsorted): the draw depends on this order
        listed = [
            name
            for name in os.listdir(train_dir / wnid)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
        assert [r.path for r in splits.train if r.label == label] == [train_dir / wnid / name for name in listed]
        test = [r.path.name for r in splits.test if r.label == label]
        assert test == sorted(test) and len(test) == 2
    assert all(r.path.parent.parent.name == "val" for r in splits.test)


def test_unknown_coop_name_lists_valid_names(tmp_path: Path) -> None:
    # params validation rejects it first; load_dataset checks again for params built without validation
    with pytest.raises(ValueError, match="'cifar10'") as err:
        DatasetSpec(kind="coop", name="cifar10", root=str(tmp_path))
    assert all(name in str(err.value) for name in COOP_DATASETS)
    unvalidated = DatasetSpec.model_construct(kind="coop", name="cifar10", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset.name='cifar10' is not a CoOp dataset") as err:
        _load(unvalidated)
    assert all(name in str(err.value) for name in COOP_DATASETS)


def test_missing_split_file_names_path_and_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        _load(DatasetSpec(kind="coop", name="dtd", root=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "split_zhou_DescribableTextures.json") in message
    assert "expected layout" in message and "<root>/images/" in message


def test_missing_image_dir_names_path(tmp_path: Path) -> None:
    (tmp_path / "split_zhou_EuroSAT.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "2750")):
        _load(DatasetSpec(kind="coop", name="eurosat", root=str(tmp_path)))


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root"):
        _load(DatasetSpec(kind="coop", name="food101", root=str(tmp_path / "nowhere")))


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
        (lambda s: s["train"].append(["", 0, "a"]), r"train\[10\].*impath must be a non-empty path relative"),
        (lambda s: s.pop("val"), r"key 'val' is missing"),
    ],
    ids=[
        "label-two-names",
        "name-two-labels",
        "label-gap",
        "label-not-int",
        "short-entry",
        "empty-impath",
        "no-val",
    ],
)
def test_bad_split_file_entries_are_named(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], expected: str
) -> None:
    split_file = _corrupt_split(tmp_path, edit)
    with pytest.raises(ValueError, match=expected) as err:
        _load(DatasetSpec(kind="coop", name="oxford_pets", root=str(tmp_path)))
    assert str(split_file) in str(err.value)


def test_split_file_with_wrong_image_prefix_fails_at_load(tmp_path: Path) -> None:
    _corrupt_split(tmp_path, lambda s: s["train"].__setitem__(0, ["images/a/train_000.jpg", 0, "a"]))
    with pytest.raises(FileNotFoundError, match=r"first train image .*images/images/a/train_000.jpg"):
        _load(DatasetSpec(kind="coop", name="oxford_pets", root=str(tmp_path)))


def test_split_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "split_zhou_OxfordPets.json").write_text("[not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _load(DatasetSpec(kind="coop", name="oxford_pets", root=str(tmp_path)))


def test_fgvc_unknown_variant_names_file_and_line(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "fgvc_aircraft")
    test_file = tmp_path / "images_variant_test.txt"
    test_file.write_text(test_file.read_text() + "1234567 Boeing 999\n")
    with pytest.raises(ValueError, match=r"images_variant_test.txt:10: .*'Boeing 999'"):
        _load(DatasetSpec(kind="coop", name="fgvc_aircraft", root=str(tmp_path)))


def test_imagenet_class_folder_not_in_classnames(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "imagenet")
    (tmp_path / "images" / "train" / "n99999999").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['n99999999'\] are not listed in .*classnames.txt"):
        _load(DatasetSpec(kind="coop", name="imagenet", root=str(tmp_path)))


# --- demo and image folder ----------------------------------------------------------------------------------


def test_demo_uses_split_file_path(tmp_path: Path) -> None:
    tree = build_demo_tree(tmp_path)
    splits = _load(DatasetSpec(kind="demo", name="demo", root=str(tmp_path)))
    assert splits.classnames == tree.classnames
    assert len(splits.train) == tree.sizes["train"] and len(splits.test) == tree.sizes["test"]
    assert splits.train[0].path.suffix == ".png"
    _assert_consistent(splits)


def test_demo_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split_demo\.json"):
        _load(DatasetSpec(kind="demo", root=str(tmp_path)))


def test_imagefolder_holds_out_val_per_class(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"zebra": 20, "big_cat": 7, "sea-lion": 4})
    splits = _load(DatasetSpec(kind="imagefolder", name="zoo", root=str(tmp_path)))
    assert splits.classnames == ["big cat", "sea lion", "zebra"]  # sorted folder names
    assert Counter(r.label for r in splits.val) == {0: 1, 1: 1, 2: 2}  # round(10%), at least 1
    assert Counter(r.label for r in splits.train) == {0: 6, 1: 3, 2: 18}  # notes.txt skipped
    assert len(splits.test) == 6
    _assert_consistent(splits)
    again = load_imagefolder_dataset("zoo", tmp_path)
    assert again.val == splits.val


def test_imagefolder_uses_val_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3}, val_per_class=2)
    splits = _load(DatasetSpec(kind="imagefolder", name="ab", root=str(tmp_path)))
    assert len(splits.train) == 6 and len(splits.val) == 4
    assert all(r.path.parent.parent.name == "val" for r in splits.val)


def test_imagefolder_class_mismatch_names_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match=rf"{tmp_path / 'test'}: class folders differ.*not in train \['c'\]"):
        _load(DatasetSpec(kind="imagefolder", name="ab", root=str(tmp_path)))


def test_imagefolder_missing_test_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "test")):
        _load(DatasetSpec(kind="imagefolder", name="x", root=str(tmp_path)))


def test_imagefolder_empty_class_folder(tmp_path: Path) -> None:
    build_imagefolder_tree(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train' / 'c'}: class folder has no images"):
        _load(DatasetSpec(kind="imagefolder", name="x", root=str(tmp_path)))


# --- CoOp's few-shot draw, restated -------------------------------------------------------------------------


@pytest.fixture
def global_random() -> Iterator[None]:
    """The reference draws seed Python's global `random` as CoOp does; leave it as it was for other tests."""
    state = random.getstate()
    yield
    random.setstate(state)


def reference_fewshot(items: Sequence[Any], label_of: Callable[[Any], int], num_shots: int) -> list[Any]:
    """Dassl's DatasetBase.generate_fewshot_dataset(items, num_shots=num_shots) with repeat=False (its default
    since Dassl e3a15da, and CoOp never passes it), on the GLOBAL `random`: split_dataset_by_label groups into a
    defaultdict (labels in order of first appearance, items in list order); per label random.sample(items, k) if
    it has at least k items, else all items."""
    tracker: defaultdict[int, list[Any]] = defaultdict(list)
    for item in items:
        tracker[label_of(item)].append(item)
    dataset: list[Any] = []
    for group in tracker.values():
        dataset.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return dataset


def reference_coop_split_file_draw(split: dict[str, list[list[Any]]], shots: int, seed: int, subsample: str):
    """What CoOp's OxfordPets (and the other split-file datasets) produce for cfg.SEED=seed, NUM_SHOTS=shots,
    SUBSAMPLE_CLASSES=subsample: train.py's set_random_seed(seed) seeds the global random; then train and val
    are drawn on that stream (val with min(shots, 4)); then subsample_classes keeps the first ceil(n/2) of the
    sorted train labels (base). Returns (train, val) as lists of [impath, label, classname] entries."""
    random.seed(seed)
    train = reference_fewshot(split["train"], lambda e: e[1], shots)
    val = reference_fewshot(split["val"], lambda e: e[1], min(shots, 4))
    if subsample == "all":
        return train, val
    labels = sorted({e[1] for e in train})
    selected = labels[: math.ceil(len(labels) / 2)]
    return [e for e in train if e[1] in selected], [e for e in val if e[1] in selected]


# label -> number of entries; labels first appear in the order of the dict (2 before 0), unequal counts,
# label 1 has fewer than 2 shots, label 3 fewer than 16, label 4 exactly 16 (sample() still shuffles it)
PROTOCOL_TRAIN_COUNTS = {2: 20, 0: 17, 4: 16, 3: 5, 1: 1}
PROTOCOL_VAL_COUNTS = {3: 6, 1: 2, 4: 5, 0: 4, 2: 3}
PROTOCOL_CLASSNAMES = ["snow_leopard", "red panda", "axolotl", "sea_horse", "wombat"]


def _interleaved(counts: dict[int, int], shuffle_seed: int) -> list[int]:
    """Labels in first-appearance order given by `counts`' order, the rest of the list shuffled."""
    first = list(counts)
    rest = [label for label, n in counts.items() for _ in range(n - 1)]
    random.Random(shuffle_seed).shuffle(rest)
    return first + rest


def write_protocol_split_file(root: Path) -> dict[str, list[list[Any]]]:
    """An oxford_pets-layout tree whose split file has the out-of-order labels and unequal counts above."""
    split: dict[str, list[list[Any]]] = {}
    for name, counts, shuffle_seed in (
        ("train", PROTOCOL_TRAIN_COUNTS, 11),
        ("val", PROTOCOL_VAL_COUNTS, 12),
        ("test", dict.fromkeys(range(5), 2), 13),
    ):
        index: Counter[int] = Counter()
        split[name] = []
        for label in _interleaved(counts, shuffle_seed):
            raw = PROTOCOL_CLASSNAMES[label]
            impath = f"{raw}/{name}_{index[label]:03d}.jpg"
            index[label] += 1
            write_image(root / "images" / impath)
            split[name].append([impath, label, raw])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return split


def _entries(records: list[ImageRecord], image_dir: Path) -> list[tuple[str, int]]:
    return [(r.path.relative_to(image_dir).as_posix(), r.label) for r in records]


def test_protocol_draw_equals_coops(tmp_path: Path, global_random: None) -> None:
    """Our few-shot train and val picks are CoOp's: the same images in the same order."""
    split = write_protocol_split_file(tmp_path)
    assert [e[1] for e in split["train"][:5]] == [2, 0, 4, 3, 1]  # labels first appear out of order
    dataset = _load(DatasetSpec(kind="coop", name="oxford_pets", root=str(tmp_path)))
    image_dir = tmp_path.absolute() / "images"
    assert dataset.classnames == ["snow leopard", "red panda", "axolotl", "sea horse", "wombat"]
    base = labeled_class_indices(5, "base")
    assert base == [0, 1, 2]

    order_mattered = False
    for shots in (1, 2, 16):
        val_shots = default_val_shots(shots)
        assert val_shots == min(shots, 4)
        for seed in (1, 2, 3):
            for subsample, labeled in (("all", list(range(5))), ("base", base)):
                ref_train, ref_val = reference_coop_split_file_draw(split, shots, seed, subsample)
                got = build_protocol_splits(dataset, shots, val_shots, seed, labeled)
                case = f"shots={shots} seed={seed} {subsample}"
                assert _entries(got.train, image_dir) == [(e[0], e[1]) for e in ref_train], case
                assert _entries(got.val, image_dir) == [(e[0], e[1]) for e in ref_val], case
                assert got.test == dataset.test  # every class, untouched
                assert got.meta["shots"] == str(shots) and got.meta["val_shots"] == str(val_shots)
                assert got.meta["seed"] == str(seed)
                assert got.meta["labeled_classes"] == ("0-4" if subsample == "all" else "0-2")
            train, val = coop_draw(dataset, shots, val_shots, seed)
            ref_train, ref_val = reference_coop_split_file_draw(split, shots, seed, "all")
            assert _entries(train, image_dir) == [(e[0], e[1]) for e in ref_train]
            assert _entries(val, image_dir) == [(e[0], e[1]) for e in ref_val]
            # classes short of shots keep all their images, in list order
            for label, count in PROTOCOL_TRAIN_COUNTS.items():
                picked = [r for r in train if r.label == label]
                assert len(picked) == min(shots, count)
                if count < shots:
                    assert picked == [r for r in dataset.train if r.label == label]
            # the fixture is sensitive to the label order: grouping in sorted label order would differ
            random.seed(seed)
            by_sorted_label = reference_fewshot(sorted(split["train"], key=lambda e: e[1]), lambda e: e[1], shots)
            order_mattered |= {e[0] for e in by_sorted_label} != {e[0] for e in ref_train}
    assert order_mattered


def test_dassl_fewshot_uses_the_given_stream_only(global_random: None) -> None:
    records = [ImageRecord(Path(f"/d/{c}/{i}.jpg"), c, f"c{c}") for i in range(6) for c in (1, 0)]
    random.seed(99)
    expected = reference_fewshot(records, lambda r: r.label, 3)
    random.seed(12345)  # the global stream is not used by dassl_fewshot
    assert dassl_fewshot(records, 3, random.Random(99)) == expected
    assert [r.label for r in expected] == [1, 1, 1, 0, 0, 0]
    with pytest.raises(DatasetError, match="shots must be >= 1, got 0"):
        dassl_fewshot(records, 0, random.Random(1))


def test_imagenet_val_is_drawn_from_the_remaining_train_images(tmp_path: Path, global_random: None) -> None:
    build_coop_tree(tmp_path, "imagenet")
    dataset = _load(DatasetSpec(kind="coop", name="imagenet", root=str(tmp_path)))
    for shots, val_shots, val_per_class in ((2, 2, 2), (4, 4, 2), (1, 1, 1)):  # 6 train images per class
        for seed in (1, 2, 3):
            train, val = coop_draw(dataset, shots, val_shots, seed)
            # reference: CoOp's train draw, then (our addition) the same algorithm on the same stream over
            # the train list without the drawn images
            random.seed(seed)
            ref_train = reference_fewshot(dataset.train, lambda r: r.label, shots)
            remaining = [r for r in dataset.train if r not in ref_train]
            ref_val = reference_fewshot(remaining, lambda r: r.label, val_shots)
            assert train == ref_train and val == ref_val
            assert not {r.path for r in train} & {r.path for r in val}
            assert Counter(r.label for r in train) == dict.fromkeys(range(3), shots)
            assert Counter(r.label for r in val) == dict.fromkeys(range(3), val_per_class)
            assert coop_draw(dataset, shots, val_shots, seed) == (train, val)  # deterministic
    protocol = build_protocol_splits(dataset, 2, 2, 1, labeled=[0, 1])
    assert {r.label for r in protocol.train} == {0, 1} == {r.label for r in protocol.val}
    assert protocol.val == [r for r in coop_draw(dataset, 2, 2, 1)[1] if r.label < 2]
    assert protocol.meta["val_source"].startswith("train images not drawn for train")
    assert len(protocol.test) == 6


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


@pytest.mark.parametrize("num_classes", [5, 6])
def test_protocol_base_to_new_counts(num_classes: int) -> None:
    splits = _fake_splits(num_classes)
    base = labeled_class_indices(num_classes, "base")
    protocol = build_protocol_splits(splits, shots=4, val_shots=2, seed=3, labeled=base)
    n_base = math.ceil(num_classes / 2)
    assert base == list(range(n_base))
    assert Counter(r.label for r in protocol.train) == dict.fromkeys(range(n_base), 4)
    assert Counter(r.label for r in protocol.val) == dict.fromkeys(range(n_base), 2)  # never new classes
    assert protocol.test == splits.test
    assert protocol.classnames == splits.classnames
    every = build_protocol_splits(splits, shots=4, val_shots=2, seed=3, labeled=range(num_classes))
    assert [r for r in every.train if r.label < n_base] == protocol.train  # base = all-class draw, filtered


def test_protocol_warns_about_short_classes(caplog: pytest.LogCaptureFixture) -> None:
    splits = _fake_splits(3)
    rare = ImageRecord(Path("/d/rare/0.jpg"), 3, "rare bird")
    splits = DatasetSplits("fake", [*splits.classnames, "rare bird"], [*splits.train, rare], splits.val, splits.test)
    with caplog.at_level(logging.WARNING):
        protocol = build_protocol_splits(splits, shots=4, val_shots=2, seed=1, labeled=range(4))
    assert Counter(r.label for r in protocol.train) == {0: 4, 1: 4, 2: 4, 3: 1}
    assert "fewer than 4 train images; keeping all of them (as CoOp): 'rare bird' (1)" in caplog.text
    assert "labelled classes [3] have no val images" in caplog.text


def test_protocol_labelled_class_without_train_images() -> None:
    splits = _fake_splits(4)
    splits = DatasetSplits(
        splits.name, splits.classnames, [r for r in splits.train if r.label != 1], splits.val, splits.test
    )
    with pytest.raises(DatasetError, match=r"labelled classes \[1\] \(\['class 1'\]\) have no train images"):
        build_protocol_splits(splits, 2, 2, 1, labeled=[0, 1])
    build_protocol_splits(splits, 2, 2, 1, labeled=[0, 2])  # class 1 unlabelled: fine


def test_protocol_rejects_bad_labels_and_shots() -> None:
    splits = _fake_splits(3)
    with pytest.raises(DatasetError, match=r"labelled classes \[3\] are not in 0..2"):
        build_protocol_splits(splits, 2, 2, 1, labeled=[0, 3])
    with pytest.raises(DatasetError, match="listed more than once"):
        build_protocol_splits(splits, 2, 2, 1, labeled=[0, 0])
    with pytest.raises(DatasetError, match="val_shots must be >= 1, got 0"):
        build_protocol_splits(splits, 2, 0, 1, labeled=[0])


def test_protocol_on_loaded_demo(tmp_path: Path) -> None:
    build_demo_tree(tmp_path, num_classes=5)
    dataset = _load(DatasetSpec(kind="demo", root=str(tmp_path)))
    protocol = build_protocol_splits(dataset, shots=2, val_shots=1, seed=1, labeled=labeled_class_indices(5, "base"))
    assert Counter(r.label for r in protocol.train) == {0: 2, 1: 2, 2: 2}
    assert Counter(r.label for r in protocol.val) == {0: 1, 1: 1, 2: 1}
    assert len(protocol.test) == 15
    assert protocol.meta["split_file"] == "split_demo.json"


# --- paths stay inside the image root ----------------------------------------------------------------------


def _pets_with_train_entry(root: Path, impath: str) -> Path:
    split = write_split_file_tree(root, "images", "split_zhou_OxfordPets.json", ["a", "b"])
    split["train"].append([impath, 0, "a"])
    split_file = root / "split_zhou_OxfordPets.json"
    split_file.write_text(json.dumps(split))
    return split_file


def _load_pets(root: Path) -> DatasetSplits:
    return _load(DatasetSpec(kind="coop", name="oxford_pets", root=str(root)))


@pytest.mark.parametrize(
    ("impath", "expected"),
    [
        ("../../../../etc/passwd", r"resolves outside the image directory .*/images \('\.\.' climbs above it\)"),
        ("a/../../split_zhou_OxfordPets.json", r"resolves outside the image directory"),
        ("/etc/passwd", r"absolute path; entries must be relative to the image directory"),
    ],
    ids=["dotdot", "dotdot-inside-path", "absolute"],
)
def test_split_file_entry_outside_root_is_named(tmp_path: Path, impath: str, expected: str) -> None:
    root = tmp_path / "pets"
    split_file = _pets_with_train_entry(root, impath)
    with pytest.raises(DatasetError, match=expected) as err:
        _load_pets(root)
    assert str(err.value).startswith(f"{split_file}: entry train[10] = {impath!r}: ")


def test_split_file_dotdot_that_stays_inside_is_normalised(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _pets_with_train_entry(root, "b/../a/./train_000.jpg")
    splits = _load_pets(root)
    assert splits.train[-1].path == root.absolute() / "images" / "a" / "train_000.jpg"


def test_split_file_symlink_out_of_root_is_named(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    secret = tmp_path / "outside" / "secret.jpg"
    write_image(secret)
    split_file = _pets_with_train_entry(root, "a/evil.jpg")
    (root / "images" / "a" / "evil.jpg").symlink_to(secret)
    with pytest.raises(DatasetError) as err:
        _load_pets(root)
    assert str(err.value) == (
        f"{split_file}: entry train[10] = 'a/evil.jpg': 'a/evil.jpg' is a symlink to {secret}, outside the image "
        f"directory {root / 'images'} (resolved: {root / 'images'})"
    )


def test_split_file_symlinked_folder_out_of_root_is_named(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_image(tmp_path / "outside" / "x.jpg")
    split_file = _pets_with_train_entry(root, "linked/x.jpg")
    (root / "images" / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"directory 'linked' resolves to .*/outside, outside the image") as err:
        _load_pets(root)
    assert str(err.value).startswith(f"{split_file}: entry train[10] = 'linked/x.jpg': ")


def test_symlinks_inside_the_root_and_a_symlinked_root_are_fine(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "pets"
    _pets_with_train_entry(real, "a/alias.jpg")
    (real / "images" / "a" / "alias.jpg").symlink_to(real / "images" / "b" / "train_000.jpg")
    link = tmp_path / "pets"
    link.symlink_to(real, target_is_directory=True)  # the dataset folder lives elsewhere
    splits = _load_pets(link)
    assert splits.train[-1].path == link.absolute() / "images" / "a" / "alias.jpg"


def test_fgvc_entry_outside_root_is_named(tmp_path: Path) -> None:
    build_coop_tree(tmp_path, "fgvc_aircraft")
    train_file = tmp_path / "images_variant_train.txt"
    train_file.write_text(train_file.read_text() + "../variants 707-320\n")
    with pytest.raises(DatasetError) as err:
        _load(DatasetSpec(kind="coop", name="fgvc_aircraft", root=str(tmp_path)))
    assert str(err.value).startswith(
        f"{train_file}:16: entry '../variants 707-320': resolves outside the image directory {tmp_path}/images"
    )


def test_imagenet_symlink_out_of_root_is_named(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    build_coop_tree(root, "imagenet")
    secret = tmp_path / "outside" / "secret.JPEG"
    write_image(secret)
    class_dir = root / "images" / "train" / "n01443537"
    (class_dir / "evil.JPEG").symlink_to(secret)
    with pytest.raises(DatasetError) as err:
        _load(DatasetSpec(kind="coop", name="imagenet", root=str(root)))
    assert str(err.value).startswith(
        f"{class_dir} (directory listing): entry 'evil.JPEG': 'n01443537/evil.JPEG' is a symlink to {secret}, "
        f"outside the image directory {root / 'images' / 'train'}"
    )


def test_imagenet_with_symlinked_split_folders_loads(tmp_path: Path) -> None:
    """CoOp's DATASETS.md suggests linking an existing ImageNet copy into images/: each split folder is its
    own image root."""
    original = tmp_path / "original"
    build_coop_tree(original, "imagenet")
    root = tmp_path / "imagenet"
    (root / "images").mkdir(parents=True)
    (root / "classnames.txt").write_text((original / "classnames.txt").read_text())
    for split in ("train", "val"):
        (root / "images" / split).symlink_to(original / "images" / split, target_is_directory=True)
    splits = _load(DatasetSpec(kind="coop", name="imagenet", root=str(root)))
    assert len(splits.train) == 18 and len(splits.test) == 6
    assert splits.train[0].path.is_relative_to(root / "images" / "train")


def test_imagefolder_symlink_out_of_root_is_named(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    build_imagefolder_tree(root, {"a": 3, "b": 3})
    secret = tmp_path / "outside" / "secret.png"
    write_image(secret)
    (root / "train" / "b" / "evil.png").symlink_to(secret)
    with pytest.raises(DatasetError, match=rf"'train/b/evil.png' is a symlink to {secret}, outside") as err:
        _load(DatasetSpec(kind="imagefolder", name="zoo", root=str(root)))
    assert str(err.value).startswith(f"{root / 'train' / 'b'} (directory listing): entry 'evil.png': ")
    (root / "train" / "b" / "evil.png").unlink()
    (root / "test" / "c").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"entry 'c': 'test/c' is a symlink to .*/outside, outside"):
        _load(DatasetSpec(kind="imagefolder", name="zoo", root=str(root)))
