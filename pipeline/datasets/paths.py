"""Image paths that stay inside their image root.

A split file (or an annotation file, or a directory listing) names images relative to an image root. An entry
that resolves outside that root — `..` components that climb above it, an absolute path, or a symlink whose
target lies outside — is refused with a `DatasetError` naming the entry and the file that listed it: a hostile
or broken dataset must not make the pipeline read arbitrary files.

Cost, with ImageNet's 1.3M files in mind:
- every entry gets string-level normalisation only (`posixpath.normpath`, no syscall); the record's path is the
  normalised one, so what is opened is exactly what was checked (`a/link/../x` is opened as `a/x`);
- symlinks need the filesystem, but not one call per file: the image root is resolved once; each distinct
  directory the entries live in is resolved once (`os.path.realpath`) and listed once (`os.scandir`, whose
  entries carry the file type from the directory listing itself, so no stat per file); only entries that ARE
  symlinks are resolved one by one. Syscalls are proportional to the number of directories (ImageNet: 1,000 per
  split), plus the symlinks, not to the number of images.
The image root itself may be a symlink (datasets often live on another disk): entries are compared with its
resolved location.
"""

from __future__ import annotations

import os
import posixpath
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.datasets.records import DatasetError


def is_within(path: str, root: str) -> bool:
    """`path` equals `root` or lies below it (both already resolved, absolute)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def normalise_entry(entry: str, where: str, image_root: Path) -> str:
    """`entry` as a normalised relative path below the image root (string work only), or a DatasetError.

    `where` names the entry and the file that listed it, e.g. "<split file>: entry train[3] = '...'".
    """
    if not entry or "\x00" in entry:
        raise DatasetError(f"{where}: not a usable path")
    if entry.startswith("/") or os.path.isabs(entry):
        raise DatasetError(f"{where}: absolute path; entries must be relative to the image directory {image_root}")
    norm = posixpath.normpath(entry)
    if norm == ".." or norm.startswith("../"):
        raise DatasetError(f"{where}: resolves outside the image directory {image_root} ('..' climbs above it)")
    if norm == ".":
        raise DatasetError(f"{where}: names the image directory {image_root} itself, not a file in it")
    return norm


class ImageRoot:
    """An image directory and its resolved location; checks that directories and symlinks stay inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.real = os.path.realpath(path)
        self._checked_dirs: set[str] = set()

    def check_dir(self, relative: str, where: Callable[[], str]) -> None:
        """The directory `relative` (normalised, "" = the root) must resolve inside the root; resolved once."""
        if relative in self._checked_dirs:
            return
        real = os.path.realpath(self.path / relative) if relative else self.real
        if not is_within(real, self.real):
            raise DatasetError(
                f"{where()}: directory {relative!r} resolves to {real}, outside the image directory "
                f"{self.path} (resolved: {self.real})"
            )
        self._checked_dirs.add(relative)

    def check_symlink(self, relative: str, where: str) -> None:
        """`relative` (a symlink, or a file in a directory that cannot be listed) must resolve inside the root."""
        real = os.path.realpath(self.path / relative)
        if not is_within(real, self.real):
            raise DatasetError(
                f"{where}: {relative!r} is a symlink to {real}, outside the image directory {self.path} "
                f"(resolved: {self.real})"
            )

    def resolve_listed(self, entries: Sequence[str], where: Callable[[int], str]) -> list[Path]:
        """Absolute paths of `entries` (relative to the root), each refused if it leaves the root.

        `where(i)` describes entry i and the file that listed it, for the error message.
        """
        relative = [normalise_entry(entry, where(i), self.path) for i, entry in enumerate(entries)]
        by_dir: dict[str, list[int]] = defaultdict(list)
        for i, rel in enumerate(relative):
            by_dir[posixpath.dirname(rel)].append(i)
        for directory, indices in by_dir.items():
            self.check_dir(directory, lambda indices=indices: where(indices[0]))
            links: set[str] | None
            try:
                with os.scandir(self.path / directory if directory else self.path) as listing:
                    links = {item.name for item in listing if item.is_symlink()}
            except (FileNotFoundError, NotADirectoryError):
                continue  # missing images are reported where they are read, not here
            except OSError:
                links = None  # not listable (e.g. execute-only): files may still open, so resolve each one
            for i in indices:
                if links is None or posixpath.basename(relative[i]) in links:
                    self.check_symlink(relative[i], where(i))
        return [self.path / rel for rel in relative]

    def list_dir(self, relative: str, keep: Callable[[os.DirEntry[str]], bool], where: str) -> list[Path]:
        """Entries of the directory `relative` that `keep` accepts, in the filesystem's listing order (as
        `os.listdir`: both read the directory with readdir), hidden names skipped; symlinks are followed only
        if their target stays inside the root. `where` names the listing for error messages."""
        self.check_dir(relative, lambda: where)
        directory = self.path / relative if relative else self.path
        paths: list[Path] = []
        try:
            with os.scandir(directory) as listing:
                for item in listing:
                    if item.name.startswith(".") or not keep(item):
                        continue
                    rel = posixpath.join(relative, item.name) if relative else item.name
                    if item.is_symlink():
                        self.check_symlink(rel, f"{where}: entry {item.name!r}")
                    paths.append(directory / item.name)
        except OSError as err:
            raise DatasetError(f"{where}: cannot list {directory}: {err.strerror or err}") from err
        return paths
