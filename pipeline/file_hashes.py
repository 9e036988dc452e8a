"""Hashing the files of a directory tree: the one place that lists a tree and hashes a file, for the manifests that
stand for a tree's content (the demo world's manifest.json, a feature store's integrity manifest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (store shards can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_files(root: Path, *, exclude: str) -> dict[str, Path]:
    """Relative POSIX path -> path of every file under `root` but the one at relative path `exclude` (the manifest
    that describes the others), sorted by relative path. Symlinked directories are not entered."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel != exclude:
                out[rel] = full
    return dict(sorted(out.items()))
