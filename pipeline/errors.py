"""The failures a user can cause and fix (bad files, weights, params, damaged outputs, a full disk); the CLI prints
them as one line without a traceback."""

from __future__ import annotations

import errno

from pipeline.adapters.base import TrainingDiverged
from pipeline.atomic_files import OutputLocked
from pipeline.backbone import BackboneError
from pipeline.datasets.records import DatasetError
from pipeline.demo.weights import PretrainError
from pipeline.extract import CorruptImageError, RankError
from pipeline.feature_store import StoreError
from pipeline.generator import CheckpointMismatch
from pipeline.generator_training import TrainingDiverged as GeneratorDiverged
from pipeline.params import ParamsError
from pipeline.presets import PresetError
from pipeline.results import ResultsError
from pipeline.text_tower import PromptTooLong, UnsupportedTextTower

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    BackboneError,
    CheckpointMismatch,
    CorruptImageError,
    DatasetError,
    GeneratorDiverged,
    OutputLocked,
    ParamsError,
    PresetError,
    PretrainError,
    RankError,
    PromptTooLong,
    ResultsError,
    StoreError,
    TrainingDiverged,
    UnsupportedTextTower,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)

# OS errors that are the machine's state, not a bug: the disk is full, over quota, read-only, or failing.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def is_expected(err: BaseException) -> bool:
    return isinstance(err, EXPECTED_ERRORS) or (isinstance(err, OSError) and err.errno in DISK_ERRNOS)


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
