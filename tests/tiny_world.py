"""A tiny world for stage tests: two CoOp split-file datasets, one xlsa17 GZSL dataset, a tiny open_clip checkpoint,
and params that run all three experiment families on them in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.demo.xlsa17_writer import write_xlsa17
from tests.conftest import TINY_MODEL
from tests.extract_fixtures import tiny_checkpoint

ALPHA = ["red circle", "blue square", "green star", "yellow moon", "pink heart", "brown cross"]
BETA = ["striped circle", "dotted square", "checkered star", "wavy moon"]
GAMMA = ["red stripes", "blue dots", "green checks", "yellow waves", "pink stripes"]  # last two unseen
GAMMA_SEEN = 3


def _png(path: Path, rng: np.random.Generator, tint: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, size=(36, 36, 3), dtype=np.uint8)
    pixels[..., tint % 3] = np.clip(pixels[..., tint % 3].astype(int) + 60, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def split_file_dataset(root: Path, classnames: list[str], seed: int, counts=(6, 2, 3)) -> Path:
    """CoOp split-file layout (images/<class>/*.png + split_demo.json), as the demo writes it."""
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classnames):
        folder = name.replace(" ", "_")
        for which, n in zip(("train", "val", "test"), counts, strict=True):
            for i in range(n):
                rel = f"{folder}/{which}{i}.png"
                _png(root / "images" / rel, rng, label)
                split[which].append([rel, label, name])
    (root / "split_demo.json").write_text(json.dumps(split))
    return root


def xlsa17_dataset(root: Path, seed: int, trainval: int = 6, test: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    files, labels, tv, ts, tu = [], [], [], [], []
    for label, name in enumerate(GAMMA):
        folder = name.replace(" ", "_")
        n = trainval + test if label < GAMMA_SEEN else test
        for i in range(n):
            rel = f"{folder}/img{i}.png"
            _png(root / "images" / rel, rng, label)
            index = len(files)
            files.append(rel)
            labels.append(label)
            if label >= GAMMA_SEEN:
                tu.append(index)
            elif i < trainval:
                tv.append(index)
            else:
                ts.append(index)
    write_xlsa17(root, GAMMA, files, labels, tv, ts, tu, path_prefix="/BS/authors/data/gamma/images/")
    return root


def build(tmp_path: Path) -> dict[str, Any]:
    """The world under tmp_path/world and params (a dict) that use it."""
    world = tmp_path / "world"
    alpha = split_file_dataset(world / "alpha", ALPHA, seed=1)
    beta = split_file_dataset(world / "beta", BETA, seed=2)
    gamma = xlsa17_dataset(world / "gamma", seed=3)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    spec = {"kind": "demo", "name": None, "image_root": None, "classnames_file": None, "preset": None}
    return {
        "seeds": [1, 2],
        "backbone": {"model": TINY_MODEL, "pretrained": str(ckpt), "device": "cpu", "cache_dir": None},
        "datasets": {
            "alpha": {**spec, "root": str(alpha)},
            "beta": {**spec, "root": str(beta)},
            "gamma": {**spec, "kind": "xlsa17", "root": str(gamma), "image_root": str(gamma / "images")},
        },
        "base_to_new": {"datasets": ["alpha", "beta"]},
        "cross_dataset": {"sources": ["alpha"], "targets": ["beta"]},
        "gzsl": {"datasets": ["gamma"], "val_per_class": 2},
        "fewshot": {"shots": 3, "val_shots": None},
        "extract": {"views": 2, "workers": 0, "batch_size": 16},
        "generator": {"epochs": 2, "encoder_hidden": 32, "bias_hidden": 32},
        "synthesize": {"per_class": 6},
        "finetune": {
            "coop": {"epochs": 2, "batch_size": 4},
            "coop_ship": {"epochs": 2, "batch_size": 4},
            "clip_adapter": {"epochs": 2, "batch_size": 4},
            "tip_adapter_f": {"epochs": 2, "batch_size": 4, "search_steps": [5, 4]},
        },
    }
