"""params.yaml and this package are one schema: every key is validated, unknown keys are rejected.

Each section lives in its own module; `Params` composes them. `load_params` is the one entry point every
stage and every `ship` command goes through before doing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.params.backbone import BackboneParams
from pipeline.params.base import Section
from pipeline.params.dataset import COOP_DATASETS, DatasetParams
from pipeline.params.demo import DemoBackboneParams, DemoParams, DemoWorldParams
from pipeline.params.extract import ExtractParams
from pipeline.params.finetune import (
    ClipAdapterParams,
    CoOpParams,
    FinetuneParams,
    Method,
    TipAdapterFParams,
)
from pipeline.params.generator import GeneratorParams, SynthesizeParams

__all__ = [
    "COOP_DATASETS",
    "BackboneParams",
    "ClipAdapterParams",
    "CoOpParams",
    "DatasetParams",
    "DemoBackboneParams",
    "DemoParams",
    "DemoWorldParams",
    "ExtractParams",
    "FinetuneParams",
    "GeneratorParams",
    "Method",
    "Params",
    "ParamsError",
    "SynthesizeParams",
    "TipAdapterFParams",
    "load_params",
]


class Params(Section):
    backbone: BackboneParams
    dataset: DatasetParams = DatasetParams()
    demo: DemoParams = DemoParams()
    extract: ExtractParams = ExtractParams()
    generator: GeneratorParams = GeneratorParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    finetune: FinetuneParams = FinetuneParams()


class ParamsError(ValueError):
    """Bad params: the message names the file, each bad key path and the value found there."""


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _format_errors(source: str, data: dict[str, Any], err: ValidationError) -> str:
    lines = [f"invalid params in {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {_lookup(data, loc)!r})")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif isinstance(value := _lookup(data, loc), dict):  # a cross-field check: its message names the keys
            lines.append(f"  {key}: {e['msg']}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {value!r})")
    return "\n".join(lines)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3, 0.1, [1,2] work)."""
    if "=" not in override:
        raise ParamsError(f"override {override!r} is not of the form key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override {override!r}: {key} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def parse_params(data: Any, source: str = "<params>") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"invalid params in {source}: the top level must be a mapping")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(source, data, err)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    for override in overrides:
        apply_override(data, override)
    return parse_params(data, str(path))
