from typing import Literal

from pydantic import Field

from pipeline.params.base import Section, Seed

NewClasses = Literal["combinations", "new_nouns"]  # how a base-to-new demo dataset's new half differs (catalogue.py)


class DemoWorldParams(Section):
    """The generated demo world (owned by pipeline/demo/world.py). Its datasets and their class lists are part of
    the world's definition in code (`pipeline.demo.catalogue.DATASETS`); these keys set image counts and rendering."""

    seed: int = Field(default=0, ge=0, description="seed of every image's RNG (the class lists never depend on it)")
    image_size: int = Field(default=64, ge=16, description="side of every image in pixels")
    web_per_class: int = Field(
        default=100,
        ge=1,
        description="captioned 'web' images per class of every dataset (backbone pre-training, `ship pretrain-demo`)",
    )
    train_per_class: int = Field(default=32, ge=1, description="base-to-new datasets: train images per class")
    val_per_class: int = Field(default=8, ge=1, description="base-to-new datasets: validation images per class")
    test_per_class: int = Field(default=30, ge=1, description="base-to-new datasets: test images per class")
    gzsl_trainval_per_class: int = Field(
        default=24, ge=1, description="GZSL dataset (zoo): trainval images per seen class (all of them are used)"
    )
    gzsl_test_seen_per_class: int = Field(default=8, ge=1, description="GZSL dataset: test images per seen class")
    gzsl_test_unseen_per_class: int = Field(default=16, ge=1, description="GZSL dataset: test images per unseen class")
    shift: float = Field(
        default=0.4,
        ge=0.0,
        le=2.0,
        description="strength of the web -> benchmark domain shift (texture, lighting, blur, noise, clutter)",
    )
    new_classes: NewClasses = Field(
        default="combinations",
        description=(
            "base-to-new datasets: combinations = new classes recombine the base classes' attribute and noun words; "
            "new_nouns = new classes are named by nouns no base class uses (as in CoCoOp's splits of real datasets)"
        ),
    )


class DemoBackboneParams(Section):
    """Contrastive pre-training of the demo backbone on the web domain (owned by pipeline/demo/pretrain.py). The
    recipe of the shipped weights: read by `ship pretrain-demo` only, never by a DVC stage."""

    epochs: int = Field(
        default=30, ge=1, description="passes over the web corpus (10,800 images: ~1-2 min per epoch on 2 cores)"
    )
    batch_size: int = Field(default=64, ge=2, description="images per contrastive batch")
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW peak learning rate (cosine schedule after warm-up)")
    weight_decay: float = Field(default=0.1, ge=0.0, description="AdamW weight decay (not on gains, biases, norms)")
    warmup: float = Field(default=0.1, ge=0.0, lt=1.0, description="fraction of the steps spent in linear warm-up")
    balanced: bool = Field(
        default=True, description="class-balanced batches: distinct classes (of all datasets) in every batch"
    )
    seed: Seed = Field(default=0, description="seed of the initial weights, batch order and augmentation (torch)")


class DemoParams(Section):
    world: DemoWorldParams = DemoWorldParams()
    backbone: DemoBackboneParams = DemoBackboneParams()
