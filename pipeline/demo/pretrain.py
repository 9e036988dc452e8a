"""Contrastive pre-training of the demo CLIP backbone (`ship-demo-rn`) from scratch on the demo world's web domain.

This stands in for OpenAI's / LAION's pre-training so that the whole pipeline runs offline: the result is an
ordinary open_clip checkpoint (`{"state_dict": ...}`) that `open_clip.create_model_and_transforms("ship-demo-rn",
pretrained=<path>)` loads like any downloaded one. Only web-domain images and captions are used, of all classes of
all demo datasets (shapes, patterns, zoo); the benchmark domain (where the protocols run) is never seen, so the
zero-shot figures this module reports per dataset (`zero_shot_report`) are real transfer figures.

Architecture note: `ship-demo-rn` is a small CLIP ModifiedResNet image tower (RN50-style,
one bottleneck per stage, width 32) with a 4-layer text transformer. Tiny ViTs trained from scratch on ~6k images
learned colour at once but shape barely above chance within a CPU budget of minutes (no convolutional prior), so
the demo's shape words would have been unusable. Everything downstream only sees open_clip's CLIP interface.

CPU-friendly by construction: all web images are decoded once into one uint8 tensor, augmentation is batched tensor
ops, the image tower runs channels-last (~25% faster convolutions on CPU), and the text side runs through
`TextTower.encode_tokens`, which stops the causal transformer at the longest end-of-text token of the batch.
Default recipe: 7 epochs x 168 steps of 64 images, ~5 min on 2 idle cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from pipeline.backbone import register_model_configs
from pipeline.datasets.coop import load_demo_dataset
from pipeline.datasets.records import ImageRecord
from pipeline.datasets.xlsa17 import load_xlsa17_dataset
from pipeline.demo.world import DATASETS, IMAGES_DIR, WEB_CAPTIONS_FILE, WEB_DIR, DemoDataset
from pipeline.params.demo import DemoBackboneParams
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

DEMO_MODEL = "ship-demo-rn"
# Prompt ensemble for the zero-shot figures (CLIP-style; "a photo of a {}." is CoOp's initialisation).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "clip art of a {}.",
)
LOG_EVERY = 100  # steps between debug log lines (the progress bar shows every step)
WEB_FIT_PER_CLASS = 5  # web images per class re-scored after training: a cheap "did it fit the corpus" figure


# --- data ---------------------------------------------------------------------------------------------------------


def _load_rgb(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


@dataclass(frozen=True)
class WebCorpus:
    images: torch.Tensor  # [N, 3, S, S] uint8
    captions: list[str]
    labels: torch.Tensor  # [N] over the classes of all datasets
    classnames: list[str]  # index = label


def load_web_corpus(world_dir: Path, image_size: int) -> WebCorpus:
    """All web images, decoded once into one uint8 tensor, with their captions, labels and datasets."""
    web_dir = Path(world_dir) / WEB_DIR
    captions_file = web_dir / WEB_CAPTIONS_FILE
    if not captions_file.is_file():
        raise FileNotFoundError(f"web captions {captions_file} not found: generate the demo world first")
    corpus = json.loads(captions_file.read_text())
    rows, names = corpus["images"], [str(n) for n in corpus["classnames"]]
    if not rows:
        raise ValueError(f"{captions_file} lists no images")
    images = np.stack([_load_rgb(web_dir / rel, image_size) for rel, _, _ in rows])
    return WebCorpus(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=[str(c) for _, _, c in rows],
        labels=torch.tensor([int(label) for _, label, _ in rows]),
        classnames=names,
    )


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, batched augmentation of uint8 images -> float in [0, 1].

    A random resized crop (scale 0.8-1, small shift) and mild brightness/contrast jitter. No flips (captions may
    say where things are) and no hue jitter (colour is half of every class name).
    """
    x = images.float() / 255.0
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator)
    scale = 0.8 + 0.2 * u[:, 0]
    shift = (1 - scale + 0.05).unsqueeze(1) * (2 * u[:, 1:3] - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = (0.9 + 0.2 * u[:, 3]).view(n, 1, 1, 1)
    contrast = (0.9 + 0.2 * u[:, 4]).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


def _normalizer(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


# --- training -----------------------------------------------------------------------------------------------------


def balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A permutation of the corpus in which consecutive runs hold each class once ("rounds"), in random order.

    Cut into batches, every batch holds (nearly) distinct classes: a caption's in-batch negatives are then other
    classes, never same-class duplicates, and every colour meets every shape. Without this, colour (a global
    statistic) resolves most in-batch pairs and the image tower hardly learns shape. (Batches drawn from one
    dataset at a time, for harder negatives, were tried: worse on every dataset's zero-shot accuracy.)
    """
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    order = []
    for r in range(max(len(idx) for idx in per_class)):
        members = torch.stack([idx[r] for idx in per_class if r < len(idx)])
        order.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(order)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's convention: no decay on gains, biases, norms and the logit scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "bias" in name or "ln" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (features L2-normalised; the i-th image goes with the i-th caption)."""
    logits = logit_scale.exp() * image_features @ text_features.T
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pretrain_backbone(
    params: DemoBackboneParams, world_dir: Path, out_path: Path, *, max_steps: int | None = None
) -> dict[str, Any]:
    """Pre-train `ship-demo-rn` on the web domain of `world_dir` and save an open_clip checkpoint to `out_path`.

    Deterministic on CPU for a given (params, world, torch thread count). `max_steps` cuts training short (tests).
    Returns figures: final loss, seconds (wall and CPU), images/s, and under "zero_shot" each dataset's zero-shot
    top-1 on its benchmark test split (`zero_shot_report`).
    """
    world_dir, out_path = Path(world_dir), Path(out_path)
    register_model_configs()
    torch.manual_seed(params.seed)
    log.info("building %s from random init (open_clip warns that no pretrained weights were loaded)", DEMO_MODEL)
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL)
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL)
    image_size = int(
        model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    )

    t_load = time.perf_counter()
    corpus = load_web_corpus(world_dir, image_size)
    images, labels = corpus.images, corpus.labels
    tokens = tokenizer(corpus.captions)
    log.info("loaded %d web images + captions from %s in %.1f s", len(labels), world_dir, time.perf_counter() - t_load)

    # TextTower freezes what it wraps; here we train the very same modules, so unfreeze after wrapping.
    text = TextTower(model, tokenizer)
    model.requires_grad_(True)
    # Channels-last convolutions run ~25% faster on CPU here; the checkpoint is saved in the default layout.
    model.visual.to(memory_format=torch.channels_last)
    model.train()
    normalize = _normalizer(model)
    optimizer = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr, betas=(0.9, 0.98), eps=1e-6)

    n = len(labels)
    batch = min(params.batch_size, n)
    steps_per_epoch = n // batch  # drop the ragged tail: every step sees a full contrastive batch
    total = steps_per_epoch * params.epochs
    if max_steps is not None:
        total = min(total, max_steps)
    warmup = max(1, round(params.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, total, warmup))
    generator = torch.Generator().manual_seed(params.seed)
    max_log_scale = math.log(100.0)
    log.info(
        "pre-training %s on %d web images: %d epochs x %d steps of %d, lr %g, %d torch threads",
        DEMO_MODEL,
        n,
        params.epochs,
        steps_per_epoch,
        batch,
        params.lr,
        torch.get_num_threads(),
    )

    columns = (
        TextColumn("pre-train {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    step, loss_value, recent = 0, float("nan"), []
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("pretrain", total=total, loss=loss_value, ips=0.0, epoch="")
        for epoch in range(params.epochs):
            order = balanced_order(labels, generator) if params.balanced else torch.randperm(n, generator=generator)
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[b * batch : (b + 1) * batch]
                x = normalize(augment(images[idx], generator)).contiguous(memory_format=torch.channels_last)
                image_features = F.normalize(model.encode_image(x), dim=-1)
                text_features = text.encode_tokens(tokens[idx])
                loss = clip_loss(image_features, text_features, model.logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, max_log_scale)  # CLIP's cap on the temperature
                step += 1
                recent = [*recent[-19:], loss.item()]
                loss_value = sum(recent) / len(recent)
                ips = step * batch / (time.perf_counter() - start)
                progress.update(task, advance=1, loss=loss_value, ips=ips, epoch=f"{epoch + 1}/{params.epochs}")
                if step % LOG_EVERY == 0:
                    log.debug("step %d/%d: loss %.3f, %.0f img/s", step, total, loss_value, ips)
            log.info("epoch %d/%d: loss %.3f", epoch + 1, params.epochs, loss_value)
            if step >= total:
                break
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    model.visual.to(memory_format=torch.contiguous_format)
    model.eval()

    figures: dict[str, float] = {
        "final_loss": loss_value,
        "steps": float(step),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,  # over all threads: with other load on the machine, wall time grows
        "images_per_second": step * batch / max(seconds, 1e-9),
        "logit_scale": float(model.logit_scale.exp().item()),
    }
    log.info(
        "pre-training done: %d steps in %.1f s (%.0f img/s), loss %.3f",
        step,
        seconds,
        figures["images_per_second"],
        loss_value,
    )

    _save_checkpoint(model, params, out_path)
    figures["web_fit_top1"] = web_fit_report(model, text, images, labels, corpus.classnames, normalize)
    t_eval = time.perf_counter()
    zero_shot = {ds.name: zero_shot_report(model, preprocess, tokenizer, world_dir, ds) for ds in DATASETS}
    figures["eval_seconds"] = time.perf_counter() - t_eval
    for name, report in zero_shot.items():
        log.info(
            "zero-shot top-1 on %s (benchmark test split): %s",
            name,
            ", ".join(f"{k} {100 * v:.1f}%" for k, v in report.items()),
        )
    log.info("web fit %.1f%%", 100 * figures["web_fit_top1"])
    return {**figures, "zero_shot": zero_shot}


def _save_checkpoint(model: nn.Module, params: DemoBackboneParams, out_path: Path) -> None:
    """An ordinary open_clip checkpoint, written to a temp file and renamed so a crash never leaves half a file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    # Only plain types next to the tensors: open_clip loads with torch.load(weights_only=True).
    checkpoint = {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model": DEMO_MODEL,
        "demo_backbone_params": params.model_dump(),  # no timings: same weights, same content
    }
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved demo backbone checkpoint to %s", out_path)


# --- evaluation ---------------------------------------------------------------------------------------------------


def _classify(
    model: nn.Module, x: torch.Tensor, classifier: torch.Tensor, allowed: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Predicted labels (indices into all classes) restricted to `allowed` classes."""
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            f = F.normalize(model.encode_image(x[i : i + batch_size]), dim=-1)
            preds.append(allowed[(f @ classifier[allowed].T).argmax(dim=-1)])
    return torch.cat(preds)


def _encode_files(
    model: nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], records: Sequence[ImageRecord], batch_size: int
) -> torch.Tensor:
    feats = []
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            x = torch.stack([preprocess(Image.open(r.path).convert("RGB")) for r in records[i : i + batch_size]])
            feats.append(F.normalize(model.encode_image(x), dim=-1))
    return torch.cat(feats)


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def zero_shot_report(
    model: nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    world_dir: Path,
    ds: DemoDataset,
    *,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
    batch_size: int = 256,
) -> dict[str, float]:
    """Zero-shot top-1 of one demo dataset on its benchmark test split, read back through the dataset loaders.

    Base-to-new (CoCoOp): base images against base class names only, new images against new names only, overall
    top-1 per half -> {"base", "new", "hm"}. GZSL (xlsa17): test-seen and test-unseen images together against all
    classes, per-class mean top-1 over seen and over unseen classes -> {"seen", "unseen", "h"}. Fractions in
    [0, 1]; the classifier is the renormalised mean of the template features per class.
    """
    root = Path(world_dir) / ds.name
    model.eval()
    text = TextTower(model, tokenizer)
    if ds.kind == "base_to_new":
        splits = load_demo_dataset(ds.name, root)
        classifier = text.zero_shot_classifier(splits.classnames, list(templates))
        feats = _encode_files(model, preprocess, splits.test, batch_size)
        labels = torch.tensor([r.label for r in splits.test])
        n_base = math.ceil(len(splits.classnames) / 2)
        report: dict[str, float] = {}
        for half, allowed in (("base", torch.arange(n_base)), ("new", torch.arange(n_base, len(splits.classnames)))):
            mask = torch.isin(labels, allowed)
            if not mask.any():
                raise ValueError(f"the test split of {root} has no {half} images")
            preds = allowed[(feats[mask] @ classifier[allowed].T).argmax(dim=-1)]
            report[half] = float((preds == labels[mask]).float().mean())
        report["hm"] = _harmonic(report["base"], report["new"])
        return report
    gzsl = load_xlsa17_dataset(ds.name, root, root / IMAGES_DIR)
    classifier = text.zero_shot_classifier(gzsl.classnames, list(templates))
    records = [*gzsl.test_seen, *gzsl.test_unseen]
    preds = (_encode_files(model, preprocess, records, batch_size) @ classifier.T).argmax(dim=-1)
    labels = torch.tensor([r.label for r in records])
    per_class = {c: float((preds[labels == c] == c).float().mean()) for c in labels.unique().tolist()}
    seen = sum(per_class[c] for c in gzsl.seen) / len(gzsl.seen)
    unseen = sum(per_class[c] for c in gzsl.unseen) / len(gzsl.unseen)
    return {"seen": seen, "unseen": unseen, "h": _harmonic(seen, unseen)}


def web_fit_report(
    model: nn.Module,
    text: TextTower,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    normalize: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Zero-shot top-1 (all classes of all datasets) on the first few web images per class: how well the corpus
    itself was fit."""
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < WEB_FIT_PER_CLASS:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    classifier = text.zero_shot_classifier(list(classnames), list(ZERO_SHOT_TEMPLATES))
    x = normalize(images[keep].float() / 255.0)
    preds = _classify(model, x, classifier, torch.arange(len(classnames)), 256)
    return float((preds == labels[keep]).float().mean())
