"""A function parameter's value from `--param NAME=VALUE` or a `--params` file, typed as declared.

One rule for both places that type values: the coordinator at submit time, from the signature
read with `ast` (so that `--param width=40` and `{"width": 40}` make the same build and hit the
same CAD cache entry), and the CAD child from the live signature (for what could not be read
statically). No build123d here.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

TYPE_NAMES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_EXPECTS: dict[type | None, str] = {bool: "true or false", int: "an integer", float: "a number"}


class ParamValueError(ValueError):
    """A value its parameter's type cannot take; the message names both."""


def annotated_type(annotation: Any) -> type | None:
    """int, float, bool or str from an annotation (a type, or its text under postponed annotations
    or when read with `ast`); None for anything else."""
    if isinstance(annotation, str):
        if optional := re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", annotation.strip()):
            annotation = optional.group(1)
        parts = [p.strip() for p in annotation.split("|") if p.strip() != "None"]
        return TYPE_NAMES.get(parts[0]) if len(parts) == 1 else None
    if annotation in TYPE_NAMES.values():
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return annotated_type(args[0])
    return None


def typed_value(name: str, raw: Any, annotation: Any = None, default: Any = None) -> Any:
    """`raw` as the parameter's annotation, else its default's type, asks for.

    Strings come from --param; numbers from a --params file are aligned with what the same text
    would give (40 for a float parameter becomes 40.0), so that both spell one build.
    """
    target = annotated_type(annotation) if annotation is not None else None
    from_default = target is None and type(default) in TYPE_NAMES.values()
    if from_default:
        target = type(default)
    expects = "a number" if target is int and from_default else _EXPECTS.get(target, "")
    try:
        value = _typed(raw, target, from_default)
    except (ValueError, OverflowError):
        raise ParamValueError(f"parameter {name!r} expects {expects}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN or infinity
        raise ParamValueError(f"parameter {name!r} expects a finite number, got {raw!r}")
    return value


def _typed(raw: Any, target: type | None, from_default: bool) -> Any:
    if not isinstance(raw, str):
        if target is float and type(raw) is int:
            return float(raw)
        if target is int and from_default and type(raw) is float and raw.is_integer():
            return int(raw)
        return raw
    if target is bool:
        return _to_bool(raw)
    if target is int and from_default:
        # `length=60` in a CAD script rarely means "integers only".
        number = float(raw)
        return int(number) if number.is_integer() else number
    if target in (int, float):
        return target(raw)
    return raw


def _to_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(raw)
