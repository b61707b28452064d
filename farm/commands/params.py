"""Build parameters from the command line: `--param`, `--params file.json` and `--matrix`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any


class ParamError(ValueError):
    """A malformed parameter option; the message says which and how to write it."""


def combine(
    pairs: list[str], params_file: Path | None = None, matrix: list[str] | None = None
) -> list[dict[str, Any]]:
    """One parameter set per build: the file's values, overridden by --param, times each --matrix.

    `--matrix size=10,20 --matrix hole=true,false` makes four sets (the cross product).
    """
    base: dict[str, Any] = load_file(params_file) if params_file else {}
    base.update(parse_pairs(pairs))
    axes = [parse_axis(spec) for spec in matrix or []]
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        raise ParamError(f"--matrix names a parameter twice: {', '.join(names)}")
    return [
        {**base, **dict(zip(names, values, strict=True))}
        for values in itertools.product(*(v for _, v in axes))
    ]


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"--param takes NAME=VALUE, got '{pair}'")
        params[key.strip()] = value
    return params


def parse_axis(spec: str) -> tuple[str, list[str]]:
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",")]
    if not sep or not key.strip() or not all(items):
        raise ParamError(f"--matrix takes NAME=A,B,C, got '{spec}'")
    return key.strip(), items


def load_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ParamError(f"cannot read --params {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ParamError(f"--params {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ParamError(f'--params {path} must hold a JSON object, e.g. {{"width": 40, "holes": true}}')
    return data
