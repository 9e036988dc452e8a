"""Fine-tuning methods: each method has its own section, and its defaults are that method's reference recipe.

Fields marked `preset` are null by default: their value comes from the dataset preset (pipeline/presets), because the
reference codes set them per dataset (e.g. CoOp's 50 epochs on ImageNet vs 200 elsewhere). A value set here wins.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator

from pipeline.params.base import PRESET, Section, Template

Method = Literal[
    "zeroshot",
    "coop",
    "coop_ship",
    "clip_adapter",
    "clip_adapter_ship",
    "tip_adapter_f",
    "tip_adapter_f_ship",
]
METHODS: tuple[str, ...] = get_args(Method)
# Tip-Adapter's alpha/beta search grids start at 0.1 and run up to (not including) their end, in `steps` values.
GridEnd = Annotated[float, Field(gt=0.1)]
GridSteps = Annotated[int, Field(ge=1)]


class TrainingRecipe(Section):
    """How a method is optimised. Two schedules exist in the references:

    - dassl_cosine (CoOp's Dassl trainer): `warmup_epochs` epochs at the constant `warmup_lr`, then cosine annealing
      over `epochs`, stepped once per epoch (Dassl's ConstantWarmupScheduler around CosineAnnealingLR);
    - cosine_per_step (SHIP, Tip-Adapter): CosineAnnealingLR over epochs x batches per epoch, stepped every batch.
    """

    optimizer: Literal["sgd", "adamw"] | None = "sgd"
    lr: float | None = Field(default=2e-3, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float | None = Field(default=5e-4, ge=0.0)
    eps: float = Field(default=1e-4, gt=0.0, description="AdamW eps (SHIP and Tip-Adapter use 1e-4)")
    schedule: Literal["dassl_cosine", "cosine_per_step"] = "dassl_cosine"
    warmup_epochs: int = Field(default=1, ge=0, description="dassl_cosine: epochs at warmup_lr before the cosine")
    warmup_lr: float = Field(default=1e-5, gt=0.0)
    epochs: int | None = Field(default=None, ge=1, description="null: the dataset preset's", json_schema_extra=PRESET)
    batch_size: int = Field(default=32, ge=1, description="real training images per batch")
    drop_last: bool = Field(
        default=True, description="drop a ragged last batch (Dassl's loader does when the set holds >= one batch)"
    )
    logit_scale: float | None = Field(
        default=None, gt=0.0, description="null: the backbone's own learned scale (100 for OpenAI CLIP)"
    )


class CoOpParams(TrainingRecipe):
    """CoOp as CoCoOp's base-to-new baseline ran it: CoOp's configs vit_b16_ctxv1 (200 epochs) and, for ImageNet,
    vit_b16_ep50_ctxv1 (50 epochs): SGD lr 2e-3, momentum 0.9, weight decay 5e-4, batch 32, one constant warm-up
    epoch at 1e-5, per-epoch cosine, context initialised from "a photo of a"."""

    n_ctx: int = Field(default=4, ge=1, description="learned context tokens")
    ctx_init: str = Field(
        default="a photo of a",
        description="words whose token embeddings initialise the context; must tokenize to exactly n_ctx tokens. "
        "'' or null: random init, context vectors ~ N(0, 0.02) (CoOp's code when CTX_INIT is empty)",
    )

    @field_validator("ctx_init", mode="before")
    @classmethod
    def _null_is_random_init(cls, value: Any) -> Any:
        return "" if value is None else value


class CoOpShipParams(CoOpParams):
    """CoOp+SHIP as SHIP's reference code runs it (main_coop_vae.py; main_imagenet_coop_vae.py for ImageNet): a CoOp
    prompt over all class names, every batch of real features joined by as many synthetic features of uniformly
    drawn label-only classes, plain SGD lr 2e-3 (no momentum, no weight decay, no warm-up), per-step cosine, batch
    256, 200 epochs; ImageNet: AdamW lr 1e-3 eps 1e-4 (weight decay 0.01), 20 epochs."""

    optimizer: Literal["sgd", "adamw"] | None = Field(default=None, json_schema_extra=PRESET)
    lr: float | None = Field(default=None, gt=0.0, json_schema_extra=PRESET)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(default=None, ge=0.0, json_schema_extra=PRESET)
    schedule: Literal["dassl_cosine", "cosine_per_step"] = "cosine_per_step"
    warmup_epochs: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    drop_last: bool = False
    logit_scale: float | None = Field(
        default=100.0,
        gt=0.0,
        description="SHIP's code multiplies by 100 (= OpenAI CLIP's learned scale); null: the backbone's",
    )
    synthetic: Literal["fresh", "pool"] = Field(
        default="fresh",
        description="fresh: new latents decoded by the generator at every step (the reference); pool: draw from "
        "the synthesize stage's store",
    )


class ClipAdapterParams(TrainingRecipe):
    """CLIP-Adapter (Gao et al.): its released trainer (clip_adapter.py) runs in CoOp's Dassl trainer with CoOp's
    config (vit_b16: SGD lr 2e-3, batch 32, 200 epochs; ImageNet 50); residual ratio 0.2, reduction 4, the adapter
    applied to the encoder's raw (unnormalised) image feature."""

    reduction: int = Field(default=4, ge=1)
    ratio: float = Field(default=0.2, ge=0.0, le=1.0, description="residual blend of adapted features")


class TipAdapterFParams(TrainingRecipe):
    """Tip-Adapter-F (Zhang et al.; configs/*.yaml, main.py): cache keys = L2-normalised mean of the raw features of
    the augmented views, AdamW lr 1e-3 eps 1e-4, per-step cosine, batch 256, alpha/beta fixed at their initial
    values while training, then searched on the validation split over `search_steps` values in [0.1, search_scale)."""

    optimizer: Literal["sgd", "adamw"] | None = "adamw"
    lr: float | None = Field(default=1e-3, gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(default=0.01, ge=0.0, description="AdamW's default, as the reference")
    schedule: Literal["dassl_cosine", "cosine_per_step"] = "cosine_per_step"
    warmup_epochs: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    drop_last: bool = False
    logit_scale: float | None = Field(
        default=100.0,
        gt=0.0,
        description="Tip-Adapter's code multiplies by 100 (= OpenAI CLIP's learned scale); null: the backbone's",
    )
    templates: tuple[Template, ...] | None = Field(
        default=None,
        min_length=1,
        description="templates of Tip-Adapter's zero-shot classifier (ImageNet preset: a 7-template ensemble); "
        "null: the preset's, else the zero-shot templates (extract.templates)",
    )
    init_alpha: float | None = Field(default=None, ge=0.0, json_schema_extra=PRESET)
    init_beta: float | None = Field(default=None, gt=0.0, json_schema_extra=PRESET)
    search_scale: tuple[GridEnd, GridEnd] | None = Field(
        default=None,
        description="(beta, alpha) upper ends of the search grids, which start at 0.1",
        json_schema_extra=PRESET,
    )
    search_steps: tuple[GridSteps, GridSteps] = Field(default=(200, 20), description="(beta, alpha) grid sizes")
    cache_views: int | None = Field(
        default=None, ge=1, description="augmented views averaged into each cache key; null: all cached views"
    )
    synthetic_cache_per_class: int | None = Field(
        default=None,
        ge=1,
        description="*_ship: cache entries per label-only class; null: the shot count (a class-balanced cache)",
    )


class FinetuneParams(Section):
    methods: tuple[Method, ...] = Field(default=METHODS, min_length=1)
    select: Literal["val", "last"] = Field(
        default="val",
        description="val: keep the epoch with the best validation accuracy; last: the final epoch (what Dassl and "
        "SHIP's code do for CoOp). Neither reads test features.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="processes fitting methods side by side; null: one per method up to the cores available "
        "(one on a GPU)",
    )
    threads: int = Field(
        default=1,
        ge=1,
        description="torch threads per fit: fits on cached features are many tiny ops that extra threads only slow "
        "down (and results are bit-identical for a given thread count, whatever `workers` is)",
    )
    coop: CoOpParams = CoOpParams()
    coop_ship: CoOpShipParams = CoOpShipParams()
    clip_adapter: ClipAdapterParams = ClipAdapterParams()
    tip_adapter_f: TipAdapterFParams = TipAdapterFParams()
