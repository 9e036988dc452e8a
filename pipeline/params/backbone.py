from typing import Literal

from pydantic import Field

from pipeline.params.base import Section


class BackboneParams(Section):
    """Which frozen CLIP to use. Everything downstream is keyed to (model, weights identity)."""

    model: str = Field(description="open_clip architecture name, e.g. ViT-B-16, or one in pipeline/model_configs")
    pretrained: str = Field(description="open_clip pretrained tag (e.g. 'openai') or path to a local checkpoint file")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str | None = Field(default=None, description="where open_clip caches downloaded weights")
