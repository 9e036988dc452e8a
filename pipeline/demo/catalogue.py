"""The demo world's datasets: their vocabularies, class lists, label orders and protocols (the world's definition;
`pipeline/demo/world.py` renders and writes them).

Three datasets with different class vocabularies, every class name two words (attribute + noun), so that classes
share words compositionally:

- `shapes` (base-to-new): colour x shape, "red circle", "blue star", ... (8 x 6 = 48 classes).
- `patterns` (base-to-new, and the cross-dataset target of `shapes`): fill pattern x shape, "striped star",
  "dotted circle", "outlined heart", "solid cross" (4 x 6 = 24 classes). Same shape words as `shapes`; the
  object's colour is a nuisance (any colour), so a classifier fit to `shapes` transfers only through the shape
  word. (With a fifth pattern, "checkered", the demo backbone's zero-shot accuracy on `patterns` was 43% base /
  37% new, below the band that leaves room both for few-shot gains and for losses on new classes.)
- `zoo` (generalized zero-shot, xlsa17 format): colour x animal silhouette, "red fish", "green snail", ...
  (6 x 6 = 36 classes, 12 of them unseen).

For the two base-to-new datasets the label order is a fixed permutation; `demo.world.new_classes` says how the
halves differ (base = first ceil(n/2) labels, as CoCoOp's `subsample_classes`):
- `combinations` (default): a checkerboard over attribute x noun, so the base half and the new half each contain
  every attribute and every noun: new classes are unseen *combinations* of words the base classes already use.
- `new_nouns`: the base half holds every class of half the nouns, the new half every class of the other nouns. As in
  CoCoOp's splits of real datasets, a new class is a different object, named by a word no base class uses; only
  attribute words are shared.
In `zoo`, every attribute and every noun is in exactly two unseen classes and in four seen ones: unseen classes are
unseen combinations of seen words, as in attribute-based GZSL benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from pipeline.params.demo import NewClasses

# Base RGB of each colour word; renders jitter around it. Distinct hues plus brown, which sits between orange
# and red under dim lighting: a deliberate source of confusion.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 220, 30),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (128, 60, 180),
    "pink": (247, 140, 200),
    "brown": (120, 72, 36),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
# How a shape is filled; the object's colour is random (any of COLOURS). Two-tone patterns pair the colour with a
# light "paper" tone.
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "outlined")
ANIMALS: tuple[str, ...] = ("fish", "bird", "turtle", "snail", "butterfly", "spider")
ZOO_COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
ZOO_UNSEEN_EVERY = 3  # in zoo, one (permuted) diagonal in three is unseen: 2 of 6 per colour and per animal

Kind = Literal["base_to_new", "gzsl"]


@dataclass(frozen=True)
class DemoClass:
    label: int  # index into its dataset's class list
    attribute: str  # colour or pattern word
    noun: str  # shape or animal word

    @property
    def name(self) -> str:
        return f"{self.attribute} {self.noun}"

    @property
    def dirname(self) -> str:
        return f"{self.attribute}_{self.noun}"


@dataclass(frozen=True)
class DemoDataset:
    """One dataset of the world: its vocabulary, class order and protocol. Part of the world's definition."""

    name: str
    key: int  # part of every image's RNG key
    kind: Kind
    attributes: tuple[str, ...]  # colour words (the object's colour) or pattern words (its fill; colour is random)
    nouns: tuple[str, ...]  # shape words or animal words (the object's silhouette)
    order_seed: int  # the class order never depends on params.seed
    new_classes: NewClasses = "combinations"  # base-to-new only: how the new half differs from the base half

    @property
    def by_colour(self) -> bool:
        return set(self.attributes) <= set(COLOURS)

    @property
    def animals(self) -> bool:
        return set(self.nouns) <= set(ANIMALS)

    def classes(self) -> list[DemoClass]:
        """All classes in label order (fixed)."""
        rng = np.random.default_rng(self.order_seed)
        a_rank = rng.permutation(len(self.attributes))
        n_rank = rng.permutation(len(self.nouns))
        cells = [(ai, ni) for ai in range(len(self.attributes)) for ni in range(len(self.nouns))]
        if self.kind == "base_to_new":
            if self.new_classes == "combinations":
                # A checkerboard over (permuted) attribute x noun: every row and column is split between the halves.
                in_base = [(a_rank[ai] + n_rank[ni]) % 2 == 0 for ai, ni in cells]
            else:
                # By noun: the first half of the (permuted) nouns is base, the rest new, every attribute in both.
                in_base = [n_rank[ni] < len(self.nouns) // 2 for _, ni in cells]
            base = [c for c, b in zip(cells, in_base, strict=True) if b]
            new = [c for c, b in zip(cells, in_base, strict=True) if not b]
            ordered = [base[i] for i in rng.permutation(len(base))] + [new[i] for i in rng.permutation(len(new))]
        else:
            # xlsa17 datasets interleave seen and unseen labels; so does zoo.
            ordered = [cells[i] for i in rng.permutation(len(cells))]
        return [DemoClass(label, self.attributes[ai], self.nouns[ni]) for label, (ai, ni) in enumerate(ordered)]

    def classnames(self) -> list[str]:
        return [c.name for c in self.classes()]

    def unseen_labels(self) -> list[int]:
        """GZSL: labels of the classes without training images (sorted); empty for base-to-new datasets."""
        if self.kind != "gzsl":
            return []
        rng = np.random.default_rng(self.order_seed + 1)
        a_rank = rng.permutation(len(self.attributes))
        n_rank = rng.permutation(len(self.nouns))
        a_index = {a: i for i, a in enumerate(self.attributes)}
        n_index = {n: i for i, n in enumerate(self.nouns)}
        return [
            c.label
            for c in self.classes()
            if (a_rank[a_index[c.attribute]] - n_rank[n_index[c.noun]]) % ZOO_UNSEEN_EVERY == 0
        ]


DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset("shapes", 0, "base_to_new", tuple(COLOURS), SHAPES, order_seed=20230714),
    DemoDataset("patterns", 1, "base_to_new", PATTERNS, SHAPES, order_seed=20230715),
    DemoDataset("zoo", 2, "gzsl", ZOO_COLOURS, ANIMALS, order_seed=20230716),
)
DATASETS_BY_NAME: dict[str, DemoDataset] = {d.name: d for d in DATASETS}


def world_datasets(new_classes: NewClasses = "combinations") -> tuple[DemoDataset, ...]:
    """The world's datasets with its base-to-new datasets split as `new_classes` says (`demo.world.new_classes`)."""
    return tuple(replace(d, new_classes=new_classes) if d.kind == "base_to_new" else d for d in DATASETS)


def dataset(name: str, new_classes: NewClasses = "combinations") -> DemoDataset:
    if name not in DATASETS_BY_NAME:
        raise KeyError(f"no demo dataset {name!r}; the world has {', '.join(DATASETS_BY_NAME)}")
    return next(d for d in world_datasets(new_classes) if d.name == name)


def global_classnames(datasets: Sequence[DemoDataset] = DATASETS) -> list[str]:
    """Every class of every dataset, in dataset order: the labels of the web corpus (names are all distinct)."""
    names = [name for ds in datasets for name in ds.classnames()]
    if len(set(names)) != len(names):  # pragma: no cover - a property of the world's definition, tested
        raise AssertionError("demo datasets share a class name")
    return names
