"""The strict base every params section derives from, and the value types the sections share.

Unknown keys are errors, values are immutable, and no float may be inf or nan (a NaN learning rate or an infinite
Tip-Adapter alpha would train silently into chance-level results). A number field refuses true/false (pydantic
would take `seeds: [true]` for seed 1).
"""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pipeline.params.messages import DESCRIBES, describe, unwrap

# Python's `random`, numpy and torch all accept seeds in this range; derived seeds (seed * stride + offset) stay
# below 2**63 with it.
MAX_SEED = 2**31 - 1


Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"an integer in [0, {MAX_SEED}]")]

TEMPLATE_RULE = "exactly one '{}' (the class name) and no other braces"


def _one_slot(template: str) -> str:
    if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        raise ValueError(f"a template must contain {TEMPLATE_RULE}")
    return template


setattr(_one_slot, DESCRIBES, f"a string with {TEMPLATE_RULE}")
Template = Annotated[str, AfterValidator(_one_slot)]

# json_schema_extra of the fields a dataset preset fills when params leave them null (pipeline/presets).
PRESET = {"preset": True}


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """True if `value` is (or, for a list field, holds) true/false where the schema wants a number."""
    bare, _, _ = unwrap(annotation)
    if bare in (int, float):
        return isinstance(value, bool)
    args = get_args(bare)
    if get_origin(bare) is tuple and isinstance(value, list | tuple) and args:
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return any(_bool_for_number(a, v) for a, v in zip(items, value, strict=False))
    return False


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name] if info.field_name else None
        if field is not None and _bool_for_number(field.annotation, value):
            raise ValueError(
                f"true/false where a number belongs; must be {describe(field.annotation, list(field.metadata))}"
            )
        return value
