"""Feature-store integrity: what a completed store records about itself and the checks that rely on it, apart from
building and reading a store (pipeline/feature_store.py). Also the conventions both sides share: the root zarr.json,
the format number, where a store is built before it is complete, and StoreError.

When a store is completed, its root attributes record a manifest of every file it holds (but the root zarr.json
itself): relative path -> size and sha256, and a digest of the attributes. Zarr reads a missing chunk file as fill
values and a flipped byte may decode to other numbers without an error, so:
- opening checks the attributes' digest, and that every listed file is there with its size and no other file is
  (cheap: no file is read);
- reading an array first checks the sha256 of its files (its data is read anyway), and any decode error becomes a
  StoreError naming the store and the stage that rebuilds it;
- `verify_store` (`ship verify`) checks everything and lists every problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import ExpectedError
from pipeline.file_hashes import file_sha256, tree_files
from pipeline.layout import rebuild_hint

STORE_FORMAT = 3  # 3: integrity manifest and attribute digest
ROOT_META = "zarr.json"


# Which DVC stage writes a store, from its path (pipeline/layout.py's conventions; dvc.yaml's matrix names).
class StoreError(ExpectedError, RuntimeError):
    """A store is missing, incomplete, damaged, of another format, or made for another backbone."""


def partial_path(path: Path) -> Path:
    """Where the store at `path` is built until it is complete (StoreBuilder); named in the hint for a missing store."""
    return path.with_name(path.name + ".partial")


def build_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size": bytes, "sha256": hex}} of every file under `root` but the root zarr.json."""
    files = tree_files(root, exclude=ROOT_META)
    return {rel: {"size": p.stat().st_size, "sha256": file_sha256(p)} for rel, p in files.items()}


def attrs_digest(attrs: Mapping[str, Any]) -> str:
    """SHA-256 of the root attributes but the digest itself, as canonical JSON."""
    canonical = json.dumps({k: v for k, v in attrs.items() if k != "digest"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_attrs(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    """The opened group and its root attributes, checked for completeness, format and digest."""
    if not (path / ROOT_META).exists():
        hint = " (an interrupted build is in .partial; rerun the stage)" if partial_path(path).exists() else ""
        raise StoreError(f"no feature store at {path}{hint}; {rebuild_hint(path)}")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except Exception as err:  # zarr raises many types for a damaged zarr.json
        raise StoreError(f"feature store {path} cannot be opened ({first_line(err)}); {rebuild_hint(path)}") from None
    if attrs.get("complete") is not True:
        raise StoreError(f"feature store {path} is incomplete; {rebuild_hint(path)}")
    if attrs.get("format") != STORE_FORMAT:
        raise StoreError(
            f"feature store {path} has format {attrs.get('format')}, expected {STORE_FORMAT}; {rebuild_hint(path)}"
        )
    if not isinstance(attrs.get("manifest"), dict) or attrs.get("digest") != attrs_digest(attrs):
        raise StoreError(f"feature store {path} is damaged: its zarr.json was altered; {rebuild_hint(path)}")
    return group, attrs


def first_line(err: BaseException) -> str:
    """An exception as one short line, for messages (zarr's and codecs' errors can run over many lines)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def check_files(path: Path, manifest: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Cheap structural check: every listed file present with its size, no file that is not listed."""
    problems = []
    present = tree_files(path, exclude=ROOT_META)
    for rel, entry in manifest.items():
        file = present.get(rel)
        if file is None:
            problems.append(f"{rel} is missing")
        elif (size := file.stat().st_size) != entry.get("size"):
            problems.append(f"{rel} has {size} bytes, expected {entry.get('size')}")
    problems += [f"{rel} is not part of the store" for rel in present if rel not in manifest]
    return problems


def check_contents(
    path: Path, manifest: Mapping[str, Mapping[str, Any]], prefix: str = "", metadata_only: bool = False
) -> list[str]:
    """sha256 of every listed file under `prefix` (that is present; only zarr.json files if `metadata_only`)
    against the manifest."""
    problems = []
    for rel, entry in manifest.items():
        if not rel.startswith(prefix) or (metadata_only and not rel.endswith(ROOT_META)):
            continue
        file = path / rel
        if file.is_file() and file_sha256(file) != entry.get("sha256"):
            problems.append(f"{rel} does not match its checksum (altered)")
    return problems


def verify_store(path: str | Path) -> list[str]:
    """Every problem of the store at `path`, one line each (empty: the store is sound). Reads every file."""
    path = Path(path)
    try:
        group, attrs = load_attrs(path)
    except StoreError as err:
        return [str(err)]
    manifest = attrs["manifest"]
    problems = check_files(path, manifest) + check_contents(path, manifest)
    if not problems:
        for name, array in _all_arrays(group):
            try:
                np.asarray(array[...])
            except Exception as err:
                problems.append(f"array {name} cannot be decoded ({first_line(err)})")
    return problems


def _all_arrays(group: zarr.Group) -> list[tuple[str, Any]]:
    return sorted((name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def damaged(path: Path, problems: list[str]) -> StoreError:
    """The error for a store with `problems`: the first one named, the others counted."""
    more = f" (and {len(problems) - 1} more problem(s): ship verify {path})" if len(problems) > 1 else ""
    return StoreError(f"feature store {path} is damaged: {problems[0]}{more}; {rebuild_hint(path)}")
