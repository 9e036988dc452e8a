"""Run the frozen CLIP image encoder once over every split and cache the features (see feature_store.py).

Training images get one clean view (the backbone's eval preprocessing) plus K augmented views
(RandomResizedCrop + flip, as SHIP trains with), each seeded by (seed, image index, view) so the views are the
same whichever worker, batch or resumed run produces them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from pipeline.backbone import Backbone
from pipeline.datasets.records import DatasetSplits, ImageRecord
from pipeline.feature_store import StoreBuilder
from pipeline.features import base_new_split
from pipeline.params import DatasetParams, ExtractParams

log = logging.getLogger(__name__)

_INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


class CorruptImageError(RuntimeError):
    pass


def augmentation(preprocess_cfg: dict[str, Any], crop_scale_min: float) -> T.Compose:
    """SHIP's training augmentation in the backbone's own resolution and normalisation."""
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
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            if not self.skip_corrupt:
                raise CorruptImageError(
                    f"cannot read image {path}: {err} (set extract.skip_corrupt=true to skip and list it)"
                ) from err
            return i, torch.zeros(1 + self.views, 3, self.image_size, self.image_size), False
        out = [self.preprocess(image)]
        if self.views:
            # Seeded per image and view, so the result does not depend on workers, batching or resumption.
            with torch.random.fork_rng(devices=[]):
                for v in range(self.views):
                    torch.manual_seed((self.seed * 1_000_003 + i) * 1009 + v)
                    out.append(self.augment(image))
        return i, torch.stack(out), True


@dataclass
class SplitPlan:
    name: str
    records: list[ImageRecord]
    views: int  # augmented views (0 for val/test)


@dataclass
class ExtractionPlan:
    """What one extract run encodes; its fingerprint keys resumption of a partial store."""

    dataset: DatasetSplits  # the full dataset as loaded (class names)
    splits: list[SplitPlan]
    meta: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True, default=str).encode())
        for split in self.splits:
            digest.update(f"{split.name}:{split.views}".encode())
            for r in split.records:
                digest.update(f"{r.path}|{r.label}\n".encode())
        return digest.hexdigest()


def plan_extraction(
    dataset: DatasetSplits,
    protocol: DatasetSplits,
    dataset_params: DatasetParams,
    extract_params: ExtractParams,
    backbone: Backbone,
) -> ExtractionPlan:
    base, new = base_new_split(len(dataset.classnames))
    labeled = base if dataset_params.labeled_classes == "base" else base + new
    meta = {
        "backbone": backbone.identity(),
        "dataset": {"kind": dataset_params.kind, "name": dataset.name, "root": dataset_params.root, **dataset.meta},
        "protocol": {
            "shots": dataset_params.shots,
            "val_shots": dataset_params.val_shots,
            "seed": dataset_params.seed,
            "labeled_classes": dataset_params.labeled_classes,
        },
        "extract": {
            "views": extract_params.views,
            "crop_scale_min": extract_params.crop_scale_min,
            "templates": list(extract_params.templates),
        },
        "classnames": list(dataset.classnames),
        "base_classes": base,
        "new_classes": new,
        "labeled_classes": labeled,
    }
    splits = [
        SplitPlan("train", list(protocol.train), extract_params.views),
        SplitPlan("val", list(protocol.val), 0),
        SplitPlan("test", list(protocol.test), 0),
    ]
    return ExtractionPlan(dataset=dataset, splits=splits, meta=meta)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.1f} img/s"),
        TimeRemainingColumn(),
    )


@torch.no_grad()
def encode_views(backbone: Backbone, views: torch.Tensor) -> torch.Tensor:
    """[B, V, 3, H, W] -> [B, V, D] L2-normalised features (AMP on CUDA)."""
    b, v = views.shape[:2]
    flat = views.flatten(0, 1).to(backbone.device, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=backbone.device.type == "cuda"):
        feats = backbone.model.encode_image(flat)
    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.view(b, v, -1).cpu()


def extract_features(
    plan: ExtractionPlan, backbone: Backbone, params: ExtractParams, out: Path, progress: bool = True
) -> Path:
    """Encode every split of `plan` into the store at `out` (atomic; resumes a matching partial build)."""
    builder = StoreBuilder(out, plan.fingerprint(), params.block_size)
    if builder.resumed:
        done = sum(len(v) for v in builder.progress.values())
        log.info("resuming partial store %s (%d blocks already written)", builder.partial, done)
    augment = augmentation(backbone.preprocess_cfg, params.crop_scale_min)
    seed = int(plan.meta["protocol"]["seed"])
    with _progress() as bar:
        for split in plan.splits:
            rows = len(split.records)
            feature_shape = (1 + split.views, backbone.embed_dim) if split.views else (backbone.embed_dim,)
            builder.create_split(split.name, rows, feature_shape)
            task = bar.add_task(f"extract {split.name}", total=rows, rate=0.0, visible=progress)
            dataset = ViewsDataset(
                split.records,
                backbone.preprocess,
                augment,
                split.views,
                seed,
                params.skip_corrupt,
                backbone.image_size,
            )
            for block in range(-(-rows // params.block_size)):
                start = block * params.block_size
                stop = min(rows, start + params.block_size)
                if builder.block_done(split.name, block):
                    bar.advance(task, stop - start)
                    continue
                loader = DataLoader(
                    torch.utils.data.Subset(dataset, range(start, stop)),
                    batch_size=max(1, params.batch_size // (1 + split.views)),
                    num_workers=params.workers,
                    pin_memory=backbone.device.type == "cuda",
                )
                feats, labels, valid = [], [], []
                t0, n = time.perf_counter(), 0
                for idx, views, ok in loader:
                    encoded = encode_views(backbone, views)
                    feats.append(encoded if split.views else encoded[:, 0])
                    labels.append(torch.as_tensor([split.records[i].label for i in idx.tolist()]))
                    valid.append(ok)
                    n += len(idx)
                    bar.update(task, advance=len(idx), rate=n / max(time.perf_counter() - t0, 1e-9))
                valid_np = torch.cat(valid).numpy().astype(bool)
                builder.write_block(split.name, block, torch.cat(feats).numpy(), torch.cat(labels).numpy(), valid_np)
    # Skipped files are read back from `valid`, so a resumed run lists those of earlier runs too.
    skipped = [
        str(split.records[j].path)
        for split in plan.splits
        for j in np.flatnonzero(~np.asarray(builder.group[f"{split.name}/valid"][:], dtype=bool))
    ]
    if skipped:
        log.warning("skipped %d unreadable images (listed in the store's meta.skipped)", len(skipped))
    tower = backbone.text_tower()
    with torch.no_grad():
        classifier = tower.zero_shot_classifier(plan.dataset.classnames, params.templates)
    builder.write_array("classifier", classifier.float().cpu().numpy())
    meta = {**plan.meta, "skipped": skipped, "counts": {s.name: len(s.records) for s in plan.splits}}
    return builder.finalize(meta)
