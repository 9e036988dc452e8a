"""Writes that are all-or-nothing: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an existing `dst` is swapped out first, then deleted."""
    trash = dst.with_name(dst.name + ".old")
    if trash.exists():
        shutil.rmtree(trash)
    if dst.exists():
        os.replace(dst, trash)
    os.replace(src, dst)
    if trash.exists():
        shutil.rmtree(trash)
