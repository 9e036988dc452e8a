"""Which datasets a run uses and what each experiment family does with them.

`datasets` maps a short name (used in DVC stage names and output paths) to where the images are and how they are
laid out; the three experiment families name the datasets they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.base import Section

COOP_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
XLSA17_DATASETS = ("CUB", "AWA2", "FLO")
DatasetKind = Literal["demo", "coop", "imagefolder", "xlsa17"]
# Dataset names become parts of DVC stage names (`b2n_finetune@<name>-<seed>`) and of paths.
DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class DatasetSpec(Section):
    """Where one dataset's images are and which layout they use."""

    kind: DatasetKind = Field(
        description="demo (the embedded demo, CoOp split-file layout), coop (one of CoOp's 11 datasets as its "
        "DATASETS.md lays them out), imagefolder (root/{train,val,test}/<class>/*), xlsa17 (GZSL proposed splits)"
    )
    name: str | None = Field(
        default=None,
        description="kind=coop: the CoOp dataset name (imagenet, oxford_pets, ...); kind=xlsa17: CUB, AWA2 or FLO "
        "(or another xlsa17 folder name); null: the key this spec is listed under",
    )
    root: str = Field(description="the dataset's folder (kind=xlsa17: the folder holding att_splits.mat, res101.mat)")
    image_root: str | None = Field(default=None, description="kind=xlsa17: the folder the listed images live in")
    classnames_file: str | None = Field(
        default=None, description="kind=xlsa17: class names, one per line in label order (FLO ships none usable)"
    )
    preset: str | None = Field(
        default=None,
        description="dataset preset: a name in pipeline/presets or a path to a JSON file; null: the preset named "
        "like the dataset (CoOp name, xlsa17 name lower-cased, 'demo' for kind=demo), else 'default'",
    )

    @model_validator(mode="after")
    def _fits_kind(self) -> DatasetSpec:
        if self.kind == "coop" and self.name is not None and self.name not in COOP_DATASETS:
            raise ValueError(f"name {self.name!r} is not a CoOp dataset; use one of {', '.join(COOP_DATASETS)}")
        if self.kind == "xlsa17" and self.image_root is None:
            raise ValueError("kind=xlsa17 needs image_root (the folder the images listed in res101.mat live in)")
        if self.kind != "xlsa17" and (self.image_root is not None or self.classnames_file is not None):
            raise ValueError("image_root and classnames_file apply to kind=xlsa17 only")
        return self


class FewShotParams(Section):
    """CoOp's few-shot protocol: per seed, `shots` training and `val_shots` validation images per class."""

    shots: int = Field(default=16, ge=1, description="labelled training images per class")
    val_shots: int | None = Field(
        default=None, ge=1, description="validation images per class; null: min(shots, 4), as CoOp"
    )

    @property
    def resolved_val_shots(self) -> int:
        return self.val_shots if self.val_shots is not None else min(self.shots, 4)


class BaseToNewParams(Section):
    """Base-to-new generalisation (CoCoOp): first ceil(n/2) classes are base (few-shot images), the rest new."""

    datasets: tuple[str, ...] = Field(default=(), description="dataset names (keys of `datasets`)")


class CrossDatasetParams(Section):
    """Cross-dataset transfer: every class of a source has few-shot images; each target's classes are label-only."""

    sources: tuple[str, ...] = Field(default=(), description="source dataset names (the paper: [imagenet])")
    targets: tuple[str, ...] = Field(default=(), description="target dataset names")

    @model_validator(mode="after")
    def _both_or_neither(self) -> CrossDatasetParams:
        if bool(self.sources) != bool(self.targets):
            raise ValueError("cross-dataset transfer needs both sources and targets (or neither)")
        overlap = set(self.sources) & set(self.targets)
        if overlap:
            raise ValueError(f"datasets {sorted(overlap)} are both a source and a target")
        return self


class GzslParams(Section):
    """Generalized zero-shot learning on xlsa17 datasets: all seen-class images train; seen and unseen test images
    are scored jointly against all classes (per-class mean accuracy)."""

    datasets: tuple[str, ...] = Field(default=(), description="xlsa17 dataset names (keys of `datasets`)")
    val_per_class: int = Field(
        default=4,
        ge=1,
        description="seen-class training images held out per class for model selection (xlsa17 has no "
        "validation images of the seen classes); the same for every seed",
    )
