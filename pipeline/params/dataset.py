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


class DatasetParams(Section):
    """Where the images are, which layout they use, and how the few-shot/base-new protocol samples them."""

    kind: Literal["demo", "coop", "imagefolder"] = "demo"
    name: str = Field(default="demo", description="for kind=coop: one of the 11 CoOp dataset names")
    root: str = Field(default="data/demo/world", description="dataset directory")
    shots: int = Field(default=16, ge=1, description="labelled training images per class")
    val_shots: int = Field(default=4, ge=1, description="validation images per class (model selection)")
    seed: int = Field(default=1, description="few-shot sampling seed")
    labeled_classes: Literal["base", "all"] = Field(
        default="base",
        description="base: only the first ceil(n/2) classes have training images (base-to-new); "
        "all: every class does (cross-dataset source, GZSL seen classes)",
    )

    @model_validator(mode="after")
    def _known_coop_name(self) -> "DatasetParams":
        if self.kind == "coop" and self.name not in COOP_DATASETS:
            raise ValueError(f"dataset.name {self.name!r} is not a CoOp dataset; use one of {', '.join(COOP_DATASETS)}")
        return self
