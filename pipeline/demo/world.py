"""The demo world: a generated, fully offline stand-in for a CLIP pre-training corpus plus a CoOp benchmark.

Classes are colour x shape ("red circle", "blue star", ...): 8 colours x 8 shapes = 64 classes whose names share
words compositionally. The label order is a fixed permutation chosen so that the base half (first ceil(n/2) labels)
and the new half each contain every colour and every shape exactly four times, so new classes are unseen
*combinations* of words the base classes already use.

Two domains are rendered from the same classes:
- "web": captioned images on plain neutral backgrounds with little clutter. Only the demo backbone's
  contrastive pre-training sees these (`web/` + `web_captions.json`).
- "benchmark": a shifted domain (textured backgrounds, lighting and colour casts, blur, sensor noise, more and
  larger distractors, a wider size range). The base-to-new protocol runs on it, in CoOp's split-file layout
  (`images/` + `split_demo.json`).

Every image is drawn from its own RNG keyed by (seed, domain, label, index), so the output is byte-identical
across runs and independent of how the work is spread over processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.atomic_files import replace_dir
from pipeline.params.demo import DemoWorldParams

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
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "hexagon")

# Neutral web backgrounds, named so that captions can mention them without reusing a colour word.
WEB_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light grey": (200, 200, 200),
    "grey": (140, 140, 140),
    "dark grey": (70, 70, 70),
    "black": (18, 18, 18),
    "beige": (225, 210, 180),
}

# The class order is part of the world's definition, not of a run: it never depends on params.seed.
CLASS_ORDER_SEED = 20230714
WEB_MOTTLED_FRACTION = 0.3  # share of web images whose background is softly textured
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-downsampled: cheap anti-aliasing

WEB, BENCHMARK = 0, 1  # domain ids, part of every image's RNG key
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split_demo.json"
WEB_CAPTIONS_FILE = "web_captions.json"
CLASSNAMES_FILE = "classnames.txt"

# Caption templates of the web domain: varied word order so that the text tower learns the words, not one string.
# {a} is the article agreeing with the next word.
_CAPTIONS = (
    "a photo of {a} {c} {s}.",
    "{a} {c} {s}.",
    "{c} {s}",
    "a picture of the {c} {s}",
    "an image of {a} {c} {s}",
    "{a} {c} {s} on a {bg} background",
    "{c} {s} on {bg}",
    "{a} {size} {c} {s}",
    "a drawing of {a} {size} {c} {s}",
    "clip art of {a} {c} {s}",
    "there is {a} {c} {s} in this picture",
    "the {s} is {c}",
    "a {s} coloured {c}",
    "a {c} {s}, {bg} background",
)
_CAPTIONS_WITH_DISTRACTOR = (
    "{a} {c} {s} next to a small {dc} {ds}",
    "{a} {c} {s} and a little {dc} {ds}",
    "a big {c} {s} with a small {dc} {ds} nearby",
)


@dataclass(frozen=True)
class DemoClass:
    label: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def dirname(self) -> str:
        return f"{self.colour}_{self.shape}"


def demo_classes() -> list[DemoClass]:
    """The 64 classes in label order (fixed). Base and new halves each hold every colour and shape 4 times."""
    rng = np.random.default_rng(CLASS_ORDER_SEED)
    colour_rank = rng.permutation(len(COLOURS))
    shape_rank = rng.permutation(len(SHAPES))
    # A checkerboard over (permuted) colour x shape: each row and column is half base, half new.
    cells = [(ci, si) for ci in range(len(COLOURS)) for si in range(len(SHAPES))]
    base = [c for c in cells if (colour_rank[c[0]] + shape_rank[c[1]]) % 2 == 0]
    new = [c for c in cells if (colour_rank[c[0]] + shape_rank[c[1]]) % 2 == 1]
    ordered = [base[i] for i in rng.permutation(len(base))] + [new[i] for i in rng.permutation(len(new))]
    colours = list(COLOURS)
    return [DemoClass(label, colours[ci], SHAPES[si]) for label, (ci, si) in enumerate(ordered)]


def classnames() -> list[str]:
    return [c.name for c in demo_classes()]


# --- drawing -------------------------------------------------------------------------------------------------


def _article(word: str, rng: np.random.Generator) -> str:
    # Web text is sloppy: "a orange ..." turns up too, which is also what "a photo of a {}." prompts produce.
    return "an" if word[0] in "aeiou" and rng.random() < 0.7 else "a"


def _polygon(shape: str) -> np.ndarray | None:
    """Unit-radius outline [K, 2] of a polygonal shape (None for shapes drawn from ellipses)."""
    if shape == "square":
        t = np.deg2rad(45 + 90 * np.arange(4))
        return 0.95 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "triangle":
        t = np.deg2rad(-90 + 120 * np.arange(3))
        return 1.1 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "hexagon":
        t = np.deg2rad(60 * np.arange(6))
        return np.stack([np.cos(t), np.sin(t)], 1)
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
    return None


_POLYGONS = {s: _polygon(s) for s in SHAPES}


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """An 'L' mask (size x size) of `shape` centred at (cx, cy) with radius r, rotated by `angle` radians."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    poly = _POLYGONS[shape]
    if poly is not None:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = poly @ rot.T * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    elif shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        # The bite is a slightly smaller disc offset along the rotation direction.
        ox, oy = cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle)
        rr = 0.85 * r
        draw.ellipse((ox - rr, oy - rr, ox + rr, oy + rr), fill=0)
    else:  # pragma: no cover - SHAPES and the drawing code are one list
        raise ValueError(f"no drawing for shape {shape!r}")
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


def _paste(canvas: Image.Image, fill: np.ndarray, mask: Image.Image) -> None:
    canvas.paste(tuple(int(v) for v in fill), mask=mask)


@dataclass(frozen=True)
class _Drawn:
    image: Image.Image
    caption: str


def render(domain: int, cls: DemoClass, seed: int, index: int, image_size: int, shift: float) -> _Drawn:
    """One image of `cls` in `domain`, fully determined by (seed, domain, label, index)."""
    rng = np.random.default_rng([seed, domain, cls.label, index])
    big = image_size * SUPERSAMPLE
    classes_all = [(c, s) for c in COLOURS for s in SHAPES]

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

    # Distractors: always clearly smaller than the object (<= 0.7 r), so the label stays unambiguous.
    distractors = []
    for _ in range(n_distract):
        dc, ds = classes_all[int(rng.integers(len(classes_all)))]
        dr = rng.uniform(d_range[0] * big, max(d_range[0] * big, min(d_range[1] * big, 0.7 * r)))
        pos = rng.uniform(dr, big - dr, 2)
        front = rng.random() < front_p
        distractors.append((dc, ds, dr, pos, rng.uniform(0, 2 * np.pi), front))
    for dc, ds, dr, pos, ang, front in distractors:
        if not front:
            _paste(canvas, _jitter_colour(COLOURS[dc], rng, colour_sd), _shape_mask(ds, big, *pos, dr, ang))

    margin = 0.9 * r
    cx, cy = rng.uniform(margin, big - margin, 2)
    fill = _jitter_colour(COLOURS[cls.colour], rng, colour_sd)
    _paste(canvas, fill, _shape_mask(cls.shape, big, cx, cy, r, rng.uniform(0, 2 * np.pi)))

    for dc, ds, dr, pos, ang, front in distractors:
        if front:
            _paste(canvas, _jitter_colour(COLOURS[dc], rng, colour_sd), _shape_mask(ds, big, *pos, dr, ang))

    image = canvas.resize((image_size, image_size), Image.BOX)
    if domain == BENCHMARK:
        image = _benchmark_photometric(image, rng, shift)
    else:
        noise = rng.normal(0.0, 3.0, (image_size, image_size, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))

    caption = ""
    if domain == WEB:
        size_word = "small" if r < 0.29 * big else ("large" if r > 0.33 * big else "medium")
        templates = _CAPTIONS + (_CAPTIONS_WITH_DISTRACTOR if distractors else ())
        template = templates[int(rng.integers(len(templates)))]
        dc, ds = (distractors[0][0], distractors[0][1]) if distractors else ("", "")
        first = size_word if "{a} {size}" in template else cls.colour
        caption = template.format(
            a=_article(first, rng), c=cls.colour, s=cls.shape, bg=bg_name, size=size_word, dc=dc, ds=ds
        )
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


# --- writing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    domain: int
    cls: DemoClass
    indices: tuple[int, ...]
    out_dir: Path  # the class directory to write into
    seed: int
    image_size: int
    shift: float


def _run_job(job: _Job) -> list[tuple[str, str]]:
    """Render and save one class's images of one domain; returns (relative path, caption) per image."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in job.indices:
        drawn = render(job.domain, job.cls, job.seed, i, job.image_size, job.shift)
        name = f"{job.cls.dirname}_{i:04d}.png"
        # PNG with fixed settings: identical pixels give identical bytes.
        drawn.image.save(job.out_dir / name, format="PNG", optimize=False, compress_level=6)
        rows.append((f"{job.cls.dirname}/{name}", drawn.caption))
    return rows


def _split_ranges(params: DemoWorldParams) -> dict[str, range]:
    n_train, n_val = params.train_per_class, params.val_per_class
    return {
        "train": range(0, n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n_train + n_val + params.test_per_class),
    }


def generate_world(params: DemoWorldParams, out_dir: Path, *, workers: int | None = None) -> None:
    """Render the demo world into `out_dir` (replaced atomically). Same params -> same bytes.

    `workers` only changes speed, never the output (every image has its own RNG key).
    """
    out_dir = Path(out_dir)
    workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
    classes = demo_classes()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    n_bench = params.train_per_class + params.val_per_class + params.test_per_class
    log.info(
        "generating demo world (seed %d, %d classes, %d web + %d benchmark images per class, %dpx) into %s",
        params.seed,
        len(classes),
        params.web_per_class,
        n_bench,
        params.image_size,
        out_dir,
    )
    common = {"seed": params.seed, "image_size": params.image_size, "shift": params.shift}
    jobs = [_Job(WEB, c, tuple(range(params.web_per_class)), tmp / "web" / c.dirname, **common) for c in classes]
    jobs += [_Job(BENCHMARK, c, tuple(range(n_bench)), tmp / "images" / c.dirname, **common) for c in classes]
    try:
        results = _run_jobs(jobs, workers)
        web_rows: list[list[str | int]] = []
        split: dict[str, list[list[str | int]]] = {s: [] for s in SPLITS}
        ranges = _split_ranges(params)
        for job, rows in zip(jobs, results, strict=True):
            for i, (rel, caption) in zip(job.indices, rows, strict=True):
                if job.domain == WEB:
                    web_rows.append([rel, job.cls.label, caption])
                else:
                    which = next(s for s in SPLITS if i in ranges[s])
                    split[which].append([rel, job.cls.label, job.cls.name])
        _write_json(tmp / SPLIT_FILE, split)
        _write_json(tmp / WEB_CAPTIONS_FILE, web_rows)
        (tmp / CLASSNAMES_FILE).write_text("".join(f"{c.name}\n" for c in classes))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo world written to %s in %.1f s", out_dir, time.perf_counter() - start)


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
            for job, rows in zip(jobs, pool.map(_run_job, jobs), strict=True):  # map keeps job order
                results.append(rows)
                progress.advance(task, len(job.indices))
            return results


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
