from pydantic import Field, field_validator

from pipeline.params.base import Section

# CoOp/Tip-Adapter style prompt ensemble; "{}" is replaced by the class name.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
)


class ExtractParams(Section):
    """How the frozen image encoder is run once over every split."""

    views: int = Field(default=10, ge=0, le=256, description="augmented views per training image")
    crop_scale_min: float = Field(default=0.5, gt=0.0, le=1.0, description="RandomResizedCrop min scale")
    batch_size: int = Field(default=128, ge=1)
    workers: int = Field(default=2, ge=0, description="DataLoader worker processes")
    block_size: int = Field(
        default=1024, ge=1, description="images per resumable block (= one shard); a multiple of 256 if > 256"
    )
    skip_corrupt: bool = Field(default=False, description="skip unreadable images (listed in the store)")
    templates: tuple[str, ...] = Field(default=DEFAULT_TEMPLATES, min_length=1)

    @field_validator("block_size")
    @classmethod
    def _whole_chunks(cls, v: int) -> int:
        if v > 256 and v % 256:
            raise ValueError(f"must be <= 256 or a multiple of 256 (shards hold whole 256-row chunks), got {v}")
        return v

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if "{}" not in t]
        if bad:
            raise ValueError(f"every template needs a '{{}}' slot for the class name: {bad}")
        return v
