"""Extraction efficiency at ViT-B/16 size: the pipeline's images/s vs the bare image encoder's, and where the rest goes.

Open_clip's ViT-B-16 with RANDOM weights (same FLOPs as the real model, no download) is saved as a local checkpoint
file and loaded through `load_backbone`, as `ship extract-*` loads it. A folder of generated JPEG photos at a
realistic size (500 x 375, smooth content, quality 90, like web photos) is the dataset. Measured in ONE run:

  end-to-end   `extract_features` (what `ship extract-eval` / `ship extract-train` call) writing a fresh store:
               eval = one clean view per image; train = 1 clean + K augmented views per image
  bare         `model.encode_image` on already-preprocessed tensors at the same encoder batch, under no_grad
               (what the pipeline runs per batch), timed before AND after the end-to-end run (load drifts on a
               shared machine), averaged
  components   per image or view, single-threaded, outside any pipeline: JPEG decode (`load_rgb`), eval
               preprocess (resize + centre crop + normalise), one augmented view (RandomResizedCrop + flip +
               normalise), collate of a batch, Zarr write of a block (`StoreBuilder.write_block`)

efficiency = end-to-end images/s / bare images/s (views/s for train). The components say where the rest goes: on a
CPU everything competes for the same cores, so their CPU time adds to the encoder's unless hidden by idle cores.

    .venv/bin/python benchmarks/extraction_efficiency.py        # ~6-8 minutes on 2 cores (more when loaded)

Measured with the command above on a 2-core x86-64 CPU VM shared with other jobs (load 1-5; wall-clock ratios swing
by +-10% with them, the CPU-time ratios do not): eval 90.7% (CPU time 97.2%), train 93.5% (CPU 99.5%), eval with 2
forked workers 140.5% wall (a load drop during that run) but 98.1% CPU; decode + preprocess + augment + collate +
write are 1.3% (eval) and 0.8% (train, per view) of the encoder's time. For comparison, a loader with a DataLoader
per block (2 forked workers beside 2 torch threads, writes in the main loop) gave 90.1% eval, 89.2% train (wall;
one run, same VM).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

MODEL = "ViT-B-16"


def _photo(path: Path, rng, width: int, height: int) -> None:
    """A JPEG with photo-like statistics: smooth colour fields, a few shapes, mild noise (not white noise, which
    decodes and compresses unlike any photo)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(10, 90))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-8, 9, size=(height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(
    images: Annotated[int, typer.Option(help="JPEG images in the folder (the eval run encodes all of them)")] = 128,
    train_images: Annotated[int, typer.Option(help="images of the train run (each 1 + views encoder passes)")] = 8,
    views: Annotated[int, typer.Option(help="augmented views per training image (params: 10)")] = 10,
    eval_batch: Annotated[int, typer.Option(help="encoder batch of the eval run (params: extract.batch_size)")] = 64,
    forked: Annotated[
        int, typer.Option(help="also run eval with this many forked DataLoader workers on the CPU (0: skip)")
    ] = 2,
    threads: Annotated[int, typer.Option(help="torch intra-op threads (this machine has 2 cores)")] = 2,
    width: Annotated[int, typer.Option(help="image width")] = 500,
    height: Annotated[int, typer.Option(help="image height")] = 375,
    skip_train: Annotated[bool, typer.Option(help="measure the eval run only")] = False,
) -> None:
    """Print end-to-end and bare images/s, their ratio, and per-component costs."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `ship` sets it, before torch starts OpenMP
    import numpy as np
    import open_clip
    import torch
    from torch.utils.data import default_collate

    from pipeline import extract
    from pipeline.backbone import load_backbone
    from pipeline.datasets.records import ImageRecord
    from pipeline.extract import augmentation, extract_features, load_rgb, loader_workers
    from pipeline.extraction_plans import ExtractionPlan, SplitPlan
    from pipeline.feature_store import StoreBuilder
    from pipeline.params import BackboneParams, ExtractParams

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="ship-extract-bench-"))
    rng = np.random.default_rng(0)
    folder = tmp / "images"
    folder.mkdir()
    records = []
    for i in range(images):
        path = folder / f"img{i:04d}.jpg"
        _photo(path, rng, width, height)
        records.append(ImageRecord(path, i % 10, f"class {i % 10}"))
    mean_kb = sum(r.path.stat().st_size for r in records) / len(records) / 1024
    torch.manual_seed(0)
    ckpt = tmp / "vit-b-16-random.pt"
    torch.save({"state_dict": open_clip.create_model(MODEL).state_dict()}, ckpt)
    backbone = load_backbone(BackboneParams(model=MODEL, pretrained=str(ckpt), device="cpu"))
    default = ExtractParams()
    n_workers = loader_workers(default, backbone.device)
    train_batch = (1 + views) * train_images  # one encoder batch of the train run holds every view of its images
    # name -> (records, views, encoder batch, DataLoader workers: None = the pipeline's choice)
    runs: dict[str, tuple[list, int, int, int | None]] = {"eval": (records, 0, eval_batch, None)}
    if forked:
        runs[f"eval, {forked} forked workers"] = (records, 0, eval_batch, forked)
    if not skip_train:
        runs["train"] = (records[:train_images], views, train_batch, None)
    print(
        f"{MODEL}, random weights, loaded from a checkpoint file; torch threads {threads}; "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; {os.cpu_count()} cores; DataLoader workers "
        f"{n_workers} (the pipeline's choice on the CPU; params extract.workers={default.workers} applies on a GPU)",
        flush=True,
    )
    print(f"{images} JPEGs {width}x{height}, {mean_kb:.0f} KiB mean", flush=True)

    clean = torch.stack([backbone.preprocess(load_rgb(r.path)) for r in records[: max(eval_batch, 8)]])

    def cpu_seconds() -> float:  # this process and its reaped children (DataLoader workers), user + system
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def bare(batch: int) -> tuple[float, float]:
        """(wall, CPU) seconds per encoder pass of one preprocessed view, at encoder batch `batch`."""
        x = clean.repeat(-(-batch // len(clean)), 1, 1, 1)[:batch]
        with torch.no_grad():
            t0, c0 = time.perf_counter(), cpu_seconds()
            backbone.model.encode_image(x)
            return (time.perf_counter() - t0) / batch, (cpu_seconds() - c0) / batch

    bare(eval_batch)  # warm-up (first-touch allocations)
    results = {}
    for i, (name, (recs, k, batch, forced)) in enumerate(runs.items()):
        params = ExtractParams(views=k, batch_size=batch, templates=("a photo of a {}.",))
        plan = ExtractionPlan(splits=[SplitPlan("train" if k else "test", recs, k)], classnames=["x"], seed=1)
        passes = len(recs) * (1 + k)
        before = [bare(batch) for _ in range(-(-passes // batch) // 2 or 1)]
        if forced is not None:  # `--forked`: that many forked DataLoader workers on the CPU too
            extract.loader_workers = lambda params, device, forced=forced: forced
        t0, c0 = time.perf_counter(), cpu_seconds()
        extract_features(plan, backbone, params, tmp / f"run{i}.zarr", progress=False)
        e2e, e2e_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        extract.loader_workers = loader_workers
        after = [bare(batch) for _ in range(len(before))]
        per_view = statistics.mean(w for w, _ in before + after)
        cpu_per_view = statistics.mean(c for _, c in before + after)
        results[name] = (passes, batch, e2e, per_view, e2e_cpu, cpu_per_view)
        print(
            f"  {name}: end-to-end {e2e:.1f} s for {passes} encoder passes; bare {per_view * 1000:.0f} ms/pass "
            f"(before {statistics.mean(w for w, _ in before) * 1000:.0f}, "
            f"after {statistics.mean(w for w, _ in after) * 1000:.0f})",
            file=sys.stderr,
            flush=True,
        )

    # Components, single-threaded like a DataLoader worker (torch sets 1 thread in workers).
    torch.set_num_threads(1)
    sample = records[:16]
    decoded = [load_rgb(r.path) for r in sample]
    augment = augmentation(backbone.preprocess_cfg, default.crop_scale_min)
    decode_s = _median_time(lambda: [load_rgb(r.path) for r in sample], 3) / len(sample)
    pre_s = _median_time(lambda: [backbone.preprocess(im) for im in decoded], 3) / len(sample)
    aug_s = _median_time(lambda: [augment(im) for im in decoded], 3) / len(sample)
    items = [(i, torch.stack([clean[0]] * (1 + views)), True) for i in range(max(1, train_batch // (1 + views)))]
    collate_train = _median_time(lambda: default_collate(items), 3) / train_batch
    items1 = [(i, clean[:1], True) for i in range(eval_batch)]
    collate_eval = _median_time(lambda: default_collate(items1), 3) / eval_batch
    block = default.block_size
    feats = np.random.default_rng(0).standard_normal((block, 1 + views, backbone.embed_dim)).astype(np.float32)
    builder = StoreBuilder(tmp / "write.zarr", "bench", block)
    builder.create_split("train", block, 1 + views, backbone.embed_dim)
    t0 = time.perf_counter()
    builder.write_block(
        "train", 0, feats, np.ones((block, 1 + views), np.float32), np.zeros(block, np.int64), np.ones(block, bool)
    )
    write_s = (time.perf_counter() - t0) / (block * (1 + views))
    torch.set_num_threads(threads)

    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"{'run':28s} passes  batch  end-to-end/s  bare/s  efficiency  CPU s/pass e2e  bare  efficiency (CPU)")
    for name, (passes, batch, e2e, per_view, e2e_cpu, cpu_per_view) in results.items():
        print(
            f"{name:28s}{passes:7d}{batch:7d}{passes / e2e:14.2f}{1 / per_view:8.2f}{passes / e2e * per_view:11.1%}"
            f"{e2e_cpu / passes:16.2f}{cpu_per_view:6.2f}{cpu_per_view * passes / e2e_cpu:18.1%}"
        )
    print(
        "efficiency = end-to-end passes/s / bare passes/s (wall clock); the CPU-time column divides CPU seconds per"
        " pass instead, which other processes' load perturbs less"
    )
    enc = statistics.mean(r[3] for r in results.values() if r[1] == eval_batch)
    print(f"components, ms per encoder pass (1 thread except encode, which uses {threads}):")
    rows = [
        ("encode (bare, per view)", enc),
        ("JPEG decode (per image)", decode_s),
        ("eval preprocess: resize + crop + normalise (per image)", pre_s),
        ("augmented view: RandomResizedCrop + flip + normalise", aug_s),
        ("collate (per view, train batch)", collate_train),
        ("collate (per view, eval batch)", collate_eval),
        (f"Zarr write of a block ({block} images x {1 + views} views, per view)", write_s),
    ]
    for label, seconds in rows:
        print(f"  {label:66s}{seconds * 1000:9.2f}  ({seconds / enc:6.1%} of encode)")
    per_image_eval = decode_s + pre_s + collate_eval
    per_image_train = decode_s + pre_s + views * aug_s + (1 + views) * (collate_train + write_s)
    print(
        f"CPU work besides the encoder, as a share of encoder time: eval {per_image_eval / enc:.1%} per image, "
        f"train {per_image_train / ((1 + views) * enc):.1%} per view (decode + preprocess + {views} augmented "
        f"views + collate + write, over {1 + views} encoder passes)"
    )


if __name__ == "__main__":
    typer.run(main)
