"""Validation messages that name the key path, the value found there and what the schema allows.

pydantic's own messages say what went wrong with a value in isolation ("Input should be less than or equal to
2147483647"), and some say nothing useful at all: a list whose items all fail its item check is also reported as
"Tuple should have at least 1 item after validation, not 0". Here every error is rewritten from the schema itself
(the field's type and its bounds), so a message reads, e.g.,

    seeds.0: must be an integer in [0, 2147483647] (got 1180591620717411303424)
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo

# A validator whose function carries this attribute describes the values it accepts (e.g. a prompt template).
DESCRIBES = "__params_allowed__"


def unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(bare type, constraint metadata, nullable) of an annotation: Annotated and `X | None` taken apart."""
    metadata: list[Any] = []
    nullable = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                metadata += item.metadata if isinstance(item, FieldInfo) else [item]
        elif origin in (Union, types.UnionType) and type(None) in get_args(annotation):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            nullable = True
            annotation = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 - built at runtime
        else:
            return annotation, metadata, nullable


def field_at(model: type[BaseModel], loc: Iterable[Any]) -> tuple[Any, list[Any]] | None:
    """(annotation, field metadata) of the value at `loc` (a pydantic error location) in `model`; None when the
    location leads outside the schema (an unknown key)."""
    annotation: Any = model
    metadata: list[Any] = []
    for part in loc:
        bare, _, _ = unwrap(annotation)
        origin = get_origin(bare)
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            field = bare.model_fields.get(str(part))
            if field is None:
                return None
            annotation, metadata = field.annotation, list(field.metadata)
        elif origin is tuple and isinstance(part, int):
            args = get_args(bare)
            if len(args) == 2 and args[1] is Ellipsis:
                annotation = args[0]
            elif part < len(args):
                annotation = args[part]
            else:
                return None
            metadata = []
        elif origin is dict:
            annotation, metadata = get_args(bare)[1], []
        else:
            return None
    return annotation, metadata


def _number(x: Any) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range(metadata: list[Any]) -> str:
    """' in [0, 256]', ' > 0', ... from annotated_types bounds; '' without bounds."""
    low = high = None
    for m in metadata:
        if isinstance(m, at.Ge):
            low = ("[", m.ge)
        elif isinstance(m, at.Gt):
            low = ("(", m.gt)
        elif isinstance(m, at.Le):
            high = ("]", m.le)
        elif isinstance(m, at.Lt):
            high = (")", m.lt)
    if low and high:
        return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f" {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


def _min_length(metadata: list[Any]) -> int | None:
    return next((m.min_length for m in metadata if isinstance(m, at.MinLen)), None)


def describe(annotation: Any, metadata: list[Any] | None = None, *, finite: bool = False) -> str:
    """What the schema allows at a field, in words: 'an integer in [0, 2147483647]', "one of 'sgd', 'adamw'",
    'a list of at least 1 item, each ...', 'a section with keys ...'; ', or null' when null is allowed."""
    bare, inner, nullable = unwrap(annotation)
    metadata = [*(metadata or []), *inner]
    custom = [getattr(m.func, DESCRIBES, None) for m in metadata if isinstance(m, AfterValidator | BeforeValidator)]
    custom = [c for c in custom if c]
    origin = get_origin(bare)
    if custom:
        text = custom[0]
    elif bare is bool:
        text = "true or false"
    elif bare is int:
        text = "an integer" + _range(metadata)
    elif bare is float:
        text = ("a finite number" if finite else "a number") + _range(metadata)
    elif bare is str:
        text = "a string"
    elif origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in get_args(bare))
    elif origin is tuple:
        args = get_args(bare)
        if len(args) == 2 and args[1] is Ellipsis:
            least = _min_length(metadata)
            count = f" of at least {least} item{'s' if least != 1 else ''}" if least else ""
            text = f"a list{count}, each {describe(args[0])}"
        elif len(items := {describe(a) for a in args}) == 1:
            text = f"a list of exactly {len(args)} items, each {items.pop()}"
        else:
            text = f"a list of exactly {len(args)} items: " + "; ".join(describe(a) for a in args)
    elif origin is dict:
        text = f"a mapping of names to {describe(get_args(bare)[1])}"
    elif isinstance(bare, type) and issubclass(bare, BaseModel):
        text = "a section with keys " + ", ".join(bare.model_fields)
    else:
        text = str(bare)
    return f"{text}, or null" if nullable else text


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _allowed(model: type[BaseModel], loc: tuple[Any, ...], finite: bool = False) -> str | None:
    """What the schema allows at `loc`; None if it cannot be said (the caller falls back to pydantic's message)."""
    try:
        found = field_at(model, loc)
        return None if found is None else describe(*found, finite=finite)
    except Exception:  # a schema shape this module does not know must not turn a params error into a crash
        return None


def format_errors(model: type[BaseModel], source: str, data: dict[str, Any], err: ValidationError) -> str:
    """One line per problem: `key.path: must be <what the schema allows> (got <value>)`."""
    errors = err.errors()
    lines = [f"invalid params in {source}:"]
    for e in errors:
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        value = _lookup(data, loc)
        kind = e["type"]
        if kind in ("too_short", "too_long") and any(
            len(o["loc"]) > len(loc) and tuple(o["loc"][: len(loc)]) == loc for o in errors
        ):
            continue  # its items failed their own check (reported above): the list itself was not short
        if kind == "extra_forbidden":
            parent = field_at(model, loc[:-1])
            section, _, _ = unwrap(parent[0]) if parent else (None, [], False)
            keys = (
                f"; {'.'.join(map(str, loc[:-1])) or 'the top level'} has keys {', '.join(section.model_fields)}"
                if isinstance(section, type) and issubclass(section, BaseModel)
                else ""
            )
            lines.append(f"  {key}: unknown key (value {value!r}){keys}")
        elif kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length list with too few items
            parent = loc[:-1]
            lines.append(
                f"  {'.'.join(map(str, parent))}: must be {_allowed(model, parent)} (got {_lookup(data, parent)!r})"
            )
        elif kind == "missing":
            allowed = _allowed(model, loc)
            lines.append(f"  {key}: required key is missing" + (f" ({allowed})" if allowed else ""))
        elif kind in ("value_error", "assertion_error"):
            message = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if not loc:  # a check across sections: each problem names its own key path
                lines += [f"  {line}" for line in message.splitlines()]
            elif isinstance(value, dict):  # a check across the keys of one section
                lines.append(f"  {key}: {message}")
            else:
                lines.append(f"  {key}: {message} (got {value!r})")
        elif (allowed := _allowed(model, loc, finite=kind == "finite_number")) is not None:
            lines.append(f"  {key}: must be {allowed} (got {value!r})")
        else:
            lines.append(f"  {key or '<top level>'}: {e['msg']} (got {value!r})")
    return "\n".join(lines)
