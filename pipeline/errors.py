"""The failures a user can cause and fix (bad files, weights, params); the CLI prints them without a traceback."""

from pipeline.backbone import BackboneError
from pipeline.datasets.records import DatasetError
from pipeline.extract import CorruptImageError
from pipeline.feature_store import StoreError
from pipeline.params import ParamsError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    BackboneError,
    CorruptImageError,
    DatasetError,
    StoreError,
    ParamsError,
    FileNotFoundError,
    NotADirectoryError,
)
