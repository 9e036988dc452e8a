"""The failures a user can cause and fix (bad files, weights, params, damaged outputs, a full disk); the commands
print them as one line without a traceback.

Each such error class derives from `ExpectedError` where it is defined, so this module imports nothing of the
project: every stage runs it, and a stage's code dependencies stay those of the work it does.
"""

from __future__ import annotations

import errno


class ExpectedError(Exception):
    """Mixed into every error a user can cause and fix: shown as one line, not a traceback."""


# Plain OS errors that name a file the user gave or must create.
_FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)

# OS errors that are the machine's state, not a bug: the disk is full, over quota, read-only, or failing.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def is_expected(err: BaseException) -> bool:
    return isinstance(err, (ExpectedError, *_FILE_ERRORS)) or (isinstance(err, OSError) and err.errno in DISK_ERRNOS)


def describe(err: BaseException) -> str:
    """One line for the user: the message, with the OS error's file name where the message lacks it."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        where = f" writing {err.filename}" if err.filename else ""
        fix = {
            errno.ENOSPC: "free some disk space and rerun (a killed extraction resumes where it stopped)",
            errno.EDQUOT: "free some space within your quota and rerun",
            errno.EROFS: "the file system is read-only; write the outputs elsewhere",
            errno.EIO: "the disk reported an I/O error; check the device",
        }[err.errno]
        return f"{err.strerror or 'OS error'} ([Errno {err.errno}]){where}; {fix}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text
