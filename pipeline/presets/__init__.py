"""Dataset presets: the per-dataset settings of the reference codes, as data (one JSON file per dataset).

A preset is a partial params tree (same key paths as params.yaml) plus a "source" string saying where its values come
from. Only keys that are null in the params schema by default can be set by a preset; params.yaml keeps the last
word (`load_params(...).for_dataset(name)` fills only the keys params left null). `default.json` sets every key the
schema marks as preset-filled, so every dataset resolves to concrete values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import ExpectedError

PRESET_DIR = Path(__file__).parent
DEFAULT = "default"


class PresetError(ExpectedError, ValueError):
    """A preset name or file that cannot be used; the message names it."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_path(name: str) -> Path:
    """A shipped preset by name, or a JSON file given by path."""
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise PresetError(f"preset file {path} does not exist")
        return path
    shipped = PRESET_DIR / f"{name}.json"
    if not shipped.is_file():
        raise PresetError(f"unknown preset {name!r}; shipped presets: {', '.join(preset_names())} (or a .json path)")
    return shipped


def load_preset(name: str) -> dict[str, Any]:
    """The preset's params tree (its "source" note removed)."""
    path = preset_path(name)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PresetError(f"preset {path} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise PresetError(f"preset {path} must be a JSON object")
    data.pop("source", None)
    return data
