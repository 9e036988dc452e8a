"""FeatureStore: cached CLIP features in a Zarr v3 store, written atomically and resumably.

Layout of a store (one directory, a handful of files thanks to sharding):

    zarr.json                      attrs: format, complete, meta (backbone identity, dataset, protocol, ...)
    classifier                     [C, E] float32 zero-shot template-ensemble text classifier
    <split>/features               [N, V, D] float16 (train: view 0 clean, 1.. augmented) or [N, D]
    <split>/labels                 [N] int64 global class index
    <split>/valid                  [N] bool; False for images skipped as corrupt (listed in meta)

A store is built in `<path>.partial` and renamed into place only when every block is written and the
`complete` attribute is set, so nothing half-written is ever taken as complete. Work is done in blocks of
rows aligned with shards; `progress.json` in the partial directory records finished blocks, so a killed run
resumes where it stopped, and the block-aligned batching makes the resumed store identical to an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from pipeline.atomic_files import replace_dir, write_text_atomic
from pipeline.features import LabeledFeatures, TaskFeatures

STORE_FORMAT = 1
CHUNK_ROWS = 256


class StoreError(RuntimeError):
    """A store is missing, incomplete, of another format, or made for another backbone."""


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class StoreBuilder:
    """Builds a store in `<path>.partial`; resumes a previous partial build with the same fingerprint."""

    def __init__(self, path: Path, fingerprint: str, block_rows: int):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.fingerprint = fingerprint
        self.block_rows = block_rows
        self._progress_file = self.partial / "progress.json"
        self.progress: dict[str, list[int]] = {}
        self.resumed = False
        if self._progress_file.exists():
            state = json.loads(self._progress_file.read_text())
            if state.get("fingerprint") == fingerprint:
                self.progress = {k: list(v) for k, v in state["blocks"].items()}
                self.resumed = True
        if not self.resumed:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
            self._save_progress()
        self.group = zarr.open_group(str(self.partial), mode="a", zarr_format=3)

    def _save_progress(self) -> None:
        write_text_atomic(self._progress_file, json.dumps({"fingerprint": self.fingerprint, "blocks": self.progress}))

    def create_split(self, name: str, rows: int, feature_shape: tuple[int, ...]) -> None:
        """Create (or, when resuming, reuse) the arrays of one split."""
        if f"{name}/features" in self.group:
            return
        # One shard per block: a block is written whole, never read-modify-written (zarr allows shards
        # larger than the array, so small splits are fine).
        shard = self.block_rows
        chunk = min(CHUNK_ROWS, shard)
        self.group.create_array(
            f"{name}/features",
            shape=(rows, *feature_shape),
            chunks=(chunk, *feature_shape),
            shards=(shard, *feature_shape),
            dtype="float16",
        )
        for field, dtype, fill in (("labels", "int64", -1), ("valid", "bool", False)):
            self.group.create_array(
                f"{name}/{field}", shape=(rows,), chunks=(chunk,), shards=(shard,), dtype=dtype, fill_value=fill
            )

    def block_done(self, split: str, block: int) -> bool:
        return block in self.progress.get(split, [])

    def write_block(self, split: str, block: int, features: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> None:
        start = block * self.block_rows
        stop = start + len(labels)
        self.group[f"{split}/features"][start:stop] = features.astype(np.float16)
        self.group[f"{split}/labels"][start:stop] = labels
        self.group[f"{split}/valid"][start:stop] = valid
        # Only after the data is on disk is the block recorded as finished.
        self.progress.setdefault(split, []).append(block)
        self._save_progress()

    def write_array(self, name: str, value: np.ndarray) -> None:
        if name in self.group:
            del self.group[name]
        self.group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=value.shape or (1,))
        self.group[name][...] = value

    def finalize(self, meta: Mapping[str, Any]) -> Path:
        self.group.attrs.update({"format": STORE_FORMAT, "meta": dict(meta), "complete": True})
        self._progress_file.unlink()
        replace_dir(self.partial, self.path)
        return self.path


def write_small_store(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write a store that fits in memory (e.g. synthetic features) in one go, atomically."""
    builder = StoreBuilder(path, fingerprint=f"small:{os.getpid()}", block_rows=1 << 30)
    for name, value in arrays.items():
        builder.write_array(name, np.asarray(value))
    return builder.finalize(meta)


class FeatureStore:
    """Read side. Opening checks the store is complete and (optionally) made for the expected backbone."""

    def __init__(self, path: Path, group: zarr.Group, meta: dict[str, Any]):
        self.path = path
        self.group = group
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path, backbone: Mapping[str, Any] | None = None) -> FeatureStore:
        path = Path(path)
        if not (path / "zarr.json").exists():
            hint = " (an interrupted build is in .partial; rerun the stage)" if partial_path(path).exists() else ""
            raise StoreError(f"no feature store at {path}{hint}")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("complete") is not True:
            raise StoreError(f"feature store {path} is incomplete; rerun the stage that writes it")
        if attrs.get("format") != STORE_FORMAT:
            raise StoreError(f"feature store {path} has format {attrs.get('format')}, expected {STORE_FORMAT}")
        store = cls(path, group, attrs["meta"])
        if backbone is not None:
            store.check_backbone(backbone)
        return store

    def check_backbone(self, backbone: Mapping[str, Any]) -> None:
        have = self.meta.get("backbone", {})
        for key in ("model", "weights_id"):
            if have.get(key) != backbone.get(key):
                raise StoreError(
                    f"feature store {self.path} was made with backbone {key}={have.get(key)!r}, but the params "
                    f"now give {backbone.get(key)!r}; rerun extract (dvc repro) for this backbone"
                )

    @property
    def classnames(self) -> list[str]:
        return list(self.meta["classnames"])

    @property
    def splits(self) -> list[str]:
        return [name for name, _ in self.group.groups()]

    def split(self, name: str) -> LabeledFeatures:
        if name not in self.splits:
            raise StoreError(f"feature store {self.path} has no split {name!r} (has {self.splits})")
        valid = np.asarray(self.group[f"{name}/valid"][:], dtype=bool)
        feats = np.asarray(self.group[f"{name}/features"][:])[valid]
        labels = np.asarray(self.group[f"{name}/labels"][:])[valid]
        return LabeledFeatures(torch.from_numpy(feats.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)))

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][...])

    def text_classifier(self) -> torch.Tensor:
        """[C, E] zero-shot template-ensemble classifier, rows L2-normalised."""
        return torch.from_numpy(self.array("classifier").astype(np.float32))

    def task_features(self, synthetic: LabeledFeatures | None = None) -> TaskFeatures:
        return TaskFeatures(
            classnames=self.classnames,
            base=list(self.meta["base_classes"]),
            new=list(self.meta["new_classes"]),
            labeled=list(self.meta["labeled_classes"]),
            text_classifier=self.text_classifier(),
            train=self.split("train"),
            val=self.split("val"),
            test=self.split("test"),
            synthetic=synthetic,
            logit_scale=float(self.meta["backbone"].get("logit_scale", 100.0)),
        )
