"""The first thing to run on a GPU machine: does the project's own code run correctly, and how fast, on this device?

Open_clip's ViT-B-16 with RANDOM weights (the real model's shapes and FLOPs, no download) is saved as a local
checkpoint file and loaded through `load_backbone`, as every stage loads it. A generated image folder (random
JPEGs of varying sizes in a few class folders: root/{train,val,test}/<class>/*.jpg) is the dataset, read through
the project's own plans (`eval_plan`, `fewshot_plan`), exactly as `ship extract-eval` / `ship extract-train` read a
dataset. On that, in one run:

  features        `extract_features` on the device (AMP + channels-last + pinned memory on CUDA) against the same
                  code in float32 on the CPU: every feature's cosine >= 0.999
  throughput      images/s and peak GPU memory of `extract_features` (decoding, DataLoader, store writes: the whole
                  stage) vs a bare `encode_image` forward (same batch, same precision) on preprocessed tensors
  generator       one SHIP generator epoch (`train_generator`) on the features just cached, saved and loaded back
                  onto the text tower as the finetune stage loads it
  coop, coop_ship one CoOp and one CoOp+SHIP epoch through the finetune stage's own `run_methods` (CoOp+SHIP
                  decoding fresh latents through that generator at every step, as the stage does)
  devices         every tensor the backbone, the generator and the fitted adapters hold, and what they produce,
                  is on the device (exports of fits are on the CPU by design); any other placement is a failure
  2 ranks         with 2+ GPUs: the eval store extracted by 2 nccl ranks is identical, array for array, to the
                  1-rank store (`spawn_ranks`, as `ship extract-eval --nproc 2`)

It prints one table (check, figure, pass/FAIL/info/skip) and exits 1 if any check failed. `info` rows are
measurements without a threshold.

    make gpu-check                                  # cuda, ViT-B-16, 512 images, batch 256 (estimated 1-3 min
                                                    # on one H100; not yet run on a GPU)
    make gpu-check ARGS="--device cpu --tiny"       # everything on the CPU, a tiny model: seconds (CI runs it)
    .venv/bin/python benchmarks/gpu_check.py --help
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

VIT = "ViT-B-16"
TINY = "gpu-check-tiny-vit"
# A small ViT with CLIP's text tower shape (the real tokenizer, a 32-token context): seconds on a CPU.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}
CLASSNAMES = [
    "red circle",
    "blue square",
    "green star",
    "yellow moon",
    "black cross",
    "white heart",
    "purple ring",
    "orange leaf",
]
MIN_COSINE = 0.999
SEED = 1

PASS, FAIL, INFO, SKIP = "pass", "FAIL", "info", "skip"


class Device(StrEnum):
    cuda = "cuda"
    cpu = "cpu"


@dataclass
class Row:
    check: str
    figure: str
    status: str


@dataclass(frozen=True)
class Setup:
    """What one run uses, from the options."""

    device: str  # "cuda" or "cpu"
    model: str
    images: int  # test images (the eval store; the throughput figures)
    batch_size: int
    reference_images: int  # test images also encoded in float32 on the CPU
    classes: int
    shots: int
    views: int
    workers: int  # DataLoader workers per GPU rank (the pipeline uses none on a CPU)
    image_sizes: tuple[int, int]  # smallest and largest side of the generated JPEGs
    generator_hidden: int | None  # None: the reference widths (preset)
    model_configs: Path | None = None  # a folder of open_clip model configs to register (the tiny model's)

    @property
    def block_size(self) -> int:
        # At least two blocks, so that two ranks share the store.
        return min(256, max(1, math.ceil(self.images / 2)))


class DeviceMismatch(AssertionError):
    pass


def write_tiny_config(folder: Path) -> Path:
    """The tiny model's open_clip config in `folder`, registered with open_clip; returns `folder`."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return folder


# --- the generated dataset -----------------------------------------------------------------------------------------


def _jpeg(path: Path, rng: Any, width: int, height: int) -> None:
    """A JPEG with photo-like statistics (smooth colour fields, a few shapes, mild noise), not white noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    small = rng.integers(0, 255, size=(4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(4, max(5, min(width, height) // 3)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-8, 9, size=(height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_image_folder(root: Path, setup: Setup) -> None:
    """root/{train,val,test}/<class>/*.jpg: `images` test images over the classes; per class shots + 2 train images
    and min(shots, 4) val images (CoOp's val draw); each of a random size between the two image sizes."""
    import numpy as np

    rng = np.random.default_rng(0)
    low, high = setup.image_sizes
    names = CLASSNAMES[: setup.classes]
    counts = {"train": [setup.shots + 2] * len(names), "val": [min(setup.shots, 4)] * len(names)}
    counts["test"] = [setup.images // len(names) + (c < setup.images % len(names)) for c in range(len(names))]
    for split, per_class in counts.items():
        for name, n in zip(names, per_class, strict=True):
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(low, high + 1, size=2))
                _jpeg(folder / f"{i:04d}.jpg", rng, w, h)


def params_for(setup: Setup, root: Path, checkpoint: Path) -> dict[str, Any]:
    """A params file for the generated dataset: the repository's defaults except for sizes, 1 epoch per fit."""
    generator: dict[str, Any] = {"epochs": 1}
    if setup.generator_hidden is not None:
        generator.update(encoder_hidden=setup.generator_hidden, bias_hidden=setup.generator_hidden)
    return {
        "seeds": [SEED],
        "backbone": {"model": setup.model, "pretrained": str(checkpoint), "device": setup.device},
        "datasets": {"check": {"kind": "imagefolder", "root": str(root)}},
        "base_to_new": {"datasets": ["check"]},
        "fewshot": {"shots": setup.shots},
        "extract": {
            "views": setup.views,
            "batch_size": setup.batch_size,
            "workers": setup.workers,
            "block_size": setup.block_size,
        },
        "generator": generator,
        "finetune": {
            "methods": ["coop", "coop_ship"],
            "coop": {"epochs": 1},
            "coop_ship": {"epochs": 1},
        },
    }


# --- where tensors live ------------------------------------------------------------------------------------------


def held_tensors(obj: Any, path: str, seen: set[int] | None = None) -> Iterator[tuple[str, Any]]:
    """(path, tensor) for every tensor `obj` holds: module parameters and buffers, tensor attributes of modules and
    of the project's own objects, and tensors inside their dicts, lists, tuples and dataclasses."""
    import torch
    from torch import nn

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, nn.Module):
        for name, t in (*obj.named_parameters(), *obj.named_buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                yield f"{path}.{name}", t
        for prefix, module in obj.named_modules(prefix=path):
            for key, value in vars(module).items():
                if key not in ("_parameters", "_buffers", "_modules"):
                    yield from held_tensors(value, f"{prefix}.{key}", seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from held_tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from held_tensors(value, f"{path}[{i}]", seen)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from held_tensors(getattr(obj, f.name), f"{path}.{f.name}", seen)
    elif type(obj).__module__.startswith("pipeline.") and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            yield from held_tensors(value, f"{path}.{key}", seen)


def check_devices(things: dict[str, Any], device: Any) -> int:
    """Raise DeviceMismatch naming the tensors of `things` (name -> object) that are not on `device`; else return
    how many tensors were checked."""
    count, wrong, seen = 0, [], set()
    for name, obj in things.items():
        for path, t in held_tensors(obj, name, seen):
            count += 1
            if t.device != device:
                wrong.append(f"{path} ({t.device})")
    if wrong:
        listing = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise DeviceMismatch(f"{len(wrong)} of {count} tensors are not on {device}: {listing}")
    return count


# --- timing --------------------------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: Any) -> str:
    import torch

    if device.type != "cuda":
        return "no GPU memory (cpu)"
    return f"peak {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def bare_forward(backbone: Any, batch: Any, repeats: int) -> float:
    """Images/s of `encode_image` alone on a preprocessed batch already on the device, in the extraction's precision
    and memory format (AMP fp16 and channels-last on CUDA, float32 on the CPU); one warm-up pass first."""
    import torch

    device = backbone.device
    cuda = device.type == "cuda"
    x = batch.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        backbone.model.encode_image(x)
        _sync(device)
        _reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            backbone.model.encode_image(x)
        _sync(device)
    return repeats * len(x) / (time.perf_counter() - t0)


def _cosine(a: Any, b: Any) -> Any:
    import numpy as np

    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


# --- the 2-rank extraction -----------------------------------------------------------------------------------------


def _rank_extract(
    backbone: dict[str, Any], extract: dict[str, Any], plan: Any, out: str, model_configs: str | None
) -> None:
    """One rank of a multi-rank extraction (runs in a spawned process: `spawn_ranks` pickles it by name)."""
    import open_clip

    from pipeline.backbone import load_backbone
    from pipeline.extract import extract_features
    from pipeline.params import BackboneParams, ExtractParams
    from pipeline.ranks import rank_context

    if model_configs is not None:  # a spawned process knows only open_clip's and the project's own configs
        open_clip.add_model_config(model_configs)
    with rank_context(backbone["device"]) as (ranks, device):
        loaded = load_backbone(BackboneParams(**backbone), device)
        extract_features(plan, loaded, ExtractParams(**extract), Path(out), progress=False, ranks=ranks)


def extract_with_ranks(
    nproc: int, backbone: Any, extract: Any, plan: Any, out: Path, model_configs: Path | None
) -> None:
    """`plan` into the store `out` by `nproc` ranks of one job on this machine (nccl on GPUs, gloo on CPUs), as
    `ship extract-* --nproc` runs them; `backbone`, `extract`: BackboneParams, ExtractParams."""
    from pipeline.ranks import spawn_ranks

    configs = None if model_configs is None else str(model_configs)
    spawn_ranks(nproc, _rank_extract, backbone.model_dump(), extract.model_dump(), plan, str(out), configs)


def store_arrays(path: Path) -> dict[str, Any]:
    from pipeline.feature_store import FeatureStore

    store = FeatureStore.open(path)
    names = [f"classifiers/{n}" for n in store.classifier_names]
    names += [f"{s}/{f}" for s in store.splits for f in ("features", "norms", "labels", "valid")]
    return {"meta": store.meta, **{name: store.array(name) for name in names}}


def compare_stores(one: Path, two: Path) -> str | None:
    """None if the stores hold the same arrays (bit for bit) and meta; else what differs."""
    import numpy as np

    a, b = store_arrays(one), store_arrays(two)
    if a.keys() != b.keys():
        return f"arrays differ: {sorted(a.keys() ^ b.keys())}"
    for key in a:
        if key == "meta":
            if a[key] != b[key]:
                return "meta differs"
        elif a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
            if a[key].shape != b[key].shape:
                return f"{key}: shape {a[key].shape} vs {b[key].shape}"
            diff = np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)).max()
            return f"{key} differs (max |diff| {diff:.3g})"
    return None


# --- the checks ----------------------------------------------------------------------------------------------------


class Checks:
    """Runs each check, catching its failure into a FAIL row, so one run reports everything it can."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def run(self, name: str, fn: Callable[[], tuple[str, str]], needs: list[str] | None = None) -> bool:
        missing = [n for n in needs or [] if not self.ok(n)]
        if missing:
            self.rows.append(Row(name, f"not run: needs {', '.join(missing)}", FAIL))
            return False
        try:
            figure, status = fn()
        except Exception as err:  # a check that raises is a failure of that check, reported in its row
            self.failed(name, err)
            return False
        self.rows.append(Row(name, figure, status))
        return status != FAIL

    def failed(self, name: str, err: BaseException) -> None:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        self.rows.append(Row(name, f"{type(err).__name__}: {message}"[:300], FAIL))

    def ok(self, name: str) -> bool:
        return any(r.check == name and r.status != FAIL for r in self.rows)


SETUP = "set up: image folder, checkpoint, backbone"
EXTRACT = "extract train + eval stores (extract_features)"
COSINE = "features match float32 on the CPU (cos >= 0.999)"
THROUGHPUT = "extraction throughput vs bare encode_image"
BARE = "bare encode_image forward"
BACKBONE = "backbone and text tower on the device"
GENERATOR = "SHIP generator: 1 epoch (train_generator), save + load"
COOP = "CoOp: 1 epoch (run_methods)"
COOP_SHIP = "CoOp+SHIP: 1 epoch, fresh synthetic (run_methods)"
RANKS = "2-rank nccl extraction == 1-rank store"
ROWS = (SETUP, EXTRACT, COSINE, BARE, THROUGHPUT, BACKBONE, GENERATOR, COOP, COOP_SHIP, RANKS)


def run_checks(setup: Setup, tmp: Path) -> list[Row]:
    import numpy as np
    import open_clip
    import torch

    from pipeline import finetune as finetune_module
    from pipeline.backbone import load_backbone
    from pipeline.extract import extract_features, load_rgb
    from pipeline.extraction_plans import ExtractionPlan, SplitPlan, eval_plan, fewshot_plan
    from pipeline.feature_store import FeatureStore
    from pipeline.finetune import run_methods
    from pipeline.generator import ShipGenerator
    from pipeline.generator_training import train_generator
    from pipeline.params import BackboneParams, parse_params
    from pipeline.synthesis import FreshSource
    from pipeline.tasks import base_to_new_task

    checks = Checks()
    try:  # everything below needs these; a failure here is the table's one row
        root = tmp / "images"
        write_image_folder(root, setup)
        torch.manual_seed(0)
        checkpoint = tmp / f"{setup.model}-random.pt"
        logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: random is the point
        try:
            torch.save({"state_dict": open_clip.create_model(setup.model).state_dict()}, checkpoint)
        finally:
            logging.disable(logging.NOTSET)
        params = parse_params(params_for(setup, root, checkpoint), "gpu check params")
        p = params.for_dataset("check")
        backbone = load_backbone(params.backbone)
        device = backbone.device
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        plans = {"eval": eval_plan(params, "check"), "train": fewshot_plan(params, "check", SEED, "base")}
        tower = backbone.text_tower()
    except Exception as err:
        checks.failed(SETUP, err)
        return checks.rows
    jpegs = sum(len(s.records) for plan in plans.values() for s in plan.splits)
    checks.run(
        SETUP, lambda: (f"{jpegs} JPEGs drawn for the stores, random checkpoint, load_backbone on {device}", PASS)
    )
    stores = {name: tmp / f"{name}.zarr" for name in plans}
    timing: dict[str, float] = {}

    def extract() -> tuple[str, str]:
        # The train store first: it also warms up the device (kernels, channels-last weights) for the timed eval run.
        extract_features(plans["train"], backbone, p.extract, stores["train"], progress=False)
        _reset_peak(device)
        t0 = time.perf_counter()
        extract_features(plans["eval"], backbone, p.extract, stores["eval"], progress=False)
        _sync(device)
        timing["extract"] = time.perf_counter() - t0
        timing["extract_peak"] = _peak(device)
        train = plans["train"].splits[0]
        return (
            f"train {len(train.records)} images x {1 + train.views} views, eval {setup.images} images, "
            f"{'AMP fp16' if device.type == 'cuda' else 'float32'} on {device}",
            PASS,
        )

    def cosine() -> tuple[str, str]:
        records = plans["eval"].splits[0].records[: setup.reference_images]
        cpu = (
            backbone
            if device.type == "cpu"
            else load_backbone(BackboneParams(**{**params.backbone.model_dump(), "device": "cpu"}))
        )
        plan = ExtractionPlan(splits=[SplitPlan("test", records, 0)], classnames=plans["eval"].classnames, seed=SEED)
        extract_features(plan, cpu, p.extract, tmp / "cpu-reference.zarr", progress=False)
        ref = FeatureStore.open(tmp / "cpu-reference.zarr").array("test/features").astype(np.float32)
        got = FeatureStore.open(stores["eval"]).array("test/features")[: len(ref)].astype(np.float32)
        cos = _cosine(ref, got)
        worst = int(cos.argmin())
        # Random weights map every image close to one direction (distinct images' features have a cosine near 1
        # too), so the same comparison after removing the reference's mean feature is shown as well: there the
        # images differ, and a precision error shows against that difference.
        spread = float((ref @ ref.T)[~np.eye(len(ref), dtype=bool)].mean()) if len(ref) > 1 else float("nan")
        centred = _cosine(ref - ref.mean(0), got - ref.mean(0)) if len(ref) > 1 else cos
        precision = "AMP fp16" if device.type == "cuda" else "float32"
        figure = (
            f"{precision} on {device} vs float32 on cpu, {len(ref)} images: min {cos.min():.5f} (image {worst}), "
            f"mean {cos.mean():.5f}; distinct images' mean cos {spread:.3f}; mean-centred: min {centred.min():.4f}"
        )
        return figure, PASS if bool((cos >= MIN_COSINE).all()) else FAIL

    def bare() -> tuple[str, str]:
        records = plans["eval"].splits[0].records
        images = [backbone.preprocess(load_rgb(r.path)) for r in records[: setup.batch_size]]
        batch = torch.stack(images * math.ceil(setup.batch_size / len(images)))[: setup.batch_size]
        repeats = max(10 if device.type == "cuda" else 3, math.ceil(setup.images / setup.batch_size))
        timing["bare"] = bare_forward(backbone, batch, repeats)
        return f"{_rate(timing['bare'])} images/s at batch {setup.batch_size}, {_peak(device)}", INFO

    def throughput() -> tuple[str, str]:
        rate = setup.images / timing["extract"]
        workers = setup.workers if device.type == "cuda" else 0
        return (
            f"{_rate(rate)} images/s = {rate / timing['bare']:.0%} of bare (JPEG decode by {workers} DataLoader "
            f"workers, store writes, start-up included), {timing['extract_peak']}",
            INFO,
        )

    def on_device() -> tuple[str, str]:
        n = check_devices({"backbone": backbone.model, "tower": tower}, device)
        return f"{n} tensors on {device}", PASS

    state: dict[str, Any] = {}

    def generator() -> tuple[str, str]:
        store = FeatureStore.open(stores["train"], backbone.identity(), kind="train")
        outcome = train_generator(
            store.split("train"),
            store.split("val"),
            store.classnames,
            tower,
            p.generator,
            device,
            seed=SEED,
            show_progress=False,
        )
        path = tmp / "generator.pt"
        outcome.model.save(path, backbone=backbone.key)
        loaded = ShipGenerator.load(path, tower, expect_backbone=backbone.key)
        z = torch.randn(4, loaded.latent_dim, device=device)
        decoded = loaded.decode(z, torch.zeros(4, dtype=torch.long, device=device))
        n = check_devices({"trained": outcome.model, "loaded": loaded, "decoded": decoded}, device)
        row = outcome.history[-1]
        if not all(math.isfinite(row[k]) for k in ("train_loss", "val_loss")):
            raise FloatingPointError(f"losses {row}")
        state["generator"] = loaded
        return (
            f"train loss {row['train_loss']:.2f}, val loss {row['val_loss']:.2f}; {n} tensors on {device}",
            PASS,
        )

    def fit(method: str) -> Callable[[], tuple[str, str]]:
        """One method through the finetune stage's `run_methods`, then where its adapter's tensors are."""

        def check() -> tuple[str, str]:
            eval_store = FeatureStore.open(stores["eval"], backbone.identity(), kind="eval")
            train_store = FeatureStore.open(stores["train"], backbone.identity(), kind="train")
            task = base_to_new_task(eval_store, train_store)
            sources: list[FreshSource] = []

            def synthetic_for(name: str) -> FreshSource:  # CoOp+SHIP's fresh latents, as the finetune stage does
                ship: ShipGenerator = state["generator"]
                ship.set_classnames(task.classnames)  # decoded labels are then task class indices
                sources.append(FreshSource(ship, task.label_only))
                return sources[-1]

            built: list[Any] = []  # the adapter run_methods builds, kept to look at what it holds once fitted
            build = finetune_module.build_adapter

            def keep(name: str, fparams: Any) -> Any:
                built.append(build(name, fparams))
                return built[-1]

            finetune_module.build_adapter = keep
            try:
                [result] = run_methods(
                    task, tower, p.finetune, [method], SEED, synthetic_for, workers=1, show_progress=False
                )
            finally:
                finetune_module.build_adapter = build
            [adapter] = built
            logits = adapter.logits(task.evals[0].test.features[:8])
            things: dict[str, Any] = {method: adapter, "logits": logits, "tower": tower}
            if sources:
                things["synthetic"] = sources[0].draw(8, torch.Generator().manual_seed(0))
            n = check_devices(things, device)
            m = check_devices({"export": result.export}, torch.device("cpu"))  # fits are saved from the CPU
            scores = ", ".join(f"{k} {v:.1f}" for k, v in result.scores.items())
            return f"{scores}; {n} tensors on {device}; the export's {m} on cpu", PASS

        return check

    def ranks() -> tuple[str, str]:
        if device.type != "cuda":
            return "skipped: --device cpu (tests/test_gpu_check.py runs this path on 2 CPU ranks)", SKIP
        if torch.cuda.device_count() < 2:
            return f"skipped: {torch.cuda.device_count()} GPU visible, needs 2+", SKIP
        out = tmp / "eval-2-ranks.zarr"
        extract_with_ranks(2, params.backbone, p.extract, plans["eval"], out, setup.model_configs)
        differs = compare_stores(stores["eval"], out)
        return (differs or f"identical: every array and meta ({setup.block_size}-image blocks)"), (
            FAIL if differs else PASS
        )

    checks.run(EXTRACT, extract)
    checks.run(COSINE, cosine, needs=[EXTRACT])
    checks.run(BARE, bare)
    checks.run(THROUGHPUT, throughput, needs=[EXTRACT, BARE])
    checks.run(BACKBONE, on_device)
    checks.run(GENERATOR, generator, needs=[EXTRACT])
    checks.run(COOP, fit("coop"), needs=[EXTRACT])
    checks.run(COOP_SHIP, fit("coop_ship"), needs=[EXTRACT, GENERATOR])
    checks.run(RANKS, ranks, needs=[EXTRACT])
    return checks.rows


# --- output --------------------------------------------------------------------------------------------------------


def markdown(rows: list[Row], title: str) -> str:
    lines = [f"{title}", "", "| check | figure | result |", "|---|---|---|"]
    lines += [f"| {r.check} | {r.figure.replace('|', '/')} | {r.status} |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("figure")
    table.add_column("result")
    style = {PASS: "green", FAIL: "bold red", INFO: "cyan", SKIP: "yellow"}
    for r in rows:
        table.add_row(r.check, r.figure, f"[{style[r.status]}]{r.status}[/]")
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)


def main(
    device: Annotated[
        Device,
        typer.Option(
            help="cuda: the GPU checks (AMP extraction, fits on the GPU, 2 ranks with 2+ GPUs); cpu: everything on "
            "the CPU in float32 (AMP off), so the script is exercised where there is no GPU (CI)",
        ),
    ] = Device.cuda,
    tiny: Annotated[
        bool,
        typer.Option(
            help=f"a tiny random ViT (1 layer, 32 px images, the real tokenizer) instead of {VIT}; 32 small images, "
            "2 views, a small generator: the CPU form runs in well under a minute",
        ),
    ] = False,
    images: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="test images in the generated folder (the eval store, the throughput figures); default 512, --tiny 32",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="encoder batch (extract.batch_size) of the extraction and the bare forward; default 256, --tiny 8",
        ),
    ] = None,
    reference_images: Annotated[
        int,
        typer.Option(min=1, help="test images also encoded in float32 on the CPU for the cosine check"),
    ] = 128,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="DataLoader workers decoding JPEGs for the GPU (extract.workers; the pipeline uses none on a CPU)",
        ),
    ] = 8,
    out: Annotated[
        Path | None,
        typer.Option(help="also write the table to this file: .json (rows + run description) or .md (Markdown)"),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="keep the temporary folder (images, stores, checkpoint) and print it")
    ] = False,
) -> None:
    """Check the project's extraction, generator and fine-tuning on a device; print one table; exit 1 on a failure."""
    if out is not None and out.suffix not in (".json", ".md"):
        raise typer.BadParameter(f"{out}: the file name must end in .json or .md", param_hint="--out")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `ship` sets it, before torch starts OpenMP
    device_name = Device(device).value
    import torch

    if device_name == "cuda" and not torch.cuda.is_available():
        typer.echo("error: --device cuda but torch sees no CUDA device; run with --device cpu", err=True)
        raise typer.Exit(2)
    tmp = Path(tempfile.mkdtemp(prefix="ship-gpu-check-"))
    config_dir = write_tiny_config(tmp / "model_configs") if tiny else None
    setup = Setup(
        device=device_name,
        model=TINY if tiny else VIT,
        images=images or (32 if tiny else 512),
        batch_size=batch_size or (8 if tiny else 256),
        reference_images=reference_images,
        classes=4 if tiny else 8,
        shots=2 if tiny else 4,
        views=2 if tiny else 10,
        workers=workers,
        image_sizes=(24, 96) if tiny else (160, 640),
        generator_hidden=64 if tiny else None,
        model_configs=config_dir,
    )
    name = torch.cuda.get_device_name() if device_name == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    title = (
        f"{setup.model} (random weights) on {name}; torch {torch.__version__}; {setup.images} test images, "
        f"batch {setup.batch_size}"
    )
    t0 = time.perf_counter()
    try:
        rows = run_checks(setup, tmp)
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    title += f"; {time.perf_counter() - t0:.0f} s"
    print_table(rows, title)
    if out is not None:
        if out.suffix == ".json":
            described = {k: str(v) if isinstance(v, Path) else v for k, v in setup.__dict__.items()}
            payload = {"title": title, "setup": described, "rows": [r.__dict__ for r in rows]}
            out.write_text(json.dumps(payload, indent=2) + "\n")
        else:
            out.write_text(markdown(rows, title))
    failed = [r.check for r in rows if r.status == FAIL]
    if failed:
        print(f"{len(failed)} check(s) failed: {'; '.join(failed)}", file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
