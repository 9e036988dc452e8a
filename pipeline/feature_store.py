"""FeatureStore: cached CLIP features in a Zarr v3 store, written atomically and resumably.

Layout of a store (one directory, a handful of files thanks to sharding):

    zarr.json                      attrs: format, complete, meta (kind, backbone identity, dataset, protocol, ...)
    classifiers/<name>             [C, E] float32 zero-shot text classifiers (eval stores)
    <split>/features               [N, V, D] float16 L2-normalised (train: view 0 clean, 1.. augmented) or [N, D]
    <split>/norms                  [N, V] or [N] float32 norm of the raw encoder output (raw = features * norms)
    <split>/labels                 [N] int64 class index (into meta.classnames)
    <split>/valid                  [N] bool; False for images skipped as corrupt (listed in meta)

Kinds (meta.kind): "eval" (a dataset's test split(s) + classifiers, shared by every seed and experiment), "train"
(one seed's few-shot draw: train with views, val), "synthetic" (generated features of label-only classes).

A store is built in `<path>.partial` and swapped into place only when every block is written and the `complete`
attribute is set, so nothing half-written is ever taken as complete. Work is done in blocks of rows aligned with
shards; `progress.json` in the partial directory records finished blocks, so a killed run resumes where it stopped,
and the block-aligned batching makes the resumed store identical to an uninterrupted one. One process at a time
builds a store (an OS lock on `<path>.lock`); a second fails at once with a message naming the first.

Several processes (the ranks of one extraction, see pipeline/extract.py) may build one store together: rank 0 holds
the lock, prepares the partial directory and its arrays, and alone finalizes; every rank writes whole blocks (each
its own shard file, so ranks never write the same file) and records them in its own progress file (`progress.json`
for rank 0, `progress.rank<r>.json` for rank r). The blocks done are the union of every progress file, whichever
number of ranks wrote them, so a killed run resumes with any number of ranks.
Integrity (the manifest a completed store records, the checks on opening and reading, `ship verify`):
pipeline/store_integrity.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from pipeline.atomic_files import OutputLock, naming, replace_dir, write_text_atomic
from pipeline.features import LabeledFeatures
from pipeline.store_integrity import (
    STORE_FORMAT,
    StoreError,
    attrs_digest,
    build_manifest,
    check_contents,
    check_files,
    damaged,
    first_line,
    load_attrs,
    partial_path,
    rebuild_hint,
)

CHUNK_ROWS = 256
PROGRESS = "progress.json"
_ZARR_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's own write-then-rename temporaries
_OUR_TEMP = re.compile(r"^\..+\.(?:tmp|old)-\d+$")


def _remove_temporaries(root: Path) -> None:
    """Temporaries a killed writer can leave inside a partial store (zarr's and ours); never part of a store."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if _ZARR_TEMP.search(name) or _OUR_TEMP.match(name):
                (Path(dirpath) / name).unlink(missing_ok=True)


def progress_file_name(rank: int) -> str:
    """The progress file of one rank in a partial store (rank 0's is the single-process `progress.json`)."""
    return PROGRESS if rank == 0 else f"progress.rank{rank}.json"


def _progress_files(partial: Path) -> list[Path]:
    """Every rank's progress file in a partial store."""
    return sorted(partial.glob("progress*.json")) if partial.is_dir() else []


def _union(states: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    out: dict[str, set[int]] = {}
    for blocks in states:
        for split, done in blocks.items():
            out.setdefault(split, set()).update(done)
    return {split: sorted(done) for split, done in out.items()}


def _read_progress(path: Path) -> dict[str, Any] | None:
    """progress.json as {"fingerprint": str, "blocks": {split: [int]}}, or None when missing or unusable (a file
    torn or garbled by a crash or by hand restarts the partial build rather than blocking it)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        return None
    blocks = state.get("blocks", {})
    if not isinstance(blocks, dict):
        return None
    for split, done in blocks.items():
        if not isinstance(split, str) or not isinstance(done, list) or not all(type(b) is int for b in done):
            return None
    return {"fingerprint": state["fingerprint"], "blocks": {k: list(v) for k, v in blocks.items()}}


class StoreBuilder:
    """Builds a store in `<path>.partial`; resumes a previous partial build with the same fingerprint.

    Holds an exclusive lock on building `path` from construction to `finalize` (`lock=False` for a process that
    writes blocks into a build whose lock another process of the same run holds).

    `rank` > 0: a further rank of a multi-process build joins the partial build that rank 0 of the same run has
    prepared (never resets or cleans it, never locks) and records its blocks in its own progress file."""

    def __init__(self, path: Path, fingerprint: str, block_rows: int, *, lock: bool = True, rank: int = 0):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.fingerprint = fingerprint
        self.block_rows = block_rows
        self.rank = rank
        self._progress_file = self.partial / progress_file_name(rank)
        self.progress: dict[str, list[int]] = {}  # blocks done, by any rank
        self._own: dict[str, list[int]] = {}  # blocks recorded in this rank's file (by any run)
        self.resumed = False
        self._lock = OutputLock(self.path).acquire() if lock and rank == 0 else None
        try:
            states = self._read_states()
            if rank != 0:
                if not states:
                    raise StoreError(
                        f"rank {rank}: no partial build of {self.path} prepared by rank 0 with this fingerprint"
                    )
                self.group = zarr.open_group(str(self.partial), mode="a", zarr_format=3)
                self.progress = _union(list(states.values()))
                self._own = states.get(self._progress_file.name, {})
                self.resumed = True
                return
            if states:
                try:
                    _remove_temporaries(self.partial)
                    self.group = zarr.open_group(str(self.partial), mode="a", zarr_format=3)
                    self.progress = _union(list(states.values()))
                    self._own = states.get(self._progress_file.name, {})
                    self.resumed = True
                except Exception:  # a partial build too damaged to resume: start it over
                    self.resumed = False
            if not self.resumed:
                with naming(self.partial):
                    if self.partial.exists():
                        shutil.rmtree(self.partial)
                    self.partial.mkdir(parents=True)
                    self._save_progress()
                    self.group = zarr.open_group(str(self.partial), mode="a", zarr_format=3)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the build lock (the partial build stays, to be resumed)."""
        if self._lock is not None:
            self._lock.release()

    def _read_states(self) -> dict[str, dict[str, list[int]]]:
        """Progress file name -> blocks, for every rank's progress file made for this fingerprint (a file torn or
        garbled by a crash counts as none: its blocks are redone)."""
        states = {}
        for file in _progress_files(self.partial):
            state = _read_progress(file)
            if state is not None and state["fingerprint"] == self.fingerprint:
                states[file.name] = state["blocks"]
        return states

    def reload_progress(self) -> dict[str, list[int]]:
        """Re-read every rank's progress file: the blocks done so far by all of them."""
        self.progress = _union(list(self._read_states().values()))
        return self.progress

    def _save_progress(self) -> None:
        write_text_atomic(self._progress_file, json.dumps({"fingerprint": self.fingerprint, "blocks": self._own}))

    def _forget_split(self, name: str) -> None:
        """Blocks of `name` recorded without its arrays (a kill between creating them): every rank's record of
        them goes, so they are all redone."""
        self.progress.pop(name, None)
        self._own.pop(name, None)
        for file in _progress_files(self.partial):
            state = _read_progress(file)
            if state is not None and state["blocks"].pop(name, None) is not None:
                write_text_atomic(file, json.dumps(state))

    def create_split(self, name: str, rows: int, views: int | None, dim: int) -> None:
        """Create (or, when resuming, reuse) the arrays of one split; `views` None for one feature per image."""
        # One shard per block: a block is written whole, never read-modify-written (zarr allows shards
        # larger than the array, so small splits are fine).
        shard = self.block_rows
        chunk = min(CHUNK_ROWS, shard)
        per_row = (views,) if views is not None else ()
        specs: dict[str, dict[str, Any]] = {
            "features": {"shape": (rows, *per_row, dim), "dtype": "float16", "fill_value": 0.0, "width": (dim,)},
            "norms": {"shape": (rows, *per_row), "dtype": "float32", "fill_value": 0.0, "width": ()},
            "labels": {"shape": (rows,), "dtype": "int64", "fill_value": -1, "width": None},
            "valid": {"shape": (rows,), "dtype": "bool", "fill_value": False, "width": None},
        }
        for field, spec in specs.items():
            key = f"{name}/{field}"
            if key in self.group:  # a resumed build: keep what matches (each array is created on its own, so a
                existing = self.group[key]  # kill between two creations leaves the others to be made now)
                if existing.shape == spec["shape"] and existing.dtype == np.dtype(spec["dtype"]):
                    continue
                del self.group[key]
            if name in self.progress:  # blocks recorded without this array: redo them all
                self._forget_split(name)
            tail = (*per_row, *spec["width"]) if spec["width"] is not None else ()
            with naming(self.partial):
                self.group.create_array(
                    key,
                    shape=spec["shape"],
                    chunks=(chunk, *tail),
                    shards=(shard, *tail),
                    dtype=spec["dtype"],
                    fill_value=spec["fill_value"],
                )

    def block_done(self, split: str, block: int) -> bool:
        return block in self.progress.get(split, [])

    def write_block(
        self, split: str, block: int, features: np.ndarray, norms: np.ndarray, labels: np.ndarray, valid: np.ndarray
    ) -> None:
        start = block * self.block_rows
        stop = start + len(labels)
        with naming(self.partial):
            self.group[f"{split}/features"][start:stop] = features.astype(np.float16)
            self.group[f"{split}/norms"][start:stop] = norms.astype(np.float32)
            self.group[f"{split}/labels"][start:stop] = labels
            self.group[f"{split}/valid"][start:stop] = valid
        # Only after the data is on disk is the block recorded as finished.
        if block not in self.progress.setdefault(split, []):
            self.progress[split].append(block)
        if block not in self._own.setdefault(split, []):
            self._own[split].append(block)
        self._save_progress()

    def write_array(self, name: str, value: np.ndarray) -> None:
        with naming(self.partial):
            if name in self.group:
                del self.group[name]
            self.group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=value.shape or (1,))
            self.group[name][...] = value

    def finalize(self, meta: Mapping[str, Any]) -> Path:
        """Record meta and the integrity manifest, mark the store complete and swap it into place."""
        with naming(self.partial):
            for file in _progress_files(self.partial):  # every rank's
                file.unlink(missing_ok=True)
            _remove_temporaries(self.partial)
            manifest = build_manifest(self.partial)
            attrs = {"format": STORE_FORMAT, "meta": dict(meta), "manifest": manifest, "complete": True}
            self.group.attrs.update(attrs)
            # The digest covers the attributes as stored (read back), so it is checked against exactly that.
            stored = dict(zarr.open_group(str(self.partial), mode="r", zarr_format=3).attrs)
            self.group.attrs.update({"digest": attrs_digest(stored)})
            replace_dir(self.partial, self.path)
        self.release()
        return self.path


def write_small_store(path: Path, splits: Mapping[str, LabeledFeatures], meta: Mapping[str, Any]) -> Path:
    """Write a store that fits in memory (e.g. synthetic features) in one go, atomically."""
    builder = StoreBuilder(path, fingerprint=f"small:{os.getpid()}", block_rows=1 << 30)
    try:
        for name, feats in splits.items():
            norms = feats.norms if feats.norms is not None else torch.ones(feats.features.shape[:-1])
            builder.write_array(f"{name}/features", feats.features.cpu().numpy().astype(np.float16))
            builder.write_array(f"{name}/norms", norms.cpu().numpy().astype(np.float32))
            builder.write_array(f"{name}/labels", feats.labels.cpu().numpy().astype(np.int64))
            builder.write_array(f"{name}/valid", np.ones(len(feats), dtype=bool))
        return builder.finalize(meta)
    finally:
        builder.release()


class FeatureStore:
    """Read side. Opening checks the store is complete and intact (see the module docstring) and (optionally) made
    for the expected backbone."""

    def __init__(self, path: Path, group: zarr.Group, meta: dict[str, Any], manifest: dict[str, Any] | None = None):
        self.path = path
        self.group = group
        self.meta = meta
        self.manifest = manifest
        self._verified: set[str] = set()

    @classmethod
    def open(cls, path: str | Path, backbone: Mapping[str, Any] | None = None, kind: str | None = None) -> FeatureStore:
        path = Path(path)
        group, attrs = load_attrs(path)
        manifest = attrs["manifest"]
        problems = check_files(path, manifest)
        # Metadata files are tiny and zarr trusts them for shapes and codecs: their contents are checked now.
        problems += check_contents(path, manifest, metadata_only=True)
        if problems:
            raise damaged(path, problems)
        store = cls(path, group, attrs["meta"], manifest)
        if kind is not None and store.kind != kind:
            raise StoreError(f"{path} is a {store.kind!r} store, expected a {kind!r} store")
        if backbone is not None:
            store.check_backbone(backbone)
        return store

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "?"))

    def check_backbone(self, backbone: Mapping[str, Any]) -> None:
        have = self.meta.get("backbone", {})
        for key in ("model", "weights_id"):
            if have.get(key) != backbone.get(key):
                raise StoreError(
                    f"feature store {self.path} was made with backbone {key}={have.get(key)!r}, but the params "
                    f"now give {backbone.get(key)!r}; {rebuild_hint(self.path)} for this backbone"
                )

    @property
    def classnames(self) -> list[str]:
        return list(self.meta["classnames"])

    @property
    def splits(self) -> list[str]:
        return sorted(name for name, _ in self.group.groups() if f"{name}/features" in self.group)

    def split(self, name: str) -> LabeledFeatures:
        if name not in self.splits:
            raise StoreError(f"feature store {self.path} has no split {name!r} (has {self.splits})")
        valid = np.asarray(self.array(f"{name}/valid"), dtype=bool)
        feats = np.asarray(self.array(f"{name}/features"))[valid]
        norms = np.asarray(self.array(f"{name}/norms"))[valid]
        labels = np.asarray(self.array(f"{name}/labels"))[valid]
        return LabeledFeatures(
            torch.from_numpy(feats.astype(np.float32)),
            torch.from_numpy(labels.astype(np.int64)),
            torch.from_numpy(norms.astype(np.float32)),
        )

    def array(self, name: str) -> np.ndarray:
        if name not in self.group:
            raise StoreError(f"feature store {self.path} has no array {name!r}; {rebuild_hint(self.path)}")
        if self.manifest is not None and name not in self._verified:
            problems = check_contents(self.path, self.manifest, prefix=f"{name}/")
            if problems:
                raise damaged(self.path, problems)
            self._verified.add(name)
        try:
            return np.asarray(self.group[name][...])
        except Exception as err:  # zstd errors, shard checksum mismatches, truncated files
            raise StoreError(
                f"feature store {self.path} is damaged: {name} cannot be read ({first_line(err)}); "
                f"{rebuild_hint(self.path)}"
            ) from None

    def classifier(self, name: str = "zeroshot") -> torch.Tensor:
        """[C, E] zero-shot text classifier, rows L2-normalised."""
        return torch.from_numpy(self.array(f"classifiers/{name}").astype(np.float32))

    @property
    def classifier_names(self) -> list[str]:
        return sorted(self.meta.get("classifiers", {}))

    @property
    def logit_scale(self) -> float:
        return float(self.meta["backbone"].get("logit_scale", 100.0))
