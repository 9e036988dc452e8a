"""One factory for the frozen CLIP: resolves an open_clip architecture name plus a pretrained tag or a local
checkpoint file, and says exactly which weights were used (`weights_id`) so every cache can be keyed to them.

Offline machines are the norm here, so a tag whose weights are neither cached nor reachable fails within
seconds with instructions, instead of open_clip's download retrying for minutes.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from pipeline.errors import ExpectedError
from pipeline.params import BackboneParams
from pipeline.text_tower import TextTower

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_registered = False


class BackboneError(ExpectedError, RuntimeError):
    """The backbone cannot be built as the params ask; the message says what to change."""


def register_model_configs() -> None:
    """Make the project's own architecture configs (the demo backbone) known to open_clip by name."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise BackboneError("backbone.device is 'cuda' but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's tensors in key order: the identity of the weights, whatever file held them."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_tag_file(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return None
    repo_id, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: `pretrained` is what to hand open_clip, `weights_id` what to record."""

    pretrained: str
    weights_id: str | None  # None: known only once loaded (a local file)


def resolve_weights(params: BackboneParams) -> WeightsSource:
    """Check the params name weights that can be had, cheaply and without hanging. Raises BackboneError."""
    register_model_configs()
    if params.model not in open_clip.list_models():
        raise BackboneError(
            f"backbone.model {params.model!r} is not an open_clip architecture "
            f"(see open_clip.list_models(), e.g. ViT-B-16, RN50, ship-demo-rn)"
        )
    how_to = (
        "To use local weights, download an open_clip checkpoint file on a machine with internet and set "
        f"backbone.pretrained to its path (e.g. dvc exp run -S backbone.pretrained=/path/to/{params.model}.pt)."
    )
    path = Path(params.pretrained).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:
            raise _load_failure(params, EOFError("empty file"))
        # Identified by the weights loaded from it (`state_digest`), not by the file's bytes: torch.save writes
        # a random serialization id, so identical weights never give identical files.
        return WeightsSource(str(path), None)
    tags = open_clip.list_pretrained_tags_by_model(params.model)
    looks_like_path = "/" in params.pretrained or params.pretrained.endswith(CHECKPOINT_SUFFIXES)
    if looks_like_path or params.pretrained not in tags:
        what = "checkpoint file not found" if looks_like_path else "unknown pretrained tag"
        known = ", ".join(tags) if tags else "none"
        raise BackboneError(
            f"backbone.pretrained {params.pretrained!r}: {what} (known tags for {params.model}: {known}). {how_to}"
        )
    cfg = open_clip.get_pretrained_cfg(params.model, params.pretrained)
    if cached := _cached_tag_file(cfg, params.cache_dir):
        return WeightsSource(cached, f"tag:{params.model}/{params.pretrained}")
    if not _hub_reachable():
        raise BackboneError(
            f"weights for {params.model}/{params.pretrained} are not cached and huggingface.co cannot be reached "
            f"(offline?). {how_to}"
        )
    return WeightsSource(params.pretrained, f"tag:{params.model}/{params.pretrained}")


@dataclass(frozen=True)
class Backbone:
    """The frozen CLIP and what belongs with it: eval preprocessing, tokenizer, and the identity of both."""

    name: str
    weights_id: str
    model: nn.Module
    preprocess: Any  # torchvision transform: PIL image -> normalised tensor (eval: resize + centre crop)
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    device: torch.device

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size if isinstance(size, int) else size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)  # every open_clip image tower records it

    def text_tower(self) -> TextTower:
        return TextTower(self.model, self.tokenizer)

    @property
    def key(self) -> str:
        """Short identity for checkpoints trained on this backbone's features."""
        return f"{self.name}|{self.weights_id}"

    def identity(self) -> dict[str, Any]:
        """What a feature store records so that later stages can refuse features of another backbone."""
        return {
            "model": self.name,
            "weights_id": self.weights_id,
            "preprocess": self.preprocess_cfg,
            "logit_scale": float(self.model.logit_scale.exp().item()),
        }


def _detail(err: BaseException) -> str:
    """The informative line of an exception message ("Error(s) in loading state_dict for CLIP:" is a header)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _looks_like_checkpoint(path: Path) -> bool:
    """A local file starts like a torch (zip or legacy pickle) or safetensors file; True for a tag (not a file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return True
    return head.startswith((b"PK\x03\x04", b"\x80")) or (len(head) == 9 and head[8:9] == b"{")


def _load_failure(params: BackboneParams, err: BaseException) -> BackboneError:
    """One line saying why `params.pretrained` could not be loaded into `params.model`, and what to change."""
    what = f"backbone.pretrained {params.pretrained!r}"
    text = str(err)
    path = Path(params.pretrained).expanduser()
    if isinstance(err, EOFError):
        reason = "is an empty file (0 bytes)" if _size(path) == 0 else "is truncated (the file ends early)"
    elif isinstance(err, pickle.UnpicklingError) and "weights only" in text.lower():
        reason = (
            "holds pickled Python objects, not plain weights: torch.load(weights_only=True) refused it and ran none "
            "of its code"
        )
    elif isinstance(err, pickle.UnpicklingError | UnicodeDecodeError) or not _looks_like_checkpoint(path):
        reason = f"is not a torch checkpoint ({type(err).__name__}: {_detail(err)})"
    elif isinstance(err, AssertionError) or any(
        key in text for key in ("size mismatch", "Missing key(s)", "Unexpected key(s)", "shape")
    ):
        reason = (
            f"does not fit the {params.model} architecture; is it another architecture's checkpoint? ({_detail(err)})"
        )
    else:
        reason = f"could not be loaded into {params.model} ({type(err).__name__}: {_detail(err)})"
    return BackboneError(
        f"{what} {reason}. Point backbone.pretrained at an open_clip checkpoint of {params.model}, or set "
        "backbone.model to the checkpoint's architecture (OpenAI weights need the '-quickgelu' variant name)"
    )


def load_backbone(params: BackboneParams, device: torch.device | None = None) -> Backbone:
    source = resolve_weights(params)
    device = device or resolve_device(params.device)
    log.info("loading backbone %s (%s) on %s", params.model, source.weights_id or source.pretrained, device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            params.model, pretrained=source.pretrained, device=device, cache_dir=params.cache_dir
        )
    except Exception as err:  # open_clip and torch.load fail in many ways on a file that is not these weights
        raise _load_failure(params, err) from err
    model.eval().requires_grad_(False)
    weights_id = source.weights_id or f"state-sha256:{state_digest(model)}"
    cfg = dict(model.visual.preprocess_cfg)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return Backbone(
        name=params.model,
        weights_id=weights_id,
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(params.model),
        preprocess_cfg=cfg,
        device=device,
    )
