from typing import Literal

from pydantic import Field

from pipeline.params.base import PRESET, Section


class GeneratorParams(Section):
    """SHIP's VAE: MLP encoder -> z -> MLP bias r added to L global prompt vectors -> frozen text tower.

    Defaults are SHIP's reference code (main_coop_vae.py); null values come from the dataset preset (ImageNet:
    encoder hidden 4096, LeakyReLU(0.2) in the bias MLP, 10 epochs).
    """

    prompt_length: int = Field(default=4, ge=1, le=64, description="number of global prompt vectors L")
    encoder_hidden: int | None = Field(
        default=None,
        ge=1,
        description="hidden width of the encoder E (reference: 2048; ImageNet 4096); null: preset",
        json_schema_extra=PRESET,
    )
    bias_hidden: int = Field(default=4096, ge=1, description="hidden width of the z -> r MLP")
    bias_activation: Literal["relu", "leaky_relu"] | None = Field(
        default=None,
        description="activation of the z -> r MLP (reference: ReLU; ImageNet LeakyReLU(0.2)); null: preset",
        json_schema_extra=PRESET,
    )
    init_std: float = Field(
        default=0.02, gt=0.0, description="Linear weights ~ N(0, init_std), biases 0; prompts ~ N(0, init_std)"
    )
    kl_weight: float = Field(default=1.0, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(
        default=0.01, ge=0.0, description="AdamW weight decay (torch's default, as the reference)"
    )
    batch_size: int = Field(default=256, ge=1)
    epochs: int | None = Field(
        default=None, ge=1, description="reference: 50 (ImageNet 10); null: preset", json_schema_extra=PRESET
    )
    select: Literal["val", "last"] = Field(
        default="val",
        description="val: keep the epoch with the lowest validation loss; last: the final epoch (the reference)",
    )


class SynthesizeParams(Section):
    per_class: int = Field(
        default=200, ge=1, description="synthetic features per label-only class (CLIP-Adapter/Tip-Adapter-F + SHIP)"
    )
    batch_size: int = Field(default=1024, ge=1, description="latents decoded per text-tower pass")
