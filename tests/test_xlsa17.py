"""xlsa17 GZSL loader and writer: round trips on tiny CUB-, AWA2- and FLO-like trees (authors' path prefixes
remapped onto a local image folder), class-name cleaning, seen/unseen derivation, the validation hold-out, and
every error the loader promises (each message names the file and the entry)."""

from __future__ import annotations

import functools
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.datasets import holdout_validation, load_xlsa17_dataset, xlsa17
from pipeline.datasets.records import DatasetError, ImageRecord
from pipeline.datasets.xlsa17 import clean_classname, oxford_flowers_102_names
from pipeline.demo import xlsa17_writer
from pipeline.demo.xlsa17_writer import write_xlsa17

CUB_PREFIX = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/"
AWA2_PREFIX = "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/"
FLO_PREFIX = "/BS/xian/work/data/Flowers/jpg/"
PER_CLASS = 3  # images per class: seen classes 2 trainval + 1 test_seen, unseen classes 3 test_unseen


@functools.cache
def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (30, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encoded("JPEG" if path.suffix == ".jpg" else "PNG"))


@dataclass
class Tree:
    name: str
    root: Path  # holds att_splits.mat and res101.mat
    image_root: Path
    rel_paths: list[str]  # res101 order, relative to image_root
    labels: list[int]  # 0-based, res101 order
    locs: dict[str, list[int]]  # 0-based, as written

    def expected(self, key: str) -> list[tuple[Path, int]]:
        return [(self.image_root.absolute() / self.rel_paths[i], self.labels[i]) for i in self.locs[key]]

    def load(self, **kwargs) -> object:
        return load_xlsa17_dataset(self.name, self.root, self.image_root, **kwargs)


def _rel_path(layout: str, raw: str, label: int, k: int) -> str:
    if layout == "cub":
        return f"{raw}/{raw.split('.', 1)[1]}_{k:04d}_{label}.png"
    if layout == "awa2":
        return f"{raw}/{raw}_{10001 + k}.png"
    if layout == "flo":
        return f"image_{label * PER_CLASS + k + 1:05d}.jpg"  # Oxford's flat jpg/ folder, ids 1..N
    return f"{raw}/{k}.png"


def build_tree(
    tmp_path: Path,
    name: str,
    layout: str,
    raw_classnames: list[str],
    prefix: str,
    image_dir: str,
) -> Tree:
    """Even labels are seen (2 trainval + 1 test_seen), odd labels unseen (all test_unseen); locs are listed in a
    shuffled order so the loader must follow them rather than res101's order."""
    root = tmp_path / f"xlsa17_{layout}"
    image_root = tmp_path / image_dir
    rel_paths, labels = [], []
    locs: dict[str, list[int]] = {"trainval_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
    for label, raw in enumerate(raw_classnames):
        for k in range(PER_CLASS):
            index = len(rel_paths)
            rel_paths.append(_rel_path(layout, raw, label, k))
            labels.append(label)
            _write_image(image_root / rel_paths[-1])
            key = "test_unseen_loc" if label % 2 else ("trainval_loc" if k < 2 else "test_seen_loc")
            locs[key].append(index)
    for key, order in locs.items():
        random.Random(key).shuffle(order)
    write_xlsa17(
        root,
        raw_classnames,
        rel_paths,
        labels,
        locs["trainval_loc"],
        locs["test_seen_loc"],
        locs["test_unseen_loc"],
        path_prefix=prefix,
    )
    return Tree(name, root, image_root, rel_paths, labels, locs)


CUB_NAMES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]
AWA2_NAMES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian"]
FLO_NAMES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"]


@pytest.fixture
def cub(tmp_path: Path) -> Tree:
    return build_tree(tmp_path, "CUB", "cub", CUB_NAMES, CUB_PREFIX, "CUB_200_2011/images")


@pytest.fixture
def awa2(tmp_path: Path) -> Tree:
    return build_tree(tmp_path, "AWA2", "awa2", AWA2_NAMES, AWA2_PREFIX, "Animals_with_Attributes2/JPEGImages")


def rewrite_mat(path: Path, drop: tuple[str, ...] = (), **updates: object) -> None:
    """Re-save a .mat file with variables dropped or replaced (for damaged-file cases the writer refuses)."""
    variables = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key in drop:
        del variables[key]
    variables.update(updates)
    scipy.io.savemat(path, variables)


def column(values: list[int], dtype: type = np.uint16) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def cell(strings: list[str]) -> np.ndarray:
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def one_based(tree: Tree, key: str) -> list[int]:
    return [i + 1 for i in tree.locs[key]]


# ---------------------------------------------------------------------------------------------------------------
# Round trips


def _assert_records(records: list[ImageRecord], expected: list[tuple[Path, int]], classnames: list[str]) -> None:
    assert [(r.path, r.label) for r in records] == expected
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)
    assert [r.classname for r in records] == [classnames[label] for _, label in expected]


def test_cub_round_trip_remaps_the_authors_prefix(cub: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative root / image_root still give absolute record paths
    splits = load_xlsa17_dataset("CUB", Path(cub.root.name), Path("CUB_200_2011/images"))
    assert splits.name == "CUB"
    assert splits.classnames == ["black footed albatross", "laysan albatross", "sooty albatross", "groove billed ani"]
    assert splits.seen == [0, 2]
    assert splits.unseen == [1, 3]
    _assert_records(splits.trainval, cub.expected("trainval_loc"), splits.classnames)
    _assert_records(splits.test_seen, cub.expected("test_seen_loc"), splits.classnames)
    _assert_records(splits.test_unseen, cub.expected("test_unseen_loc"), splits.classnames)
    assert splits.trainval[0].path == tmp_path / "CUB_200_2011/images" / cub.rel_paths[cub.locs["trainval_loc"][0]]
    assert splits.meta == {
        "att_splits": "att_splits.mat",
        "res101": "res101.mat",
        "classnames": "att_splits.mat:allclasses_names",
    }


def test_awa2_round_trip_with_double_slash_prefix(awa2: Tree) -> None:
    splits = awa2.load()
    assert splits.classnames == ["antelope", "grizzly bear", "killer whale", "beaver", "dalmatian"]
    assert splits.seen == [0, 2, 4]
    assert splits.unseen == [1, 3]
    _assert_records(splits.trainval, awa2.expected("trainval_loc"), splits.classnames)
    _assert_records(splits.test_seen, awa2.expected("test_seen_loc"), splits.classnames)
    _assert_records(splits.test_unseen, awa2.expected("test_unseen_loc"), splits.classnames)
    assert len(splits.trainval) == 3 * 2 and len(splits.test_seen) == 3 and len(splits.test_unseen) == 2 * 3


def test_flo_round_trip_with_classnames_file(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "FLO", "flo", ["c1", "c2", "c3", "c4"], FLO_PREFIX, "flowers/jpg")
    rewrite_mat(tree.root / "att_splits.mat", drop=("allclasses_names",))  # FLO's att_splits has no names
    names_file = tree.root / "flo_names.txt"
    names_file.write_text("\n".join(FLO_NAMES) + "\n\n")
    splits = tree.load(classnames_file=names_file)
    assert splits.classnames == FLO_NAMES
    assert splits.seen == [0, 2] and splits.unseen == [1, 3]
    _assert_records(splits.trainval, tree.expected("trainval_loc"), splits.classnames)
    _assert_records(splits.test_unseen, tree.expected("test_unseen_loc"), splits.classnames)
    assert splits.meta["classnames"] == "classnames_file:flo_names.txt"  # relative to root: no checkout path
    assert all(not os.path.isabs(v) and str(tmp_path) not in v for v in splits.meta.values())


def test_classnames_file_overrides_allclasses_names(cub: Tree) -> None:
    names_file = cub.root.parent / "names.txt"
    names_file.write_text("Albatross_A\nAlbatross B\nalbatross  c\nANI\n")
    splits = cub.load(classnames_file=names_file)
    assert splits.classnames == ["albatross a", "albatross b", "albatross c", "ani"]


def _flo_102(tmp_path: Path) -> Tree:
    """102 classes, one image per class too few for the 3-per-class fixture: seen even labels get 1 trainval and
    1 test_seen image, unseen odd labels 1 test_unseen image."""
    root, image_root = tmp_path / "FLO", tmp_path / "flowers" / "jpg"
    rel_paths, labels = [], []
    locs: dict[str, list[int]] = {"trainval_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
    for label in range(102):
        for k in range(1 if label % 2 else 2):
            locs["test_unseen_loc" if label % 2 else ("trainval_loc", "test_seen_loc")[k]].append(len(rel_paths))
            rel_paths.append(f"image_{len(rel_paths) + 1:05d}.jpg")
            labels.append(label)
            _write_image(image_root / rel_paths[-1])
    names = [f"class {i}" for i in range(102)]
    write_xlsa17(root, names, rel_paths, labels, *locs.values(), path_prefix=FLO_PREFIX)
    rewrite_mat(root / "att_splits.mat", drop=("allclasses_names",))
    return Tree("FLO", root, image_root, rel_paths, labels, locs)


def test_flo_default_names_are_oxfords_category_order(tmp_path: Path) -> None:
    tree = _flo_102(tmp_path)
    splits = tree.load()
    assert splits.classnames == list(oxford_flowers_102_names())
    assert splits.classnames[:3] == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert splits.classnames[-1] == "blackberry lily"
    assert splits.meta["classnames"] == "default:oxford_flowers_102"
    assert splits.test_unseen[0].classname == "hard-leaved pocket orchid"  # label 1 = Oxford category 2

    # Oxford's imagelabels.mat beside jpg/ (Oxford's layout): labels that agree load, a disagreement stops.
    oxford = np.asarray(tree.labels, dtype=np.uint8).reshape(1, -1) + 1
    scipy.io.savemat(tree.image_root.parent / "imagelabels.mat", {"labels": oxford})
    assert tree.load().classnames == list(oxford_flowers_102_names())
    oxford[0, 4] = 7
    scipy.io.savemat(tree.image_root.parent / "imagelabels.mat", {"labels": oxford})
    with pytest.raises(DatasetError, match=r"res101\.mat: image_files\[4\] \(image_00005\.jpg\).*imagelabels\.mat"):
        tree.load()


def test_oxford_names_agree_with_torchvision() -> None:
    """An independent copy of Oxford's category names (torchvision's Flowers102.classes, label = Oxford - 1)."""
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    reference = getattr(torchvision_datasets.Flowers102, "classes", None)
    if reference is None:
        pytest.skip("this torchvision has no Flowers102.classes")
    # torchvision copies Oxford's page literally, including its one question mark.
    assert [n.rstrip("?") for n in reference] == list(oxford_flowers_102_names())


def test_generic_name_strips_the_longest_existing_suffix(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "zoo", "zoo", ["red_fox", "snow+owl", "Tabby_Cat"], "/home/someone/zoo/images/", "zoo")
    splits = tree.load()
    assert splits.classnames == ["red fox", "snow owl", "tabby cat"]
    _assert_records(splits.trainval, tree.expected("trainval_loc"), splits.classnames)
    _assert_records(splits.test_unseen, tree.expected("test_unseen_loc"), splits.classnames)


def test_known_name_without_anchor_falls_back_to_generic(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "cub", "cub", CUB_NAMES, "/data/birds/", "birds")
    splits = tree.load()
    _assert_records(splits.test_seen, tree.expected("test_seen_loc"), splits.classnames)


def test_char_matrix_image_files_with_padding_load(cub: Tree) -> None:
    """Some tools save image_files as a char matrix (rows padded with spaces) instead of a cell array."""
    listed = [CUB_PREFIX + rel for rel in cub.rel_paths]
    rewrite_mat(cub.root / "res101.mat", image_files=np.array(listed))
    raw = scipy.io.loadmat(cub.root / "res101.mat")["image_files"]
    assert raw.dtype.kind == "U" and len({len(s) for s in raw}) == 1  # padded to one width
    _assert_records(cub.load().trainval, cub.expected("trainval_loc"), cub.load().classnames)


def test_symlink_inside_image_root_is_allowed(cub: Tree) -> None:
    target = cub.image_root / cub.rel_paths[1]
    link = cub.image_root / cub.rel_paths[0]
    link.unlink()
    link.symlink_to(target)
    splits = cub.load()
    assert link in [r.path for r in splits.trainval + splits.test_seen]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("001.Black_footed_Albatross", "black footed albatross"),
        ("200.Common_Yellowthroat", "common yellowthroat"),
        ("grizzly+bear", "grizzly bear"),
        ("  Killer__whale ", "killer whale"),
        ("hard-leaved pocket orchid", "hard-leaved pocket orchid"),
        ("colt's foot", "colt's foot"),
        ("Chuck_will_Widow", "chuck will widow"),
    ],
)
def test_clean_classname(raw: str, clean: str) -> None:
    assert clean_classname(raw) == clean


# ---------------------------------------------------------------------------------------------------------------
# The writer


def test_writer_matches_the_released_structure(cub: Tree) -> None:
    att = scipy.io.loadmat(cub.root / "att_splits.mat")
    res = scipy.io.loadmat(cub.root / "res101.mat")
    n = len(cub.rel_paths)
    assert res["image_files"].shape == (n, 1) and res["image_files"].dtype == object
    assert res["image_files"][0, 0].tolist() == [CUB_PREFIX + cub.rel_paths[0]]  # a cell holding a char row
    assert res["labels"].shape == (n, 1) and res["labels"].dtype == np.uint8
    assert res["labels"].ravel().tolist() == [label + 1 for label in cub.labels]
    assert "features" not in res
    assert att["allclasses_names"].shape == (4, 1)
    assert [c[0] for c in att["allclasses_names"].ravel()] == CUB_NAMES
    for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
        assert att[key].shape == (len(cub.locs[key]), 1) and att[key].dtype == np.uint8
        assert att[key].ravel().tolist() == one_based(cub, key)
    assert att["train_loc"].ravel().tolist() == one_based(cub, "trainval_loc")
    assert att["val_loc"].size == 0
    assert att["att"].shape == (4, 4)


def test_writer_bytes_are_deterministic(tmp_path: Path) -> None:
    args = (["a", "b"], ["a/1.png", "b/2.png"], [0, 1], [0], [], [1])

    def written(root: Path) -> dict[str, bytes]:
        write_xlsa17(root, *args, path_prefix="/x/images/")
        return {name: (root / name).read_bytes() for name in ("att_splits.mat", "res101.mat")}

    first = written(tmp_path / "one")
    assert first == written(tmp_path / "two")
    assert first == written(tmp_path / "one")  # overwriting in place gives the same bytes, no temp file left
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["att_splits.mat", "res101.mat"]
    for data in first.values():
        assert data.startswith(b"MATLAB 5.0 MAT-file") and b"Created on" not in data[:128]


def test_writer_names_the_files_the_reader_opens() -> None:
    # The writer keeps its own copy of the two names, so that the demo world does not import the reader.
    assert (xlsa17_writer.ATT_SPLITS_FILE, xlsa17_writer.RES101_FILE) == (xlsa17.ATT_SPLITS_FILE, xlsa17.RES101_FILE)


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path_prefix must end with '/'"):
        write_xlsa17(tmp_path, ["a"], ["a/1.png"], [0], [0], [], [], path_prefix="/x/images")
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.0"):
        write_xlsa17(tmp_path, ["a"], ["a/1.png"], [1], [0], [], [], path_prefix="/x/")
    with pytest.raises(ValueError, match=r"test_unseen_loc must lie in 0\.\.0"):
        write_xlsa17(tmp_path, ["a"], ["a/1.png"], [0], [0], [], [1], path_prefix="/x/")
    with pytest.raises(ValueError, match="relative to the image folder"):
        write_xlsa17(tmp_path, ["a"], ["../a/1.png"], [0], [0], [], [], path_prefix="/x/")


# ---------------------------------------------------------------------------------------------------------------
# Validation hold-out


def _records(counts: dict[int, int]) -> list[ImageRecord]:
    return [
        ImageRecord(Path(f"/img/c{label}/{i:03d}.png"), label, f"c{label}")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_holdout_is_deterministic_and_independent_of_input_order() -> None:
    records = _records({0: 10, 1: 7, 5: 3, 7: 2, 9: 1})
    train, val = holdout_validation(records, per_class=3, seed=4)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert holdout_validation(shuffled, per_class=3, seed=4) == (train, val)

    per_class_val = {label: sum(r.label == label for r in val) for label in (0, 1, 5, 7, 9)}
    assert per_class_val == {0: 3, 1: 3, 5: 2, 7: 1, 9: 0}  # small classes keep one training image
    assert {label: sum(r.label == label for r in train) for label in (0, 1, 5, 7, 9)} == {0: 7, 1: 4, 5: 1, 7: 1, 9: 1}
    assert sorted(train + val, key=lambda r: (r.label, str(r.path))) == sorted(
        records, key=lambda r: (r.label, str(r.path))
    )
    assert not set(train) & set(val)
    for part in (train, val):
        assert part == sorted(part, key=lambda r: (r.label, str(r.path)))


def test_holdout_depends_on_seed_but_not_on_other_classes() -> None:
    records = _records({0: 20, 1: 20, 2: 20})
    _, val_a = holdout_validation(records, per_class=4, seed=0)
    _, val_b = holdout_validation(records, per_class=4, seed=1)
    assert val_a != val_b
    _, val_only_1 = holdout_validation([r for r in records if r.label == 1], per_class=4, seed=0)
    assert val_only_1 == [r for r in val_a if r.label == 1]


def test_holdout_zero_and_invalid_per_class() -> None:
    records = _records({0: 3})
    assert holdout_validation(records, per_class=0) == (records, [])
    for bad in (-1, 1.5, True):
        with pytest.raises(DatasetError, match="per_class must be an integer >= 0"):
            holdout_validation(records, per_class=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Errors: each names the file (and the entry)


def test_missing_files_and_folders(cub: Tree, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere"):
        load_xlsa17_dataset("CUB", tmp_path / "nowhere", cub.image_root)
    with pytest.raises(DatasetError, match=r"image_root .*no_images"):
        load_xlsa17_dataset("CUB", cub.root, tmp_path / "no_images")
    for name in ("res101.mat", "att_splits.mat"):
        (cub.root / name).unlink()
        with pytest.raises(DatasetError, match=rf"{cub.root}/{name} does not exist"):
            cub.load()


def test_damaged_mat_file(cub: Tree) -> None:
    (cub.root / "att_splits.mat").write_bytes(b"this is not a MAT-file" * 20)
    with pytest.raises(DatasetError, match=r"att_splits\.mat: not a readable MATLAB v5 \.mat file"):
        cub.load()


@pytest.mark.parametrize(
    ("file", "key"),
    [
        ("att_splits.mat", "test_unseen_loc"),
        ("att_splits.mat", "trainval_loc"),
        ("res101.mat", "labels"),
        ("res101.mat", "image_files"),
    ],
)
def test_missing_variable(cub: Tree, file: str, key: str) -> None:
    rewrite_mat(cub.root / file, drop=(key,))
    with pytest.raises(DatasetError, match=rf"{file}: variable '{key}' is missing"):
        cub.load()


def test_index_out_of_range(cub: Tree) -> None:
    n = len(cub.rel_paths)
    rewrite_mat(cub.root / "att_splits.mat", trainval_loc=column([*one_based(cub, "trainval_loc")[:2], n + 1]))
    with pytest.raises(DatasetError, match=rf"att_splits\.mat: trainval_loc\[2\] = {n + 1} is out of range.*1\.\.{n}"):
        cub.load()


def test_index_zero_in_unsigned_column_is_out_of_range(cub: Tree) -> None:
    """The real files store indices as uint16: a 0 must read as 0 (out of range), not wrap to 65535 after -1."""
    rewrite_mat(cub.root / "att_splits.mat", test_seen_loc=column([0, *one_based(cub, "test_seen_loc")[1:]]))
    with pytest.raises(DatasetError, match=r"att_splits\.mat: test_seen_loc\[0\] = 0 is out of range"):
        cub.load()


def test_missing_images_are_counted_and_named(cub: Tree) -> None:
    gone = [cub.locs["trainval_loc"][0], cub.locs["test_unseen_loc"][1]]
    for index in gone:
        (cub.image_root / cub.rel_paths[index]).unlink()
    with pytest.raises(DatasetError) as info:
        cub.load()
    message = str(info.value)
    assert message.startswith(f"{cub.root / 'res101.mat'}: 2 of {len(cub.rel_paths)} listed images do not exist")
    for index in gone:
        assert f"image_files[{index}] '{CUB_PREFIX + cub.rel_paths[index]}'" in message
    assert "after the last 'images/' directory" in message
    assert "\n" not in message


def test_many_missing_images_show_the_first_few(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "AWA2", "awa2", AWA2_NAMES, AWA2_PREFIX, "awa/JPEGImages")
    for rel in tree.rel_paths[1:]:
        (tree.image_root / rel).unlink()
    with pytest.raises(
        DatasetError, match=rf"res101\.mat: {len(tree.rel_paths) - 1} of {len(tree.rel_paths)} .*\.\.\.$"
    ):
        tree.load()


def test_wrong_image_root_for_generic_name(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "zoo", "zoo", ["a", "b"], "/home/someone/zoo/images/", "zoo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DatasetError, match=r"res101\.mat: image_files\[\d+\] = '/home/someone/zoo/images/.*check image_root"
    ):
        load_xlsa17_dataset("zoo", tree.root, tmp_path / "empty")


def test_class_count_disagrees_with_allclasses_names(cub: Tree) -> None:
    rewrite_mat(cub.root / "att_splits.mat", allclasses_names=cell(CUB_NAMES[:3]))
    with pytest.raises(
        DatasetError, match=r"res101\.mat: labels use 4 classes .*att_splits\.mat allclasses_names names 3"
    ):
        cub.load()
    rewrite_mat(cub.root / "att_splits.mat", allclasses_names=cell([*CUB_NAMES, "005.Crested_Auklet"]))
    with pytest.raises(
        DatasetError, match=r"labels use 4 classes .*names 5 classes; label values without images: \[5\]"
    ):
        cub.load()


def test_class_count_disagrees_with_classnames_file(cub: Tree, tmp_path: Path) -> None:
    names_file = tmp_path / "names.txt"
    names_file.write_text("a\nb\nc\n")
    with pytest.raises(
        DatasetError, match=rf"{names_file}: lists 3 class names but .*att_splits\.mat allclasses_names lists 4"
    ):
        cub.load(classnames_file=names_file)
    rewrite_mat(cub.root / "att_splits.mat", drop=("allclasses_names",))
    with pytest.raises(DatasetError, match=rf"res101\.mat: labels use 4 classes .*but {names_file} names 3"):
        cub.load(classnames_file=names_file)
    with pytest.raises(DatasetError, match=r"classnames_file .*absent\.txt does not exist"):
        cub.load(classnames_file=tmp_path / "absent.txt")


def test_no_class_names_anywhere(cub: Tree) -> None:
    rewrite_mat(cub.root / "att_splits.mat", drop=("allclasses_names",))
    with pytest.raises(DatasetError, match=r"att_splits\.mat: has no 'allclasses_names' .*pass classnames_file"):
        cub.load()


def test_names_that_clean_to_the_same_prompt(cub: Tree) -> None:
    rewrite_mat(cub.root / "att_splits.mat", allclasses_names=cell(["001.Tern", "002.tern", "003.Gull", "004.Ani"]))
    with pytest.raises(
        DatasetError, match=r"allclasses_names: classes 0 \('001\.Tern'\) and 1 \('002\.tern'\) both read"
    ):
        cub.load()


def test_seen_and_unseen_overlap(cub: Tree) -> None:
    unseen_image = cub.locs["test_unseen_loc"][0]
    label = cub.labels[unseen_image]
    rewrite_mat(cub.root / "att_splits.mat", trainval_loc=column([*one_based(cub, "trainval_loc"), unseen_image + 1]))
    name = ["black footed albatross", "laysan albatross", "sooty albatross", "groove billed ani"][label]
    pattern = rf"att_splits\.mat: classes \['{name}'\] \(0-based labels \[{label}\]\) have images in both trainval_loc"
    with pytest.raises(DatasetError, match=pattern):
        cub.load()


def test_test_seen_image_of_an_unseen_class(cub: Tree) -> None:
    unseen_image = cub.locs["test_unseen_loc"][0]
    label = cub.labels[unseen_image]
    rewrite_mat(cub.root / "att_splits.mat", test_seen_loc=column([*one_based(cub, "test_seen_loc"), unseen_image + 1]))
    pattern = rf"att_splits\.mat: test_seen_loc holds images of classes \['[a-z ]+'\] \(0-based labels \[{label}\]\)"
    with pytest.raises(DatasetError, match=pattern):
        cub.load()


def test_class_neither_seen_nor_unseen(cub: Tree) -> None:
    kept = [i + 1 for i in cub.locs["test_unseen_loc"] if cub.labels[i] != 3]
    rewrite_mat(cub.root / "att_splits.mat", test_unseen_loc=column(kept))
    pattern = r"att_splits\.mat: classes \['groove billed ani'\] \(0-based labels \[3\]\) are neither seen"
    with pytest.raises(DatasetError, match=pattern):
        cub.load()


def test_label_zero_is_refused(cub: Tree) -> None:
    labels = [label + 1 for label in cub.labels]
    labels[5] = 0
    rewrite_mat(cub.root / "res101.mat", labels=column(labels, np.uint8))
    with pytest.raises(DatasetError, match=r"res101\.mat: labels\[5\] = 0; labels are 1-based"):
        cub.load()


def test_training_image_listed_as_test_seen(cub: Tree) -> None:
    train_image = cub.locs["trainval_loc"][0]
    rewrite_mat(cub.root / "att_splits.mat", test_seen_loc=column([*one_based(cub, "test_seen_loc"), train_image + 1]))
    with pytest.raises(
        DatasetError,
        match=rf"att_splits\.mat: 1 images are both in trainval_loc and test_seen_loc \(first: {train_image + 1}\)",
    ):
        cub.load()


def test_labels_and_image_files_disagree_in_length(cub: Tree) -> None:
    rewrite_mat(cub.root / "res101.mat", labels=column([label + 1 for label in cub.labels][:-1], np.uint8))
    with pytest.raises(
        DatasetError, match=rf"res101\.mat: {len(cub.rel_paths)} image_files but {len(cub.rel_paths) - 1} labels"
    ):
        cub.load()


def test_dot_dot_entry_is_refused(cub: Tree, tmp_path: Path) -> None:
    _write_image(tmp_path / "outside.png")
    listed = [CUB_PREFIX + rel for rel in cub.rel_paths]
    index = cub.locs["test_unseen_loc"][0]
    listed[index] = CUB_PREFIX + "../../outside.png"
    rewrite_mat(cub.root / "res101.mat", image_files=cell(listed))
    pattern = rf"res101\.mat: image_files\[{index}\] = '{CUB_PREFIX}\.\./\.\./outside\.png' maps to .*'\.\.'"
    with pytest.raises(DatasetError, match=pattern):
        cub.load()


def test_dot_dot_entry_is_refused_for_generic_names(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, "zoo", "zoo", ["a", "b"], "/srv/zoo/images/", "zoo")
    listed = ["/srv/zoo/images/" + rel for rel in tree.rel_paths]
    index = max(tree.locs["trainval_loc"])  # not the first referenced entry, which fixes the prefix length
    listed[index] = "/srv/zoo/images/../../../../etc/passwd"
    rewrite_mat(tree.root / "res101.mat", image_files=cell(listed))
    with pytest.raises(DatasetError, match=rf"image_files\[{index}\] = '/srv/zoo/images/\.\./.*climbs out"):
        tree.load()


def test_symlinked_image_leaving_image_root_is_refused(cub: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    _write_image(outside)
    index = cub.locs["test_seen_loc"][0]
    victim = cub.image_root / cub.rel_paths[index]
    victim.unlink()
    victim.symlink_to(outside)
    with pytest.raises(
        DatasetError, match=rf"res101\.mat: image_files\[{index}\] = .*a symlink leading out of image_root"
    ):
        cub.load()


def test_symlinked_folder_leaving_image_root_is_refused(cub: Tree, tmp_path: Path) -> None:
    class_dir = cub.image_root / CUB_NAMES[3]
    moved = tmp_path / "elsewhere"
    class_dir.rename(moved)
    class_dir.symlink_to(moved, target_is_directory=True)
    with pytest.raises(
        DatasetError, match=r"res101\.mat: image_files\[\d+\] = .*004\.Groove_billed_Ani.*folder is a symlink"
    ):
        cub.load()
