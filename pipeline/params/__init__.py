"""params.yaml and this package are one schema: every key is validated, unknown keys are rejected.

Each section lives in its own module; `Params` composes them and checks what spans sections (every dataset an
experiment names exists and has a fitting layout). `load_params` is the one entry point every stage and every
`ship` command goes through before doing anything; `Params.for_dataset(name)` fills the keys params left null from
that dataset's preset (pipeline/presets), so params keep the last word.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.errors import ExpectedError
from pipeline.params.backbone import BackboneParams
from pipeline.params.base import Section, Seed
from pipeline.params.dataset import (
    COOP_DATASETS,
    DATASET_NAME_PATTERN,
    XLSA17_DATASETS,
    BaseToNewParams,
    CrossDatasetParams,
    DatasetSpec,
    FewShotParams,
    GzslParams,
)
from pipeline.params.demo import DemoParams
from pipeline.params.extract import ExtractParams
from pipeline.params.finetune import (
    METHODS,
    ClipAdapterParams,
    CoOpParams,
    CoOpShipParams,
    FinetuneParams,
    GdaParams,
    KgCoOpParams,
    Method,
    TaskResParams,
    TipAdapterFParams,
    TrainingRecipe,
)
from pipeline.params.generator import GeneratorParams, SynthesizeParams
from pipeline.params.messages import format_errors
from pipeline.presets import DEFAULT, PresetError, load_preset, preset_path

log = logging.getLogger(__name__)

__all__ = [
    "COOP_DATASETS",
    "METHODS",
    "XLSA17_DATASETS",
    "BackboneParams",
    "BaseToNewParams",
    "ClipAdapterParams",
    "CoOpParams",
    "CoOpShipParams",
    "CrossDatasetParams",
    "DatasetSpec",
    "DemoParams",
    "ExtractParams",
    "FewShotParams",
    "FinetuneParams",
    "GdaParams",
    "GeneratorParams",
    "GzslParams",
    "KgCoOpParams",
    "Method",
    "Params",
    "ParamsError",
    "SynthesizeParams",
    "TaskResParams",
    "TipAdapterFParams",
    "TrainingRecipe",
    "load_params",
    "parse_params",
]

PROTOCOLS = ("base_to_new", "cross_dataset", "gzsl")


class ParamsError(ExpectedError, ValueError):
    """Bad params: the message names the file, each bad key path and the value found there."""


class Params(Section):
    seeds: tuple[Seed, ...] = Field(
        default=(1, 2, 3),
        min_length=1,
        description="replicates of the whole chain: few-shot draw -> generator -> synthesis -> fine-tuning",
    )
    backbone: BackboneParams
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict, description="name -> dataset spec")
    base_to_new: BaseToNewParams = BaseToNewParams()
    cross_dataset: CrossDatasetParams = CrossDatasetParams()
    gzsl: GzslParams = GzslParams()
    fewshot: FewShotParams = FewShotParams()
    demo: DemoParams = DemoParams()
    extract: ExtractParams = ExtractParams()
    generator: GeneratorParams = GeneratorParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    finetune: FinetuneParams = FinetuneParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        # One problem per line, each naming its key path: the error formatter prints them as they are.
        problems = []
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            problems.append(f"seeds: repeat a seed ({repeated}); each seed may be listed once (got {list(self.seeds)})")
        for name in self.datasets:
            if not re.match(DATASET_NAME_PATTERN, name):
                problems.append(
                    f"datasets: dataset name {name!r} must match {DATASET_NAME_PATTERN}: lower-case letters, digits "
                    "and '_', starting with a letter (it becomes part of stage names)"
                )
        used: dict[str, list[str]] = {}
        for where, names in (
            ("base_to_new.datasets", self.base_to_new.datasets),
            ("cross_dataset.sources", self.cross_dataset.sources),
            ("cross_dataset.targets", self.cross_dataset.targets),
            ("gzsl.datasets", self.gzsl.datasets),
        ):
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                problems.append(f"{where} lists {twice} twice; each dataset may be listed once (got {list(names)})")
            for name in names:
                used.setdefault(name, []).append(where)
                spec = self.datasets.get(name)
                if spec is None:
                    problems.append(
                        f"{where} names {name!r}, which is not in datasets (one of: {', '.join(self.datasets)})"
                    )
                elif (spec.kind == "xlsa17") != (where == "gzsl.datasets"):
                    need = "an xlsa17 dataset" if where == "gzsl.datasets" else "not an xlsa17 dataset"
                    problems.append(f"{where} names {name!r} (kind={spec.kind}), but needs {need}")
        unused = [name for name in self.datasets if name not in used]
        if unused:
            # A catalogue of datasets with experiments run on subsets (`dvc exp run -S base_to_new.datasets=[...]`) is
            # normal use; only extract_eval (its matrix runs over every entry) still encodes their test splits.
            log.warning("datasets %s are used by no experiment; extract_eval still encodes their test splits", unused)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # --- per-dataset views ------------------------------------------------------------------------------------

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; params list {', '.join(self.datasets) or 'none'}")
        return self.datasets[name]

    def preset_name(self, name: str) -> str:
        """The preset a dataset uses: its `preset`, else the one named like the dataset, else 'default'."""
        spec = self.dataset(name)
        if spec.preset is not None:
            return spec.preset
        label = (spec.name or name).lower()
        try:
            preset_path(label)
            return label
        except PresetError:
            return "demo" if spec.kind == "demo" else DEFAULT

    def for_dataset(self, name: str) -> Params:
        """These params with every key left null filled from the dataset's preset, then from the default preset."""
        preset = self.preset_name(name)
        data = self.model_dump(mode="json")
        try:
            for layer in (preset, DEFAULT):
                _fill_nulls(data, load_preset(layer), where=str(preset_path(layer)))
        except PresetError as err:
            raise ParamsError(f"dataset {name!r}: {err}") from None
        return parse_params(data, f"params resolved with preset {preset!r}")


def _fill_nulls(data: dict[str, Any], preset: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in preset.items():
        path = f"{prefix}{key}"
        if key not in data:
            raise PresetError(f"{where}: key {path} is not a params key")
        if isinstance(value, dict) and isinstance(data[key], dict):
            _fill_nulls(data[key], value, where, path + ".")
        elif data[key] is None:
            data[key] = value


def preset_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Key paths a dataset preset must provide: fields marked `preset` in the schema."""
    keys = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        sub = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)]
        sections = [a for a in sub if issubclass(a, BaseModel)]
        if sections:
            keys += preset_keys(sections[0], f"{prefix}{name}.")
        elif extra.get("preset"):
            keys.append(prefix + name)
    return keys


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
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ParamsError(f"override {override!r}: the value is not valid YAML ({err})") from None


def parse_params(data: Any, source: str = "<params>") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"invalid params in {source}: the top level must be a mapping")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(format_errors(Params, source, data, err)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except IsADirectoryError:
        raise ParamsError(f"params file {path} is a directory; pass the YAML file inside it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"params file {path} cannot be read: {err}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    for override in overrides:
        apply_override(data, override)
    return parse_params(data, str(path))
