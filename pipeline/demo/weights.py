"""The shipped demo weights: where they live, what they were made from (provenance.json), and how good they are.

`ship pretrain-demo` (`make demo-weights`) pre-trains `ship-demo-rn` once, outside the DAG, and writes two files into
`data/demo/backbone/`, both tracked in git:

- `ship-demo-rn.safetensors`: an ordinary open_clip checkpoint (float16; open_clip copies it into the float32
  model), which `params.yaml`'s `backbone.pretrained` names and `pipeline/backbone.py` loads like any local file;
- `provenance.json`: the recipe (`demo.backbone`), the web corpus it saw (the `demo.world` keys that decide the
  web images, and a digest of those images), the git revision, the file's sha256, a hash of the code that decides
  the weights (`PRETRAINING_CODE`), the training figures and the quality figures of the weights as shipped.

tests/test_demo_weights.py holds the two together: it fails when the recipe, the web corpus keys or the code
changed without the file being regenerated, and when the file is not the one provenance.json describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.datasets.coop import load_demo_dataset
from pipeline.datasets.records import ImageRecord
from pipeline.datasets.xlsa17 import load_xlsa17_dataset
from pipeline.demo.pretrain import DEMO_MODEL, load_web_corpus
from pipeline.demo.world import DATASETS, IMAGES_DIR, WEB_DIR, DemoDataset
from pipeline.params.demo import DemoWorldParams
from pipeline.text_tower import TextTower

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIR = Path("data/demo/backbone")  # relative to the repository root, as params.yaml names it
WEIGHTS_FILE = f"{DEMO_MODEL}.safetensors"
PROVENANCE_FILE = "provenance.json"
# The files whose content decides the trained weights (relative to the repository root): the training loop, data
# loading and export; the world's rendering and captions (the web corpus); the text tower's forward pass used in
# training; the architecture. A change to any of them means: regenerate the weights (`make demo-weights`), or show
# that training is bit for bit unchanged and re-export with `ship pretrain-demo --from-checkpoint`.
PRETRAINING_CODE: tuple[str, ...] = (
    "pipeline/demo/pretrain.py",
    "pipeline/demo/world.py",
    "pipeline/demo/catalogue.py",
    "pipeline/demo/render.py",
    "pipeline/demo/captions.py",
    "pipeline/text_tower.py",
    f"pipeline/model_configs/{DEMO_MODEL}.json",
)
# The demo.world keys that decide the web images and their order (the web domain ignores new_classes and shift).
WEB_CORPUS_KEYS: tuple[str, ...] = ("seed", "image_size", "web_per_class")
# Prompt ensemble for a second set of zero-shot figures (CLIP-style; "a photo of a {}." is CoOp's initialisation).
ENSEMBLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "clip art of a {}.",
)


class PretrainError(RuntimeError):
    """`ship pretrain-demo` cannot do what it was asked (e.g. weights of another recipe); the message says why."""


# --- identity ---------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_hashes(root: Path = ROOT) -> dict[str, str]:
    """sha256 of each file of `PRETRAINING_CODE`."""
    return {rel: file_sha256(root / rel) for rel in PRETRAINING_CODE}


def code_digest(hashes: Mapping[str, str]) -> str:
    """One hash over the files' paths and hashes (order-independent)."""
    digest = hashlib.sha256()
    for rel in sorted(hashes):
        digest.update(f"{rel}\0{hashes[rel]}\n".encode())
    return digest.hexdigest()


def web_corpus_params(world: DemoWorldParams) -> dict[str, Any]:
    return {key: getattr(world, key) for key in WEB_CORPUS_KEYS}


def web_corpus_digest(world_dir: Path) -> tuple[int, str]:
    """(file count, sha256 over every web-domain file's relative path and bytes) of a generated world."""
    digest = hashlib.sha256()
    web = Path(world_dir) / WEB_DIR
    files = sorted((p.relative_to(web).as_posix(), p) for p in web.rglob("*") if p.is_file())
    for rel, path in files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return len(files), digest.hexdigest()


def git_revision(root: Path = ROOT) -> dict[str, Any]:
    """The commit checked out, and whether the pre-training code differs from it (None where git is unavailable)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", *PRETRAINING_CODE)
    return {"commit": commit, "code_modified": None if status is None else bool(status)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_provenance(directory: Path = ROOT / SHIPPED_DIR) -> dict[str, Any]:
    return json.loads((Path(directory) / PROVENANCE_FILE).read_text())


# --- quality figures ----------------------------------------------------------------------------------------------


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _encode_files(
    model: nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], records: Sequence[ImageRecord], batch_size: int
) -> torch.Tensor:
    feats = []
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            x = torch.stack([preprocess(Image.open(r.path).convert("RGB")) for r in records[i : i + batch_size]])
            feats.append(F.normalize(model.encode_image(x), dim=-1))
    return torch.cat(feats)


def zero_shot_report(
    model: nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    world_dir: Path,
    ds: DemoDataset,
    *,
    templates: Sequence[str],
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


def web_top1(
    model: nn.Module,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    world_dir: Path,
    templates_sets: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """Zero-shot top-1 over every web image (against all classes of all datasets), per set of templates: how well
    the pre-training corpus itself was fit."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    corpus = load_web_corpus(world_dir, int(size))
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(corpus.labels), batch_size):
            x = (corpus.images[i : i + batch_size].float() / 255.0 - mean) / std
            feats.append(F.normalize(model.encode_image(x), dim=-1))
    features = torch.cat(feats)
    text = TextTower(model, tokenizer)
    out = {}
    for name, templates in templates_sets.items():
        classifier = text.zero_shot_classifier(corpus.classnames, list(templates))
        out[name] = float(((features @ classifier.T).argmax(dim=-1) == corpus.labels).float().mean())
    return out


def quality_figures(
    model: nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    world_dir: Path,
    preset_templates: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Figures of a loaded backbone on a generated world: logit scale, web top-1 and each dataset's zero-shot top-1
    on its benchmark test split, with each dataset's preset templates (what the DAG's zero-shot method uses) and with
    `ENSEMBLE_TEMPLATES`. `preset_templates`: dataset name -> templates."""
    model.eval()
    web_preset = sorted({t for ts in preset_templates.values() for t in ts})
    return {
        "logit_scale": float(model.logit_scale.exp().item()),
        "web_top1": web_top1(model, tokenizer, world_dir, {"preset": web_preset, "ensemble": ENSEMBLE_TEMPLATES}),
        "zero_shot": {
            ds.name: zero_shot_report(model, preprocess, tokenizer, world_dir, ds, templates=preset_templates[ds.name])
            for ds in DATASETS
        },
        "zero_shot_ensemble": {
            ds.name: zero_shot_report(model, preprocess, tokenizer, world_dir, ds, templates=ENSEMBLE_TEMPLATES)
            for ds in DATASETS
        },
    }
