from pydantic import Field

from pipeline.params.base import Section


class GeneratorParams(Section):
    """SHIP's VAE: MLP encoder -> z -> MLP bias r added to L global prompt vectors -> frozen text tower."""

    prompt_length: int = Field(default=4, ge=1, le=32, description="number of global prompt vectors L")
    encoder_hidden: int = Field(default=2048, ge=1, description="hidden width of the encoder E")
    bias_hidden: int = Field(default=4096, ge=1, description="hidden width of the z -> r MLP")
    prompt_init_std: float = Field(default=0.02, gt=0.0)
    kl_weight: float = Field(default=1.0, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    batch_size: int = Field(default=256, ge=1)
    epochs: int = Field(default=50, ge=1)
    seed: int = 1


class SynthesizeParams(Section):
    per_class: int = Field(default=200, ge=1, description="synthetic features per label-only class")
    seed: int = 1
    batch_size: int = Field(default=1024, ge=1, description="latents decoded per text-tower pass")
