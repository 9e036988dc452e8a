"""Contrastive pre-training of the demo CLIP backbone (`ship-demo-rn`) from scratch on the demo world's web domain.

This stands in for OpenAI's / LAION's pre-training so that the whole pipeline runs offline. It is not part of the DAG:
`ship pretrain-demo` (`make demo-weights`, pipeline/demo/shipping.py) runs it once and ships the result in git as an
ordinary open_clip checkpoint (`save_weights`: float16 safetensors) that `open_clip.create_model_and_transforms(
"ship-demo-rn", pretrained=<path>)` loads like any downloaded one. Only web-domain images and captions are used, of all
classes of all demo datasets (shapes, patterns, zoo); the benchmark domain (where the protocols run) is never seen,
so the zero-shot figures of the shipped weights (pipeline/demo/weights.py) are real transfer figures.

This module holds everything that determines the shipped weights and nothing else (evaluation and provenance live
in pipeline/demo/weights.py): its content is part of the code hash the shipped file's provenance records
(tests/test_demo_weights.py fails when it changes and the weights were not regenerated).

Architecture note: `ship-demo-rn` is a small CLIP ModifiedResNet image tower (RN50-style,
one bottleneck per stage, width 32) with a 4-layer text transformer. Tiny ViTs trained from scratch on ~6k images
learned colour at once but shape barely above chance within a CPU budget of minutes (no convolutional prior), so
the demo's shape words would have been unusable. Everything downstream only sees open_clip's CLIP interface.

CPU-friendly by construction: all web images are decoded once into one uint8 tensor, augmentation is batched tensor
ops, the image tower runs channels-last (~25% faster convolutions on CPU), and the text side runs through
`TextTower.encode_tokens`, which stops the causal transformer at the longest end-of-text token of the batch.
Deterministic on CPU for a given (recipe, web corpus, torch thread count): float reductions depend on how the work is
split over threads, so another thread count or CPU gives other weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
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
from pipeline.demo.world import WEB_CAPTIONS_FILE, WEB_DIR
from pipeline.params.demo import DemoBackboneParams
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

DEMO_MODEL = "ship-demo-rn"
LOG_EVERY = 100  # steps between debug log lines (the progress bar shows every step)


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


def train_backbone(
    params: DemoBackboneParams, world_dir: Path, *, max_steps: int | None = None
) -> tuple[nn.Module, dict[str, float]]:
    """Pre-train `ship-demo-rn` from random init on the web domain of `world_dir` (the recipe: `demo.backbone`).

    Deterministic on CPU for a given (params, world, torch thread count). `max_steps` cuts training short (tests).
    Returns the model (eval mode, float32) and training figures: final loss, steps, seconds (wall and CPU), images/s,
    logit scale, torch threads.
    """
    world_dir = Path(world_dir)
    register_model_configs()
    torch.manual_seed(params.seed)
    log.info("building %s from random init (open_clip warns that no pretrained weights were loaded)", DEMO_MODEL)
    model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL)
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
        "torch_threads": float(torch.get_num_threads()),
    }
    log.info(
        "pre-training done: %d steps in %.1f s (%.0f img/s), loss %.3f",
        step,
        seconds,
        figures["images_per_second"],
        loss_value,
    )
    return model, figures


# --- the shipped file -----------------------------------------------------------------------------------------------

SHIPPED_DTYPE = torch.float16  # halves the file (fp32: 50 MB, half of it the 49,408-token embedding)
METADATA_KEY = "ship_demo"  # safetensors metadata: {"model": ..., "recipe": demo.backbone}


def shipped_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as shipped: floating point ones rounded to float16, the rest (BatchNorm counters) as they are.
    open_clip's `load_state_dict` copies them into the float32 model, so the loaded weights are these values
    exactly (float16 -> float32 is lossless)."""
    return {
        k: (v.detach().to(SHIPPED_DTYPE) if v.is_floating_point() else v.detach().clone()).contiguous()
        for k, v in state_dict.items()
    }


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, recipe: DemoBackboneParams) -> None:
    """Write `state_dict` (rounded by `shipped_state_dict`) as a safetensors file open_clip loads from a local path.
    The recipe goes into the file's metadata. Same tensors and recipe -> same bytes (safetensors has no random
    serialization id, unlike torch.save), so the file's sha256 identifies the weights. Written beside `path` and
    renamed, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # One metadata key: safetensors writes several in hash-map order, which differs from run to run.
    metadata = {METADATA_KEY: json.dumps({"model": DEMO_MODEL, "recipe": recipe.model_dump()}, sort_keys=True)}
    try:
        save_file(shipped_state_dict(state_dict), str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved %s weights (%s) to %s", DEMO_MODEL, SHIPPED_DTYPE, path)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict and recipe of a pre-trained demo checkpoint: a file `save_weights` wrote, or a float32
    open_clip checkpoint (`{"state_dict": ..., "demo_backbone_params": ...}`, as the former in-DAG stage saved it).
    The recipe is None where the file does not record one."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            described = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, described.get("recipe")  # noqa: SIM118
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return dict(checkpoint["state_dict"]), checkpoint.get("demo_backbone_params")
    return dict(checkpoint), None
