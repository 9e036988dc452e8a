"""Run the frozen CLIP image encoder once over a set of splits and cache the features (see feature_store.py).

Two kinds of stores come out of here:
- eval stores: a dataset's test images (one clean view) and its zero-shot text classifiers; shared by every seed
  and every experiment that scores on the dataset;
- train stores: one seed's training images with one clean view plus K augmented views (RandomResizedCrop + flip, as
  SHIP and Tip-Adapter train with) and its validation images.

Augmented views are seeded by (seed, image index, view), so they are the same whichever worker, batch or resumed
run produces them. Every row stores the L2-normalised feature and the norm of the raw encoder output.

What is encoded comes as an `ExtractionPlan` (pipeline/extraction_plans.py); the ranks of a multi-process run
(pipeline/ranks.py) share out the blocks of a store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from pipeline.backbone import Backbone, load_backbone
from pipeline.datasets.records import ImageRecord
from pipeline.errors import ExpectedError
from pipeline.extraction_plans import ExtractionPlan, SplitPlan
from pipeline.feature_store import StoreBuilder, StoreError
from pipeline.params import BackboneParams, ExtractParams
from pipeline.ranks import Ranks, rank_context

log = logging.getLogger(__name__)

_INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


class CorruptImageError(ExpectedError, RuntimeError):
    pass


def load_rgb(path: Path) -> Image.Image:
    """An image as 8-bit RGB, respecting its bit depth: 16-bit and 32-bit greyscale are scaled, not clipped (PIL's
    convert("RGB") would turn every 16-bit value above 255 white). PIL's DecompressionBombError (an image of more
    than twice Image.MAX_IMAGE_PIXELS) propagates to the caller, which treats it like a corrupt file."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            x = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or x.max(initial=0) > 255 else 255.0
            grey = np.clip(np.round(x / top * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(grey, "L").convert("RGB")
        return im.convert("RGB")


def augmentation(preprocess_cfg: dict[str, Any], crop_scale_min: float) -> T.Compose:
    """SHIP's / Tip-Adapter's training augmentation in the backbone's own resolution and normalisation."""
    size = preprocess_cfg["size"]
    size = size if isinstance(size, int) else tuple(size)
    interp = _INTERPOLATION.get(preprocess_cfg.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), interpolation=interp),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(preprocess_cfg["mean"], preprocess_cfg["std"]),
        ]
    )


class ViewsDataset(Dataset):
    """Item i -> (i, views [1+K, 3, H, W], ok). A corrupt image raises, or gives ok=False when skipping."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        preprocess: Any,
        augment: T.Compose | None,
        views: int,
        seed: int,
        skip_corrupt: bool,
        image_size: int,
    ):
        self.records = records
        self.preprocess = preprocess
        self.augment = augment
        self.views = views
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool]:
        path = self.records[i].path
        try:
            image = load_rgb(path)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            reason = "decompression bomb (too many pixels)" if "decompression bomb" in str(err).lower() else err
            if not self.skip_corrupt:
                raise CorruptImageError(
                    f"cannot read image {path}: {reason} (set extract.skip_corrupt=true to skip and list it)"
                ) from None
            return i, torch.zeros(1 + self.views, 3, self.image_size, self.image_size), False
        out = [self.preprocess(image)]
        if self.views:
            assert self.augment is not None
            # Seeded per image and view, so the result does not depend on workers, batching or resumption.
            with torch.random.fork_rng(devices=[]):
                for v in range(self.views):
                    torch.manual_seed((self.seed * 1_000_003 + i) * 1009 + v)
                    out.append(self.augment(image))
        return i, torch.stack(out), True


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.1f} img/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@torch.no_grad()
def encode_views(backbone: Backbone, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, V, 3, H, W] -> (L2-normalised features [B, V, D], raw norms [B, V]) (AMP and channels-last on CUDA)."""
    b, v = views.shape[:2]
    cuda = backbone.device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.preserve_format
    flat = views.flatten(0, 1).to(backbone.device, non_blocking=True, memory_format=memory_format)
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        feats = backbone.model.encode_image(flat)
    feats = feats.float()
    norms = feats.norm(dim=-1)
    feats = feats / norms.clamp_min(1e-12).unsqueeze(-1)
    return feats.view(b, v, -1).cpu(), norms.view(b, v).cpu()


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


class _BlockWriter:
    """Writes finished blocks in a background thread, one at a time, while the next block is encoded. An error
    of a write is raised in the caller at its next `submit` or at `drain`."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._pending: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self.drain()
        self._pending = self._pool.submit(fn, *args)

    def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, failed: bool) -> None:
        """Wait for the write in flight (so what is recorded as done is on disk); raise its error unless the
        caller is already failing."""
        try:
            if failed and self._pending is not None:
                wait([self._pending])
            else:
                self.drain()
        finally:
            self._pool.shutdown(wait=True)


def loader_workers(params: ExtractParams, device: torch.device) -> int:
    """DataLoader worker processes for a run on `device`: `extract.workers` on a GPU, where decoding and augmenting
    must keep up with the device; none on a CPU, where the encoder's threads already use every core and decoding +
    augmenting is ~1-2% of the encoder's CPU time (benchmarks/extraction_efficiency.py): there is no idle core for
    workers to hide it on, so they only add processes contending with the encoder's threads (2 workers + 2 threads
    on 2 cores before)."""
    return params.workers if device.type == "cuda" else 0


def _block_batches(rows: int, blocks: Sequence[int], block_size: int, per_batch: int) -> list[tuple[int, list[int]]]:
    """(block, indices) per encoder batch: each block in `per_batch` slices from its start, so a batch never spans
    two blocks and a block's batches are the same whichever rank or run encodes it."""
    out = []
    for block in blocks:
        start, stop = block * block_size, min(rows, (block + 1) * block_size)
        out += [(block, list(range(s, min(s + per_batch, stop)))) for s in range(start, stop, per_batch)]
    return out


def _encode_blocks(
    split: SplitPlan,
    blocks: list[int],
    dataset: ViewsDataset,
    backbone: Backbone,
    params: ExtractParams,
    write: Callable[..., None],
    writer: _BlockWriter,
    advance: Callable[[int], None],
) -> None:
    """Encode `blocks` of one split through ONE DataLoader (workers start once and keep decoding across blocks)
    and hand each finished block to `writer`."""
    per_batch = max(1, params.batch_size // (1 + split.views))
    batches = _block_batches(len(split.records), blocks, params.block_size, per_batch)
    if not batches:
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[indices for _, indices in batches],
        num_workers=loader_workers(params, backbone.device),
        pin_memory=backbone.device.type == "cuda",
    )
    parts: dict[str, list[torch.Tensor]] = {"feats": [], "norms": [], "labels": [], "valid": []}
    for n, (idx, views, ok) in enumerate(loader):
        f, nrm = encode_views(backbone, views)
        parts["feats"].append(f if split.views else f[:, 0])
        parts["norms"].append(nrm if split.views else nrm[:, 0])
        parts["labels"].append(torch.as_tensor([split.records[i].label for i in idx.tolist()]))
        parts["valid"].append(ok)
        advance(len(idx))
        block = batches[n][0]
        if n + 1 == len(batches) or batches[n + 1][0] != block:  # the block's last batch
            arrays = [torch.cat(parts[k]).numpy() for k in ("feats", "norms", "labels", "valid")]
            writer.submit(write, split.name, block, *arrays[:3], arrays[3].astype(bool))
            parts = {k: [] for k in parts}


def extract_features(
    plan: ExtractionPlan,
    backbone: Backbone,
    params: ExtractParams,
    out: Path,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> Path:
    """Encode every split of `plan` into the store at `out` (atomic; resumes a matching partial build).

    With `ranks` of a multi-process job (`rank_context`), call it in every rank with the same arguments: the
    blocks still to do are shared out round-robin, and the store is identical to a one-process build."""
    ranks = ranks or Ranks()
    if ranks.main:
        shape = ", ".join(
            f"{s.name} {len(s.records)} images" + (f" x (1 + {s.views} views)" if s.views else "") for s in plan.splits
        )
        log.info("extracting %s: %s", out, shape)
    fingerprint = plan.fingerprint()
    builder: StoreBuilder | None = None
    try:
        if ranks.main:
            builder = StoreBuilder(out, fingerprint, params.block_size)
            if builder.resumed:
                done = sum(len(v) for v in builder.progress.values())
                log.info("resuming partial store %s (%d blocks already written)", builder.partial, done)
            for split in plan.splits:
                views = 1 + split.views if split.views else None
                builder.create_split(split.name, len(split.records), views, backbone.embed_dim)
        ranks.barrier()  # rank 0 has prepared the partial store
        if not ranks.main:
            builder = StoreBuilder(out, fingerprint, params.block_size, rank=ranks.rank)
        assert builder is not None
        ranks.barrier()  # every rank knows what is done before any writes more
        _encode_share(plan, backbone, params, builder, ranks, progress)
        ranks.barrier()  # every block is written
        path = _finalize(plan, backbone, params, builder) if ranks.main else Path(out)
    except BaseException:
        if builder is not None:
            builder.release()  # the partial build stays, for any process to resume
        raise
    ranks.barrier()  # the store is in place before any rank returns
    if ranks.main:
        log.info("wrote %s", path)
    return path


def _encode_share(
    plan: ExtractionPlan, backbone: Backbone, params: ExtractParams, builder: StoreBuilder, ranks: Ranks, progress: bool
) -> None:
    """Encode this rank's share of the blocks not yet done: round-robin over (split, block) in plan order."""
    todo = [
        (split.name, block)
        for split in plan.splits
        for block in range(-(-len(split.records) // params.block_size))
        if not builder.block_done(split.name, block)
    ]
    mine = todo[ranks.rank :: ranks.world_size]
    if ranks.distributed:
        log.info("%s: %d of the %d blocks to encode", ranks, len(mine), len(todo))
    if backbone.device.type == "cuda":
        backbone.model.visual.to(memory_format=torch.channels_last)
    augment = augmentation(backbone.preprocess_cfg, params.crop_scale_min)
    writer = _BlockWriter()
    failed = True
    try:
        with _progress(progress) as bar:
            for split in plan.splits:
                blocks = [block for name, block in mine if name == split.name]
                rows = sum(min(params.block_size, len(split.records) - b * params.block_size) for b in blocks)
                label = f"extract {split.name}" + (f" ({ranks})" if ranks.distributed else "")
                task = bar.add_task(label, total=rows, rate=0.0, visible=rows > 0)
                t0, n = time.perf_counter(), 0

                def advance(k: int, task: Any = task, t0: float = t0) -> None:
                    nonlocal n
                    n += k
                    bar.update(task, advance=k, rate=n / max(time.perf_counter() - t0, 1e-9))

                dataset = ViewsDataset(
                    split.records,
                    backbone.preprocess,
                    augment,
                    split.views,
                    plan.seed,
                    params.skip_corrupt,
                    backbone.image_size,
                )
                _encode_blocks(split, blocks, dataset, backbone, params, builder.write_block, writer, advance)
        failed = False
    finally:
        writer.close(failed)


def _finalize(plan: ExtractionPlan, backbone: Backbone, params: ExtractParams, builder: StoreBuilder) -> Path:
    """Rank 0, once every rank has written its blocks: check nothing is missing, add the classifiers and meta."""
    done = builder.reload_progress()
    for split in plan.splits:
        expected = set(range(-(-len(split.records) // params.block_size)))
        if missing := sorted(expected - set(done.get(split.name, []))):
            raise StoreError(f"partial store {builder.partial}: {split.name} blocks {missing} were not written")
    # Skipped files are read back from `valid`, so a resumed run lists those of earlier runs too.
    skipped = [
        _relative(split.records[j].path, plan.root)
        for split in plan.splits
        for j in np.flatnonzero(~np.asarray(builder.group[f"{split.name}/valid"][:], dtype=bool))
    ]
    if skipped:
        log.warning("skipped %d unreadable images (listed in the store's meta.skipped)", len(skipped))
    if plan.classifiers:
        tower = backbone.text_tower()
        with torch.no_grad():
            for name, templates in plan.classifiers.items():
                classifier = tower.zero_shot_classifier(plan.classnames, templates)
                builder.write_array(f"classifiers/{name}", classifier.float().cpu().numpy())
    meta = {
        **plan.meta,
        "backbone": backbone.identity(),
        "classnames": list(plan.classnames),
        "classifiers": plan.classifiers,
        "extract": {"views": params.views, "crop_scale_min": params.crop_scale_min, "seed": plan.seed},
        "skipped": skipped,
        "counts": {s.name: len(s.records) for s in plan.splits},
    }
    return builder.finalize(meta)


def encode_store(
    backbone_params: BackboneParams, plan_of: Callable[[], ExtractionPlan], store: Path, settings: ExtractParams
) -> None:
    """One extract stage: join the job this process is a rank of (or a job of one), load the backbone on this rank's
    device (first, so unusable weights fail within seconds), then encode `plan_of()` into `store`."""
    with rank_context(backbone_params.device) as (ranks, device):
        backbone = load_backbone(backbone_params, device)
        extract_features(plan_of(), backbone, settings, store, progress=ranks.main, ranks=ranks)
