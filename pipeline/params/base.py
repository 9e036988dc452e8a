"""The strict base every params section derives from, and the value types the sections share.

Unknown keys are errors, values are immutable, and no float may be inf or nan (a NaN learning rate or an infinite
Tip-Adapter alpha would train silently into chance-level results).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Python's `random`, numpy and torch all accept seeds in this range; derived seeds (seed * stride + offset) stay
# below 2**63 with it.
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"an integer in [0, {MAX_SEED}]")]


def _one_slot(template: str) -> str:
    if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' (the class name) and no other braces")
    return template


Template = Annotated[str, AfterValidator(_one_slot)]

# json_schema_extra of the fields a dataset preset fills when params leave them null (pipeline/presets).
PRESET = {"preset": True}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
