from typing import Literal

from pydantic import Field

from pipeline.params.base import Section

Method = Literal[
    "zeroshot",
    "coop",
    "coop_ship",
    "clip_adapter",
    "clip_adapter_ship",
    "tip_adapter_f",
    "tip_adapter_f_ship",
]


class CoOpParams(Section):
    n_ctx: int = Field(default=4, ge=1)
    ctx_init: str = "a photo of a"
    lr: float = Field(default=2e-3, gt=0.0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=32, ge=1)
    logit_scale: float = Field(default=100.0, gt=0.0)


class ClipAdapterParams(Section):
    reduction: int = Field(default=4, ge=1)
    ratio: float = Field(default=0.2, ge=0.0, le=1.0, description="residual blend of adapted features")
    lr: float = Field(default=2e-3, gt=0.0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=32, ge=1)
    logit_scale: float = Field(default=100.0, gt=0.0)


class TipAdapterFParams(Section):
    alpha: float = Field(default=1.0, ge=0.0, description="initial cache-logit weight")
    beta: float = Field(default=5.5, gt=0.0, description="initial affinity sharpness")
    search_alpha: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    search_beta: tuple[float, ...] = (1.0, 3.0, 5.5, 8.0)
    lr: float = Field(default=1e-3, gt=0.0)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=256, ge=1)
    logit_scale: float = Field(default=100.0, gt=0.0)


class FinetuneParams(Section):
    methods: tuple[Method, ...] = (
        "zeroshot",
        "coop",
        "coop_ship",
        "clip_adapter",
        "clip_adapter_ship",
        "tip_adapter_f",
        "tip_adapter_f_ship",
    )
    seeds: tuple[int, ...] = Field(default=(1, 2, 3), min_length=1)
    transfer_stores: tuple[str, ...] = Field(
        default=(), description="feature stores of other datasets to evaluate on (cross-dataset transfer)"
    )
    coop: CoOpParams = CoOpParams()
    clip_adapter: ClipAdapterParams = ClipAdapterParams()
    tip_adapter_f: TipAdapterFParams = TipAdapterFParams()
