"""The demo world: a generated, fully offline stand-in for a CLIP pre-training corpus plus three benchmarks.

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

Two domains are rendered from the same classes:
- "web": captioned images on plain neutral backgrounds with little clutter. Only the demo backbone's
  contrastive pre-training sees these (`web/<dataset>/...` + `web/web_captions.json`), for all classes of all
  datasets (a real CLIP's corpus also covers the benchmarks' new and unseen classes). The web domain does not
  depend on `new_classes` (it is rendered and labelled in the default class order): how a benchmark is split is no
  business of the pre-training corpus. `ship pretrain-demo` renders it; the DAG's world (`web=False`) does not.
- "benchmark": a shifted domain (textured backgrounds, lighting and colour casts, blur, sensor noise, more and
  larger distractors, a wider size range). The protocols run on it: `shapes/` and `patterns/` in CoOp's
  split-file layout (`images/` + `split_demo.json` + `classnames.txt`), `zoo/` in the xlsa17 layout
  (`att_splits.mat` + `res101.mat`, image paths listed under a fake absolute prefix, images under `images/`).

Every image is drawn from its own RNG keyed by (seed, dataset, domain, label, index), so the output is
byte-identical across runs and independent of how the work is spread over processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.atomic_files import replace_dir
from pipeline.params.demo import DemoWorldParams, NewClasses

log = logging.getLogger(__name__)

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

# Neutral web backgrounds, named so that captions can mention them without reusing a colour word.
WEB_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light grey": (200, 200, 200),
    "grey": (140, 140, 140),
    "dark grey": (70, 70, 70),
    "black": (18, 18, 18),
    "beige": (225, 210, 180),
}

WEB_MOTTLED_FRACTION = 0.3  # share of web images whose background is softly textured
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-downsampled: cheap anti-aliasing

WEB, BENCHMARK = 0, 1  # domain ids, part of every image's RNG key
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split_demo.json"
CLASSNAMES_FILE = "classnames.txt"
IMAGES_DIR = "images"
WEB_DIR = "web"
WEB_CAPTIONS_FILE = "web_captions.json"  # inside WEB_DIR
# The world's content hash, written last. Stages downstream depend on this one file, not on the world's ~17k files:
# DVC would check every one of them again for each of the 14 stages that read the world (half of a no-op repro).
# Safe because the world is the `demo_world` stage's output: DVC reruns that stage when any file in it changes.
MANIFEST_FILE = "manifest.json"
# The xlsa17 files list image paths under the original authors' absolute prefix; the loader maps them onto the
# local image folder. The demo's lists use a made-up prefix of the same shape.
ZOO_PATH_PREFIX = "/BS/xian/work/data/ZOO/images/"

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


# --- drawing -------------------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _polygon(shape: str) -> np.ndarray | None:
    """Unit-radius outline [K, 2] of a polygonal shape (None for shapes drawn from ellipses)."""
    if shape == "square":
        t = np.deg2rad(45 + 90 * np.arange(4))
        return 0.95 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "triangle":
        t = np.deg2rad(-90 + 120 * np.arange(3))
        return 1.1 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, b = 0.95, 0.32
        return np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 15.5
    return None  # circle


_POLYGONS = {s: _polygon(s) for s in SHAPES}

# Animal silhouettes in unit coordinates (facing right, y down), as drawing primitives:
# ("fill", polygon), ("cut", polygon) erases, ("line", points, width as a fraction of the radius),
# ("cut_line", points, width).
_Primitive = tuple[str, np.ndarray, float]


def _spiral(cx: float, cy: float, radius: float, turns: float = 1.5) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi * turns, 40)
    rad = radius * t / t[-1]
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)


def _animal(name: str) -> list[_Primitive]:
    a = np.array
    if name == "fish":
        return [
            ("fill", _ellipse(0.15, 0, 0.72, 0.42), 0),
            ("fill", a([[-0.45, 0], [-1.0, -0.5], [-0.9, 0], [-1.0, 0.5]]), 0),
            ("cut", _ellipse(0.55, -0.08, 0.09, 0.09), 0),
        ]
    if name == "bird":
        return [
            ("fill", _ellipse(-0.05, 0.15, 0.55, 0.33, 0.2), 0),
            ("fill", _ellipse(0.5, -0.3, 0.26, 0.26), 0),
            ("fill", a([[0.7, -0.4], [1.05, -0.3], [0.7, -0.2]]), 0),
            ("fill", a([[-0.45, 0.05], [-1.0, -0.15], [-0.9, 0.35]]), 0),
            ("fill", a([[-0.35, 0.0], [0.15, 0.05], [-0.45, -0.7]]), 0),
            ("line", a([[0.0, 0.4], [-0.05, 0.85]]), 0.1),
            ("line", a([[0.15, 0.4], [0.15, 0.85]]), 0.1),
        ]
    if name == "turtle":
        t = np.linspace(np.pi, 2 * np.pi, 24)
        shell = np.stack([0.8 * np.cos(t), 0.25 + 0.7 * np.sin(t)], 1)
        return [
            ("fill", shell, 0),
            ("fill", _ellipse(0.9, 0.05, 0.22, 0.18), 0),
            ("fill", _ellipse(-0.45, 0.35, 0.14, 0.22), 0),
            ("fill", _ellipse(0.45, 0.35, 0.14, 0.22), 0),
            ("fill", a([[-0.8, 0.2], [-1.05, 0.3], [-0.8, 0.3]]), 0),
        ]
    if name == "snail":
        return [
            ("fill", _ellipse(-0.1, -0.15, 0.58, 0.58), 0),
            ("cut_line", _spiral(-0.1, -0.15, 0.45), 0.08),
            ("fill", a([[-0.95, 0.55], [0.7, 0.55], [0.95, 0.3], [0.85, 0.05], [0.6, 0.3], [-0.7, 0.35]]), 0),
            ("line", a([[0.75, 0.15], [0.7, -0.4]]), 0.08),
            ("line", a([[0.85, 0.15], [1.0, -0.3]]), 0.08),
        ]
    if name == "butterfly":
        return [
            ("fill", _ellipse(-0.45, -0.35, 0.45, 0.38, 0.5), 0),
            ("fill", _ellipse(0.45, -0.35, 0.45, 0.38, -0.5), 0),
            ("fill", _ellipse(-0.35, 0.35, 0.32, 0.28, -0.5), 0),
            ("fill", _ellipse(0.35, 0.35, 0.32, 0.28, 0.5), 0),
            ("fill", _ellipse(0, 0.0, 0.1, 0.6), 0),
            ("line", a([[0, -0.55], [-0.3, -0.95]]), 0.07),
            ("line", a([[0, -0.55], [0.3, -0.95]]), 0.07),
        ]
    if name == "spider":
        legs: list[_Primitive] = [
            ("line", a([[sx * 0.2, y0], [sx * 0.75, y0 - 0.35 + dy], [sx * 1.0, y0 + 0.25 + dy]]), 0.11)
            for sx in (-1, 1)
            for y0, dy in ((-0.25, -0.2), (0.0, 0.0), (0.2, 0.25), (0.4, 0.45))
        ]
        return [("fill", _ellipse(0, 0.2, 0.38, 0.42), 0), ("fill", _ellipse(0, -0.35, 0.22, 0.2), 0), *legs]
    raise ValueError(f"no drawing for animal {name!r}")  # pragma: no cover - ANIMALS and this code are one list


_ANIMALS = {name: _animal(name) for name in ANIMALS}


def _transform(points: np.ndarray, cx: float, cy: float, r: float, angle: float, flip: bool) -> list[tuple]:
    pts = np.asarray(points, dtype=np.float64) * (np.array([-1.0, 1.0]) if flip else 1.0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [tuple(p) for p in (pts @ rot.T * r + np.array([cx, cy])).tolist()]


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """An 'L' mask (size x size) of `shape` centred at (cx, cy) with radius r, rotated by `angle` radians."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    poly = _POLYGONS[shape]
    if poly is not None:
        draw.polygon(_transform(poly, cx, cy, r, angle, False), fill=255)
    elif shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:  # pragma: no cover - SHAPES and the drawing code are one list
        raise ValueError(f"no drawing for shape {shape!r}")
    return mask


def _animal_mask(animal: str, size: int, cx: float, cy: float, r: float, angle: float, flip: bool) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for kind, points, width in _ANIMALS[animal]:
        xy = _transform(points, cx, cy, r, angle, flip)
        if kind in ("fill", "cut"):
            draw.polygon(xy, fill=255 if kind == "fill" else 0)
        else:
            draw.line(xy, fill=255 if kind == "line" else 0, width=max(1, round(width * r)), joint="curve")
    return mask


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] ([size, size]): a small random grid upsampled bicubically."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0


def _muted_colour(rng: np.random.Generator, max_saturation: float) -> np.ndarray:
    """A random RGB colour with limited saturation, so that backgrounds rarely look like an object colour."""
    grey = rng.uniform(30, 230)
    tint = rng.normal(0.0, 1.0, 3)
    tint = tint / (np.linalg.norm(tint) + 1e-9) * rng.uniform(0, max_saturation) * 120
    return np.clip(grey + tint, 0, 255)


def _benchmark_background(rng: np.random.Generator, size: int, shift: float) -> np.ndarray:
    """A textured background [size, size, 3] float: smooth noise, stripes, checkerboard or a gradient."""
    c1, c2 = _muted_colour(rng, 0.35 + 0.4 * shift), _muted_colour(rng, 0.35 + 0.4 * shift)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        t = _smooth_noise(rng, size, int(rng.integers(3, 9)))
    elif kind == 1:
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 10)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta))))
    elif kind == 2:
        cells = int(rng.integers(3, 9))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float64)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta), 0, 1)
    # Contrast of the texture grows with the shift; at shift 0 it is nearly flat.
    t = 0.5 + (t - 0.5) * min(1.0, 0.3 + 0.7 * shift)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _web_background(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    """A neutral background and its caption name: mostly flat, sometimes softly mottled."""
    name = list(WEB_BACKGROUNDS)[int(rng.integers(len(WEB_BACKGROUNDS)))]
    base = _jitter_colour(WEB_BACKGROUNDS[name], rng, 6.0)
    # A faint vertical gradient so that backgrounds are not perfectly flat.
    bg = np.broadcast_to(base + np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-10, 10), (size, size, 3))
    if rng.random() < WEB_MOTTLED_FRACTION:
        # Some texture on the web side too, so the benchmark's textures are a shift of degree, not of kind.
        texture = _smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5
        return f"mottled {name}", bg + texture[..., None] * rng.uniform(20, 50)
    return name, bg.copy()


def _pattern_fill(
    pattern: str, rng: np.random.Generator, size: int, colour: np.ndarray, paper: np.ndarray
) -> np.ndarray | None:
    """A [size, size, 3] two-tone fill (colour + paper) for `pattern`; None for a plain fill in `colour`.

    Periods are in supersampled pixels: stripes and dots stay 2-4 output pixels wide at 64 px.
    """
    if pattern in ("solid", "outlined"):
        return None
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if pattern == "striped":
        period = rng.uniform(10, 15)
        t = (np.mod(u / period + rng.random(), 1.0) < 0.5).astype(np.float64)
    elif pattern == "dotted":
        period = rng.uniform(11, 15)
        du = np.mod(u / period + rng.random(), 1.0) - 0.5
        dv = np.mod(v / period + rng.random(), 1.0) - 0.5
        t = (du**2 + dv**2 < rng.uniform(0.28, 0.34) ** 2).astype(np.float64)
    else:  # pragma: no cover - PATTERNS and this code are one list
        raise ValueError(f"no fill for pattern {pattern!r}")
    return colour * (1 - t[..., None]) + paper * t[..., None]


def _outline(mask: Image.Image, r: float) -> Image.Image:
    """The rim of a filled mask: the mask minus its erosion, about a sixth of the radius wide."""
    width = max(3, 2 * round(0.09 * r) + 1)
    inner = mask.filter(ImageFilter.MinFilter(width))
    return Image.fromarray(np.asarray(mask) - np.asarray(inner), "L")


def _paste(canvas: Image.Image, fill: np.ndarray, mask: Image.Image) -> None:
    if fill.ndim == 1:
        canvas.paste(tuple(int(v) for v in fill), mask=mask)
    else:
        canvas.paste(Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8), "RGB"), mask=mask)


def _draw_object(
    ds: DemoDataset,
    cls: DemoClass,
    canvas: Image.Image,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    colour_sd: float,
) -> str:
    """Draw the labelled object; returns its colour word (for captions)."""
    big = canvas.size[0]
    if ds.animals:  # upright-ish, facing either way
        angle, flip = rng.uniform(-0.35, 0.35), bool(rng.random() < 0.5)
        mask = _animal_mask(cls.noun, big, cx, cy, r, angle, flip)
    else:
        mask = _shape_mask(cls.noun, big, cx, cy, r, rng.uniform(0, 2 * np.pi))
    if ds.by_colour:
        _paste(canvas, _jitter_colour(COLOURS[cls.attribute], rng, colour_sd), mask)
        return cls.attribute
    colour_word = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    colour = _jitter_colour(COLOURS[colour_word], rng, colour_sd)
    paper = _jitter_colour((236, 232, 222), rng, 10.0)
    fill = _pattern_fill(cls.attribute, rng, big, colour, paper)
    if cls.attribute == "solid":
        _paste(canvas, colour, mask)
        return colour_word
    if fill is not None:
        _paste(canvas, fill, mask)
    # Every non-solid shape has a rim in its colour (alone, for "outlined"): the silhouette stays readable when
    # paper-toned parts of a pattern meet a light background.
    _paste(canvas, colour, _outline(mask, r))
    return colour_word


@dataclass(frozen=True)
class _Drawn:
    image: Image.Image
    caption: str


def render(
    ds: DemoDataset, domain: int, cls: DemoClass, seed: int, index: int, image_size: int, shift: float
) -> _Drawn:
    """One image of `cls` (a class of `ds`) in `domain`, fully determined by (seed, dataset, domain, label, index)."""
    rng = np.random.default_rng([seed, ds.key, domain, cls.label, index])
    big = image_size * SUPERSAMPLE
    distractor_classes = [(c, s) for c in COLOURS for s in SHAPES]

    if domain == WEB:
        bg_name, bg = _web_background(rng, big)
        r = rng.uniform(0.24, 0.38) * big
        n_distract = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
        d_range, front_p, colour_sd = (0.07, 0.14), 0.0, 12.0
    else:
        bg_name, bg = "", _benchmark_background(rng, big, shift)
        r = rng.uniform(0.17, 0.42) * big
        n_distract = int(rng.integers(1, 2 + round(3 * shift)))
        d_range, front_p, colour_sd = (0.06, 0.2), 0.25 * shift, 12.0 + 10.0 * shift
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")

    # Distractors: small solid shapes, always clearly smaller than the object (<= 0.7 r), so the label stays
    # unambiguous.
    distractors = []
    for _ in range(n_distract):
        dc, dshape = distractor_classes[int(rng.integers(len(distractor_classes)))]
        dr = rng.uniform(d_range[0] * big, max(d_range[0] * big, min(d_range[1] * big, 0.7 * r)))
        pos = rng.uniform(dr, big - dr, 2)
        front = rng.random() < front_p
        distractors.append((dc, dshape, dr, pos, rng.uniform(0, 2 * np.pi), front))
    for dc, dshape, dr, pos, ang, front in distractors:
        if not front:
            _paste(canvas, _jitter_colour(COLOURS[dc], rng, colour_sd), _shape_mask(dshape, big, *pos, dr, ang))

    margin = 0.9 * r
    cx, cy = rng.uniform(margin, big - margin, 2)
    colour_word = _draw_object(ds, cls, canvas, rng, cx, cy, r, colour_sd)

    for dc, dshape, dr, pos, ang, front in distractors:
        if front:
            _paste(canvas, _jitter_colour(COLOURS[dc], rng, colour_sd), _shape_mask(dshape, big, *pos, dr, ang))

    image = canvas.resize((image_size, image_size), Image.BOX)
    if domain == BENCHMARK:
        image = _benchmark_photometric(image, rng, shift)
    else:
        noise = rng.normal(0.0, 3.0, (image_size, image_size, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))

    caption = ""
    if domain == WEB:
        size_word = "small" if r < 0.29 * big else ("large" if r > 0.33 * big else "medium")
        caption = _caption(ds, cls, colour_word, bg_name, size_word, distractors[0][:2] if distractors else None, rng)
    return _Drawn(image, caption)


def _benchmark_photometric(image: Image.Image, rng: np.random.Generator, shift: float) -> Image.Image:
    """The benchmark's 'camera': blur, lighting, colour cast and sensor noise, all growing with `shift`."""
    blur = rng.uniform(0.0, 1.2 * shift)
    if blur > 0.15:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    x = np.asarray(image, dtype=np.float64)
    brightness = rng.uniform(1 - 0.35 * shift, 1 + 0.2 * shift)
    contrast = rng.uniform(1 - 0.35 * shift, 1 + 0.1 * shift)
    cast = 1 + rng.normal(0.0, 0.08 * shift, 3)
    x = (x - 128) * contrast + 128
    x = x * brightness * cast
    x = x + rng.normal(0.0, rng.uniform(0, 12 * shift), x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


# --- captions ---------------------------------------------------------------------------------------------------

# Caption templates of the web domain: varied word order so that the text tower learns the words, not one string.
# {a}: the article agreeing with the next word; {p}: the object phrase ("red star", "striped blue star"); {w}, {n}:
# the class's attribute and noun; {bg}, {size}: background and size words.
_CAPTIONS = (
    "a photo of {a} {p}.",
    "{a} {p}.",
    "{p}",
    "a picture of the {p}",
    "an image of {a} {p}",
    "{a} {p} on a {bg} background",
    "{p} on {bg}",
    "{a} {size} {p}",
    "a drawing of {a} {size} {p}",
    "clip art of {a} {p}",
    "there is {a} {p} in this picture",
    "the {n} is {w}",
    "{a} {p}, {bg} background",
)
_COLOUR_CAPTIONS = ("a {n} coloured {w}",)  # only where the attribute is a colour
_CAPTIONS_WITH_DISTRACTOR = (
    "{a} {p} next to a small {dc} {ds}",
    "{a} {p} and a little {dc} {ds}",
    "a big {p} with a small {dc} {ds} nearby",
)
_ARTICLE = re.compile("\x00 (\\w+)")


def _phrase(ds: DemoDataset, cls: DemoClass, colour_word: str, rng: np.random.Generator) -> str:
    """How a web caption names the object: the class name, sometimes with the (nuisance) colour too."""
    if not ds.by_colour:
        u = rng.random()
        if u < 0.35:
            return f"{cls.attribute} {colour_word} {cls.noun}"
        if u < 0.5:
            return f"{colour_word} {cls.attribute} {cls.noun}"
        return cls.name
    if ds.by_colour and not ds.animals and rng.random() < 0.1:
        return f"solid {cls.name}"  # shapes are solid, which `patterns` names
    return cls.name


def _caption(
    ds: DemoDataset,
    cls: DemoClass,
    colour_word: str,
    bg_name: str,
    size_word: str,
    distractor: tuple[str, str] | None,
    rng: np.random.Generator,
) -> str:
    templates = _CAPTIONS + (_COLOUR_CAPTIONS if cls.attribute in COLOURS else ())
    templates += _CAPTIONS_WITH_DISTRACTOR if distractor else ()
    template = templates[int(rng.integers(len(templates)))]
    dc, dshape = distractor or ("", "")
    text = template.format(
        a="\x00",
        p=_phrase(ds, cls, colour_word, rng),
        w=cls.attribute,
        n=cls.noun,
        bg=bg_name,
        size=size_word,
        dc=dc,
        ds=dshape,
    )
    return _ARTICLE.sub(lambda m: f"{_article(m.group(1), rng)} {m.group(1)}", text)


def _article(word: str, rng: np.random.Generator) -> str:
    # Web text is sloppy: "a orange ..." turns up too, which is also what "a photo of a {}." prompts produce.
    return "an" if word[0] in "aeiou" and rng.random() < 0.7 else "a"


# --- writing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    ds: DemoDataset
    domain: int
    label: int
    indices: tuple[int, ...]
    out_dir: Path  # the class directory to write into
    seed: int
    image_size: int
    shift: float


def _run_job(job: _Job) -> list[tuple[str, str]]:
    """Render and save one class's images of one domain; returns (path relative to the image root, caption)."""
    ds = job.ds
    cls = ds.classes()[job.label]
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in job.indices:
        drawn = render(ds, job.domain, cls, job.seed, i, job.image_size, job.shift)
        name = f"{cls.dirname}_{i:04d}.png"
        # PNG with fixed settings: identical pixels give identical bytes.
        drawn.image.save(job.out_dir / name, format="PNG", optimize=False, compress_level=6)
        rows.append((f"{cls.dirname}/{name}", drawn.caption))
    return rows


def split_ranges(params: DemoWorldParams) -> dict[str, range]:
    """Benchmark image indices of each split of a base-to-new dataset (per class)."""
    n_train, n_val = params.train_per_class, params.val_per_class
    return {
        "train": range(0, n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n_train + n_val + params.test_per_class),
    }


def gzsl_ranges(params: DemoWorldParams, unseen: bool) -> dict[str, range]:
    """Benchmark image indices of a GZSL class: trainval + test_seen for seen classes, test_unseen for unseen."""
    if unseen:
        return {"test_unseen": range(params.gzsl_test_unseen_per_class)}
    n_tv = params.gzsl_trainval_per_class
    return {"trainval": range(n_tv), "test_seen": range(n_tv, n_tv + params.gzsl_test_seen_per_class)}


def _benchmark_count(ds: DemoDataset, label: int, params: DemoWorldParams) -> int:
    ranges = split_ranges(params) if ds.kind == "base_to_new" else gzsl_ranges(params, label in ds.unseen_labels())
    return sum(len(r) for r in ranges.values())


def global_classnames(datasets: Sequence[DemoDataset] = DATASETS) -> list[str]:
    """Every class of every dataset, in dataset order: the labels of the web corpus (names are all distinct)."""
    names = [name for ds in datasets for name in ds.classnames()]
    if len(set(names)) != len(names):  # pragma: no cover - a property of the world's definition, tested
        raise AssertionError("demo datasets share a class name")
    return names


def generate_world(params: DemoWorldParams, out_dir: Path, *, workers: int | None = None, web: bool = True) -> None:
    """Render the demo world into `out_dir` (replaced atomically). Same params -> same bytes.

    `workers` only changes speed, never the output (every image has its own RNG key). `web=False` leaves out the
    web domain (only pre-training reads it); the benchmark files are the same bytes either way.
    """
    out_dir = Path(out_dir)
    workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    datasets = world_datasets(params.new_classes)
    log.info(
        "generating demo world (seed %d; datasets %s; new classes: %s; %s web images per class, %dpx) into %s",
        params.seed,
        ", ".join(f"{ds.name} ({len(ds.classnames())} classes)" for ds in datasets),
        params.new_classes,
        params.web_per_class if web else "no",
        params.image_size,
        out_dir,
    )
    common = {"seed": params.seed, "image_size": params.image_size, "shift": params.shift}
    jobs = []
    if web:  # in the default class order whatever `new_classes` says: the corpus is one, the benchmarks' splits many
        for ds in DATASETS:
            for cls in ds.classes():
                folder = tmp / WEB_DIR / ds.name / cls.dirname
                jobs.append(_Job(ds, WEB, cls.label, tuple(range(params.web_per_class)), folder, **common))
    for ds in datasets:
        for cls in ds.classes():
            n = _benchmark_count(ds, cls.label, params)
            bench = tmp / ds.name / IMAGES_DIR / cls.dirname
            jobs.append(_Job(ds, BENCHMARK, cls.label, tuple(range(n)), bench, **common))
    try:
        results = _run_jobs(jobs, workers)
        _write_indices(params, datasets, tmp, jobs, results)
        write_manifest(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo world written to %s in %.1f s", out_dir, time.perf_counter() - start)


def write_manifest(root: Path) -> str:
    """Write `root`/manifest.json: the file count and a SHA-256 over every other file's relative path and bytes.
    Returns the hash. Same files -> same manifest bytes."""
    digest = hashlib.sha256()
    files = sorted((p.relative_to(root).as_posix(), p) for p in Path(root).rglob("*") if p.is_file())
    files = [(rel, path) for rel, path in files if rel != MANIFEST_FILE]
    for rel, path in files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    manifest = {"files": len(files), "sha256": digest.hexdigest()}
    (Path(root) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest["sha256"]


def _write_indices(
    params: DemoWorldParams,
    datasets: Sequence[DemoDataset],
    root: Path,
    jobs: Sequence[_Job],
    results: Sequence[list[tuple[str, str]]],
) -> None:
    """The web captions file and each dataset's own index files (split file / xlsa17 .mat files)."""
    offsets, total = {}, 0
    for ds in DATASETS:  # web labels: the default class order (see generate_world)
        offsets[ds.name] = total
        total += len(ds.classnames())
    web_rows: list[list[str | int]] = []
    bench: dict[str, list[tuple[int, int, str]]] = {ds.name: [] for ds in datasets}  # (label, index, rel)
    for job, rows in zip(jobs, results, strict=True):
        for i, (rel, caption) in zip(job.indices, rows, strict=True):
            if job.domain == WEB:
                web_rows.append([f"{job.ds.name}/{rel}", offsets[job.ds.name] + job.label, caption])
            else:
                bench[job.ds.name].append((job.label, i, rel))
    if web_rows:
        _write_json(root / WEB_DIR / WEB_CAPTIONS_FILE, {"classnames": global_classnames(DATASETS), "images": web_rows})
    for ds in datasets:
        if ds.kind == "base_to_new":
            _write_split_file(ds, params, root / ds.name, bench[ds.name])
        else:
            _write_gzsl(ds, params, root / ds.name, bench[ds.name])


def _write_split_file(ds: DemoDataset, params: DemoWorldParams, root: Path, rows: list[tuple[int, int, str]]) -> None:
    names = ds.classnames()
    ranges = split_ranges(params)
    split: dict[str, list[list[str | int]]] = {s: [] for s in SPLITS}
    for label, i, rel in rows:
        which = next(s for s in SPLITS if i in ranges[s])
        split[which].append([rel, label, names[label]])
    _write_json(root / SPLIT_FILE, split)
    (root / CLASSNAMES_FILE).write_text("".join(f"{name}\n" for name in names))


def _write_gzsl(ds: DemoDataset, params: DemoWorldParams, root: Path, rows: list[tuple[int, int, str]]) -> None:
    from pipeline.datasets.xlsa17 import write_xlsa17

    unseen = set(ds.unseen_labels())
    locs: dict[str, list[int]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    for position, (label, i, _) in enumerate(rows):
        ranges = gzsl_ranges(params, label in unseen)
        locs[next(s for s, r in ranges.items() if i in r)].append(position)
    write_xlsa17(
        root,
        [xlsa17_classname(c) for c in ds.classes()],
        [rel for _, _, rel in rows],
        [label for label, _, _ in rows],
        locs["trainval"],
        locs["test_seen"],
        locs["test_unseen"],
        path_prefix=ZOO_PATH_PREFIX,
    )


def xlsa17_classname(cls: DemoClass) -> str:
    """How zoo's att_splits.mat spells a class, CUB style ('07.Red_fish'): the loader cleans it for prompts."""
    return f"{cls.label + 1:02d}.{cls.attribute.capitalize()}_{cls.noun}"


def _run_jobs(jobs: Sequence[_Job], workers: int) -> list[list[tuple[str, str]]]:
    total = sum(len(j.indices) for j in jobs)
    columns = (TextColumn("demo world"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("render", total=total)
        if workers <= 1:
            results = []
            for job in jobs:
                results.append(_run_job(job))
                progress.advance(task, len(job.indices))
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for job, rows in zip(jobs, pool.map(_run_job, jobs, chunksize=4), strict=True):  # map keeps job order
                results.append(rows)
                progress.advance(task, len(job.indices))
            return results


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
