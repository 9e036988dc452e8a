from typing import Literal, get_args

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


class DasslSGDParams(Section):
    """CoOp's Dassl optimisation recipe, shared by CoOp and CLIP-Adapter: SGD, a constant-lr warm-up, cosine."""

    lr: float = Field(default=2e-3, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    warmup_epochs: int = Field(default=1, ge=0, description="epochs at warmup_lr before the cosine schedule")
    warmup_lr: float = Field(default=1e-5, gt=0.0)
    epochs: int = Field(default=50, ge=1)
    batch_size: int = Field(default=32, ge=1)
    logit_scale: float | None = Field(
        default=None, gt=0.0, description="None: the backbone's own learned logit scale (100 for OpenAI CLIP)"
    )


class CoOpParams(DasslSGDParams):
    """CoOp (Zhou et al., IJCV 2022) as run by CoOp's Dassl config: SGD, one constant-lr warm-up epoch, cosine.

    The learning-rate schedule is per epoch, as in Dassl. Epochs and batch size count real training images; with
    SHIP every batch also carries as many synthetic features.
    """

    n_ctx: int = Field(default=4, ge=1)
    ctx_init: str = Field(default="a photo of a", description="must tokenize to exactly n_ctx tokens")


class ClipAdapterParams(DasslSGDParams):
    """CLIP-Adapter (Gao et al., IJCV 2023), visual adapter: 2-layer bottleneck MLP, residual blend ratio 0.2.

    Paper/released trainer: reduction 4, ratio 0.2 for generic datasets, batch 32, 200 epochs, built on CoOp's
    Dassl trainer (SGD, momentum 0.9, weight decay 5e-4, cosine with one constant warm-up epoch).
    """

    reduction: int = Field(default=4, ge=1)
    ratio: float = Field(default=0.2, ge=0.0, le=1.0, description="residual blend of adapted features")
    epochs: int = Field(default=200, ge=1)


class TipAdapterFParams(Section):
    """Tip-Adapter-F (Zhang et al., ECCV 2022): learnable cache keys, AdamW + per-step cosine, 20 epochs.

    alpha/beta are fixed at their initial values while training; after training they are grid-searched on the
    validation features (never on test).
    """

    alpha: float = Field(default=1.0, ge=0.0, description="initial cache-logit weight")
    beta: float = Field(default=5.5, gt=0.0, description="initial affinity sharpness")
    search_alpha: tuple[float, ...] = Field(default=(0.5, 1.0, 2.0, 4.0), min_length=1)
    search_beta: tuple[float, ...] = Field(default=(1.0, 3.0, 5.5, 8.0), min_length=1)
    lr: float = Field(default=1e-3, gt=0.0)
    eps: float = Field(default=1e-4, gt=0.0, description="AdamW eps (Tip-Adapter's released code)")
    weight_decay: float = Field(default=0.01, ge=0.0)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=256, ge=1)
    logit_scale: float | None = Field(
        default=None, gt=0.0, description="None: the backbone's own learned logit scale (100 for OpenAI CLIP)"
    )
    synthetic_cache_per_class: int | None = Field(
        default=None,
        ge=1,
        description="*_ship: synthetic cache entries per label-only class; None = as many as the largest "
        "labelled class has real entries (the shot count), so the cache stays class-balanced",
    )


class FinetuneParams(Section):
    methods: tuple[Method, ...] = Field(default=get_args(Method), min_length=1)
    seeds: tuple[int, ...] = Field(default=(1, 2, 3), min_length=1)
    transfer_stores: tuple[str, ...] = Field(
        default=(), description="feature stores of other datasets to evaluate on (cross-dataset transfer)"
    )
    coop: CoOpParams = CoOpParams()
    clip_adapter: ClipAdapterParams = ClipAdapterParams()
    tip_adapter_f: TipAdapterFParams = TipAdapterFParams()
