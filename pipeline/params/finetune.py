"""Fine-tuning methods: each method has its own section, and its defaults are that method's reference recipe.

Fields marked `preset` are null by default: their value comes from the dataset preset (pipeline/presets), because the
reference codes set them per dataset (e.g. CoOp's 50 epochs on ImageNet vs 200 elsewhere). A value set here wins.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, field_validator

from pipeline.params.base import PRESET, Section, Template

Method = Literal[
    "zeroshot",
    "coop",
    "coop_ship",
    "clip_adapter",
    "clip_adapter_ship",
    "tip_adapter_f",
    "tip_adapter_f_ship",
    "gda",
    "gda_ship",
    "kgcoop",
    "kgcoop_ship",
    "taskres",
    "taskres_ship",
]
METHODS: tuple[str, ...] = get_args(Method)
# Tip-Adapter's alpha/beta search grids start at 0.1 and run up to (not including) their end, in `steps` values.
GridEnd = Annotated[float, Field(gt=0.1)]
GridSteps = Annotated[int, Field(ge=1)]
# `<method>_ship_oracle`: a *_ship method whose "synthetic" features are real few-shot features of the label-only
# classes (a diagnostic beyond the paper: what a perfect generator could give; base-to-new only).
ORACLE = "_oracle"


def uses_synthetic(method: str) -> bool:
    """A SHIP variant: trained on real features plus features of the label-only classes."""
    return method.endswith("_ship") or is_oracle(method)


def is_oracle(method: str) -> bool:
    return method.endswith(f"_ship{ORACLE}")


def ship_method(method: str) -> str:
    """The method an oracle row runs (its recipe and adapter): `coop_ship_oracle` -> `coop_ship`."""
    return method.removesuffix(ORACLE)


def _known_method(method: str) -> str:
    if method not in METHODS and not (is_oracle(method) and ship_method(method) in METHODS):
        names = ", ".join(repr(m) for m in METHODS)
        raise ValueError(f"must be one of {names}, or a *_ship method + {ORACLE!r} (e.g. 'coop_ship{ORACLE}')")
    return method


MethodName = Annotated[str, AfterValidator(_known_method)]


# What `finetune.methods` runs when params leave it out: the methods of the SHIP paper's tables.
DEFAULT_METHODS: tuple[str, ...] = METHODS[: METHODS.index("tip_adapter_f_ship") + 1]


# sgd: torch SGD (momentum, L2 weight decay); adam: torch Adam with L2 weight decay folded into the gradient (Dassl's
# "adam", betas 0.9/0.999); adamw: decoupled weight decay.
Optimizer = Literal["sgd", "adam", "adamw"]


class TrainingRecipe(Section):
    """How a method is optimised. Two schedules exist in the references:

    - dassl_cosine (CoOp's Dassl trainer): `warmup_epochs` epochs at the constant `warmup_lr`, then cosine annealing
      over `epochs`, stepped once per epoch (Dassl's ConstantWarmupScheduler around CosineAnnealingLR);
    - cosine_per_step (SHIP, Tip-Adapter): CosineAnnealingLR over epochs x batches per epoch, stepped every batch.
    """

    optimizer: Optimizer | None = "sgd"
    lr: float | None = Field(default=2e-3, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float | None = Field(default=5e-4, ge=0.0)
    eps: float = Field(default=1e-4, gt=0.0, description="Adam/AdamW eps (SHIP and Tip-Adapter use 1e-4)")
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

    optimizer: Optimizer | None = Field(default=None, json_schema_extra=PRESET)
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

    optimizer: Optimizer | None = "adamw"
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


class GdaParams(Section):
    """GDA, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (Wang et al., ICLR 2024; mrflogs/ICLR24):
    Gaussian discriminant analysis on the L2-normalised features of every augmented view (augment_epoch 10), a
    shared precision matrix, logits = 100 f W_text^T + alpha (f W^T + b), alpha searched on validation features over
    (1e-4 .. 100). Label-only and foreign classes: main_base2new.py's estimate from the k = 64 training features
    nearest to the class's text embedding. Training-free: no optimizer, nothing to select per epoch."""

    estimator: Literal["class_mean", "ks"] | None = Field(
        default=None,
        description="shared covariance: class_mean = pinv of the mean of the per-class covariances "
        "(main_base2new.py); ks = the shrinkage estimator D pinv((N-1) S + tr(S) I) of the pooled class-centred "
        "features (main_few_shots.py, main_robustness.py); null: class_mean for base-to-new and GZSL, ks for "
        "cross-dataset (all-labelled sources, as the reference's few-shot and robustness runs)",
    )
    alphas: tuple[Annotated[float, Field(ge=0.0)], ...] = Field(
        default=(1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
        min_length=1,
        description="grid of the blend weight alpha, searched on validation features (first best kept)",
    )
    views: int | None = Field(
        default=None, ge=1, description="augmented views per training image used as samples; null: all cached"
    )
    knn: int = Field(default=64, ge=2, description="training features nearest to a text embedding (new classes)")
    knn_text_weight: int = Field(
        default=16, ge=0, description="copies of the text embedding averaged into a new class's mean (reference: 16)"
    )
    logit_scale: float | None = Field(
        default=100.0, gt=0.0, description="the reference multiplies the zero-shot term by 100; null: the backbone's"
    )
    synthetic_per_class: int | None = Field(
        default=None,
        ge=2,
        description="gda_ship: synthetic samples per label-only class; null: as many as each labelled class has "
        "(shots x views)",
    )
    synthetic_covariance: bool = Field(
        default=True, description="gda_ship: label-only classes' synthetic features join the covariance estimate"
    )


class KgCoOpParams(CoOpParams):
    """KgCoOp (Yao et al., CVPR 2023; htyao89/KgCoOp): CoOp plus lambda (1 - mean cos(t_i, t_i^clip)) pulling each
    learned class text embedding toward the hand-crafted one (the dataset's CoOp template); configs
    vit_b16_ep100_ctxv1.yaml (SGD lr 2e-3, batch 128, 100 epochs for every dataset, one constant warm-up epoch at
    1e-5, per-epoch cosine) and scripts/base2new_train.sh (4 context tokens from "a photo of a", W = 8.0)."""

    epochs: int = Field(default=100, ge=1, description="vit_b16_ep100_ctxv1: 100 for every dataset, ImageNet too")
    batch_size: int = Field(default=128, ge=1)
    weight: float = Field(default=8.0, ge=0.0, description="lambda of the knowledge-guided term (TRAINER.COOP.W)")
    templates: tuple[Template, ...] | None = Field(
        default=None,
        min_length=1,
        description="hand-crafted prompts pulled toward (KgCoOp's CUSTOM_TEMPLATES; DTD preset: 'a photo of a {}, "
        "a type of texture.'); null: the preset's, else the task's zero-shot classifier",
    )
    synthetic: Literal["fresh", "pool"] = Field(
        default="fresh",
        description="kgcoop_ship: fresh = new latents through the generator at every step (as coop_ship); "
        "pool = the synthesize stage's store",
    )


class TaskResParams(TrainingRecipe):
    """TaskRes (Yu et al., CVPR 2023; geekyutao/TaskRes): a learned residual x on the frozen zero-shot text
    classifier t (the unnormalised text features averaged over TaskRes's templates), classifier = normalize(t +
    alpha x), x initialised at 0. Dassl's Adam (L2 weight decay 5e-4), batch 256, one constant warm-up epoch at
    1e-5 then per-epoch cosine (configs/trainers/TaskRes/adam_lr2e-3_B256_ep{100,200}.yaml; ImageNet lr 2e-4), alpha
    0.5 (Flowers 1.0) as train_regular.sh."""

    optimizer: Optimizer | None = "adam"
    lr: float | None = Field(default=None, gt=0.0, json_schema_extra=PRESET)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="unused by Adam (betas 0.9, 0.999)")
    weight_decay: float | None = Field(default=5e-4, ge=0.0, description="Dassl's default, an L2 term in Adam")
    eps: float = Field(default=1e-8, gt=0.0, description="torch Adam's default (Dassl passes none)")
    epochs: int | None = Field(
        default=None, ge=1, description="null: TaskRes's scripts: 100 for up to 4 shots, 200 for more"
    )
    batch_size: int = Field(default=256, ge=1)
    alpha: float | None = Field(
        default=None, gt=0.0, description="residual scale (RESIDUAL_SCALE)", json_schema_extra=PRESET
    )
    templates: tuple[Template, ...] | None = Field(
        default=None,
        min_length=1,
        description="templates of the base classifier (DTD preset: '{} texture.'; ImageNet: 7 + 1); null: the "
        "preset's, else the zero-shot templates (extract.templates)",
    )


class FinetuneParams(Section):
    methods: tuple[MethodName, ...] = Field(
        default=DEFAULT_METHODS,
        min_length=1,
        description=f"methods to fit: {', '.join(METHODS)}, or a *_ship method + '{ORACLE}' (real few-shot "
        "features of the label-only classes in place of synthetic ones; base-to-new only)",
    )

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

    @field_validator("methods")
    @classmethod
    def _listed_once(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"a method is listed twice: {list(methods)}")
        return methods

    coop: CoOpParams = CoOpParams()
    coop_ship: CoOpShipParams = CoOpShipParams()
    clip_adapter: ClipAdapterParams = ClipAdapterParams()
    tip_adapter_f: TipAdapterFParams = TipAdapterFParams()
    gda: GdaParams = GdaParams()
    kgcoop: KgCoOpParams = KgCoOpParams()
    taskres: TaskResParams = TaskResParams()
