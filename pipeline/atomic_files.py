"""Writes that are all-or-nothing: a reader sees the old file or directory or the new one, never half of one.

- `write_text_atomic`, `write_bytes_atomic`, `write_file_atomic`: a file written beside its destination (flushed
  and fsynced), then renamed over it.
- `replace_dir`: a finished directory swapped into place. On Linux, renameat2(RENAME_EXCHANGE) swaps the two
  directory entries in one step, so the destination exists at every instant (a kill -9 anywhere leaves the old or
  the new directory in place); where the call is unavailable, two renames (a kill between them leaves the
  destination missing, never half-written).
- `replacing_dir`: a directory built beside its destination (a `with` block fills it), then swapped in;
  `write_dir_atomic`: the same for a directory of small text files.

Temporaries are hidden siblings named after the process that made them (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`);
a kill -9 can leave one behind, and the next replacement of the same destination removes those whose process is
gone, so nothing stray is ever left to be taken for an output.

`OutputLock` keeps two processes from building the same output at once (fcntl.flock on `<output>.lock`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from pipeline.errors import ExpectedError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
_renameat2: Any = None  # None: not looked up yet; False: unavailable


class OutputLocked(ExpectedError, RuntimeError):
    """Another process is building the same output."""


def _exchange_call() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        with contextlib.suppress(OSError, AttributeError, TypeError):
            fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
    return _renameat2


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE). False where the system or the file
    system cannot; other failures raise OSError."""
    fn = _exchange_call()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside `path` that belongs to this process: `.<name>.<kind>-<pid>`."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove what killed writers of `path` left beside it: `.<name>.tmp-<pid>`, `.<name>.old-<pid>` whose process
    is gone, and a legacy `<name>.old`. Returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        stale = (match is not None and not _pid_alive(int(match.group(1)))) or entry.name == f"{path.name}.old"
        if stale:
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """OS errors raised inside name `path` when they name no file themselves (a full disk fails a write() with
    `[Errno 28] No space left on device` and no file name)."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_file_atomic(path, lambda f: f.write(data))


def write_file_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """`write(f)` fills a temporary file beside `path` (flushed and fsynced), which then replaces `path`. For writers
    that take a file object, e.g. `write_file_atomic(p, lambda f: torch.save(obj, f))`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with naming(path), open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    clean_stale_temps(path)
    return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing whatever `dst` held; `src` is gone afterwards.

    With an existing `dst` the two are exchanged in one step where the system allows it (then the old content,
    now at `src`, is deleted); otherwise `dst` is renamed to a hidden `.<name>.old-<pid>` first."""
    src, dst = Path(src), Path(dst)
    with naming(dst):
        if os.path.lexists(dst):
            if exchange_paths(src, dst):
                _remove(src)  # the old content
            else:
                trash = temp_sibling(dst, "old")
                _remove(trash)
                os.replace(dst, trash)
                os.replace(src, dst)
                _remove(trash)
        else:
            os.replace(src, dst)
    clean_stale_temps(dst)


@contextlib.contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """Yields a new empty directory beside `path` for the block to fill; when the block ends without an error it
    replaces `path` (`replace_dir`), otherwise it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dir_atomic(path: str | Path, files: Mapping[str, str | bytes]) -> Path:
    """Write `files` (relative path -> text, or bytes for binary files) as the whole content of directory `path`:
    built beside it, then swapped in, so a reader sees the old directory or the new one, never a mix."""
    with replacing_dir(path) as tmp, naming(path):
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
    return Path(path)


class OutputLock:
    """An exclusive lock on building `path`: fcntl.flock on `<path>.lock`, held until `release()` (or the process
    ends: the kernel drops a dead process's lock, so a kill -9 never leaves the output locked).

    A second process fails at once with OutputLocked naming the holder's pid. The lock file is removed on release;
    a waiter that locked a file already unlinked retries on the new one, so the lock stays exclusive."""

    _held: ClassVar[dict[str, OutputLock]] = {}  # lock file -> the lock this process holds on it

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> OutputLock:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.file)
        previous = OutputLock._held.get(key)
        if previous is not None and previous._fd is not None:
            # This process already holds it (an earlier build here was interrupted by an exception and is being
            # retried): the new holder takes the lock over.
            self._fd, previous._fd = previous._fd, None
            OutputLock._held[key] = self
            return self
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputLocked(
                    f"{self.path} is being written by another process (pid {holder}, lock {self.file}); "
                    "wait for it to finish or stop it, then rerun"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released and removed this file meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._pid = fd, os.getpid()
        OutputLock._held[key] = self
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None or self._pid != os.getpid():
            return  # not held, or a forked child's inherited copy: the parent releases it
        OutputLock._held.pop(os.path.realpath(self.file), None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)  # before unlocking: nobody can lock this file and think it is the live one
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
