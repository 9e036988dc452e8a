"""Drawing the demo world's images. Two domains are rendered from the same classes:

- "web": captioned images on plain neutral backgrounds with little clutter. Only the demo backbone's contrastive
  pre-training sees these, for all classes of all datasets (a real CLIP's corpus also covers the benchmarks' new and
  unseen classes).
- "benchmark": a shifted domain (textured backgrounds, lighting and colour casts, blur, sensor noise, more and larger
  distractors, a wider size range). The protocols run on it.

Every image is drawn from its own RNG keyed by (seed, dataset, domain, label, index), so an image does not depend on
which others are drawn, in which order or in which process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.demo.captions import caption
from pipeline.demo.catalogue import ANIMALS, COLOURS, SHAPES, DemoClass, DemoDataset

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
class Drawn:
    """An image and its caption (web domain; "" in the benchmark domain)."""

    image: Image.Image
    caption: str


def render(ds: DemoDataset, domain: int, cls: DemoClass, seed: int, index: int, image_size: int, shift: float) -> Drawn:
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

    text = ""
    if domain == WEB:
        size_word = "small" if r < 0.29 * big else ("large" if r > 0.33 * big else "medium")
        text = caption(ds, cls, colour_word, bg_name, size_word, distractors[0][:2] if distractors else None, rng)
    return Drawn(image, text)


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
