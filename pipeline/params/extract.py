from pydantic import Field, field_validator

from pipeline.params.base import PRESET, Section, Template


class ExtractParams(Section):
    """How the frozen image encoder is run once over every split."""

    views: int = Field(
        default=10,
        ge=0,
        le=256,
        description="augmented views per training image (+1 clean view); Tip-Adapter's augment_epoch is 10",
    )
    crop_scale_min: float = Field(
        default=0.5, gt=0.0, le=1.0, description="RandomResizedCrop scale range [min, 1] (SHIP, Tip-Adapter: 0.5)"
    )
    batch_size: int = Field(default=256, ge=1, description="images (x views) per encoder batch")
    workers: int = Field(
        default=2,
        ge=0,
        description="DataLoader worker processes decoding and augmenting images, per GPU rank (on a CPU none: the "
        "encoder's threads use every core and decoding is ~1-2% of the work, so it stays in the encoding process)",
    )
    block_size: int = Field(
        default=1024, ge=1, description="images per resumable block (= one shard); a multiple of 256 if > 256"
    )
    skip_corrupt: bool = Field(default=False, description="skip unreadable images (listed in the store)")
    templates: tuple[Template, ...] | None = Field(
        default=None,
        min_length=1,
        description="zero-shot prompt template(s), '{}' = class name; null: the dataset preset's (CoOp's per-dataset "
        "template)",
        json_schema_extra=PRESET,
    )

    @field_validator("block_size")
    @classmethod
    def _whole_chunks(cls, v: int) -> int:
        if v > 256 and v % 256:
            raise ValueError("must be an integer <= 256 or a multiple of 256 (shards hold whole 256-row chunks)")
        return v
