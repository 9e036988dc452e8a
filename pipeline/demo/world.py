"""The demo world: a generated, fully offline stand-in for a CLIP pre-training corpus plus three benchmarks.

Its three datasets (`shapes`, `patterns`, `zoo`; their classes and protocols) are defined in
`pipeline/demo/catalogue.py`, its images drawn by `pipeline/demo/render.py` in two domains, captions by
`pipeline/demo/captions.py`. This module renders every image of the world and writes it out:

- the "web" domain under `web/<dataset>/...` plus `web/web_captions.json`, for all classes of all datasets, in
  the default class order whatever `new_classes` says (only `ship pretrain-demo` renders and reads it; the DAG's
  world has none);
- the "benchmark" domain, on which the protocols run: `shapes/` and `patterns/` in CoOp's split-file layout
  (`images/` + `split_demo.json` + `classnames.txt`), `zoo/` in the xlsa17 layout (`att_splits.mat` +
  `res101.mat`, image paths listed under a fake absolute prefix, images under `images/`);
- `manifest.json`, the world's content hash.

Every image is drawn from its own RNG keyed by (seed, dataset, domain, label, index), so the output is
byte-identical across runs and independent of how the work is spread over processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.atomic_files import replacing_dir
from pipeline.demo.catalogue import DATASETS as DATASETS  # re-exported: pipeline/demo/pretrain.py imports it here
from pipeline.demo.catalogue import DemoClass, DemoDataset, global_classnames, world_datasets
from pipeline.demo.render import BENCHMARK, WEB, render
from pipeline.demo.xlsa17_writer import write_xlsa17
from pipeline.file_hashes import file_sha256, tree_files
from pipeline.params.demo import DemoWorldParams

log = logging.getLogger(__name__)

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


def generate_world(params: DemoWorldParams, out_dir: Path, *, workers: int | None = None, web: bool = True) -> None:
    """Render the demo world into `out_dir` (replaced atomically). Same params -> same bytes.

    `workers` only changes speed, never the output (every image has its own RNG key). `web=False` leaves out the
    web domain (only pre-training reads it); the benchmark files are the same bytes either way.
    """
    out_dir = Path(out_dir)
    workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1))
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
    with replacing_dir(out_dir) as tmp:
        jobs = []
        if (
            web
        ):  # in the default class order whatever `new_classes` says: the corpus is one, the benchmarks' splits many
            for ds in DATASETS:
                for cls in ds.classes():
                    folder = tmp / WEB_DIR / ds.name / cls.dirname
                    jobs.append(_Job(ds, WEB, cls.label, tuple(range(params.web_per_class)), folder, **common))
        for ds in datasets:
            for cls in ds.classes():
                n = _benchmark_count(ds, cls.label, params)
                bench = tmp / ds.name / IMAGES_DIR / cls.dirname
                jobs.append(_Job(ds, BENCHMARK, cls.label, tuple(range(n)), bench, **common))
        results = _run_jobs(jobs, workers)
        _write_indices(params, datasets, tmp, jobs, results)
        write_manifest(tmp)
    log.info("demo world written to %s in %.1f s", out_dir, time.perf_counter() - start)


def write_manifest(root: Path) -> str:
    """Write `root`/manifest.json: the file count and a SHA-256 over every other file's relative path and bytes.
    Returns the hash. Same files -> same manifest bytes."""
    digest = hashlib.sha256()
    files = tree_files(Path(root), exclude=MANIFEST_FILE)
    for rel, path in files.items():
        digest.update(rel.encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
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
