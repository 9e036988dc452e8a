from pydantic import Field

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
    block_size: int = Field(default=1024, ge=1, description="images per resumable block / shard")
    skip_corrupt: bool = Field(default=False, description="skip unreadable images (listed in the store)")
    templates: tuple[str, ...] = Field(default=DEFAULT_TEMPLATES, min_length=1)
