from pydantic import Field

from pipeline.params.base import Section


class DemoWorldParams(Section):
    """The generated demo dataset (owned by pipeline/demo/world.py)."""

    seed: int = 0
    image_size: int = Field(default=64, ge=16)
    web_per_class: int = Field(default=100, ge=1, description="captioned 'web' images per class (pre-training)")
    train_per_class: int = Field(default=32, ge=1)
    val_per_class: int = Field(default=8, ge=1)
    test_per_class: int = Field(default=30, ge=1)
    shift: float = Field(
        default=0.4,
        ge=0.0,
        le=2.0,
        description="strength of the web -> benchmark domain shift (texture, lighting, blur, noise, clutter)",
    )


class DemoBackboneParams(Section):
    """Contrastive pre-training of the demo backbone on the web domain (owned by pipeline/demo/pretrain.py)."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=2, description="64 = one image of each class per batch")
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    warmup: float = Field(default=0.1, ge=0.0, lt=1.0, description="fraction of the steps spent in linear warm-up")
    balanced: bool = Field(default=True, description="class-balanced batches (no same-class in-batch negatives)")
    seed: int = 0


class DemoParams(Section):
    world: DemoWorldParams = DemoWorldParams()
    backbone: DemoBackboneParams = DemoBackboneParams()
