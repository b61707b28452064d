"""Command-line options that `farm slice` (local) and `farm submit` (farm) share: the slicer choices."""

from __future__ import annotations

from typing import Annotated

import typer

InfillOpt = Annotated[str | None, typer.Option(help="Infill density, e.g. 20 or 20%.")]
SupportsOpt = Annotated[str | None, typer.Option(help="none, buildplate (only from the bed) or everywhere.")]
BrimOpt = Annotated[float | None, typer.Option(help="Brim width in mm (0: none).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "--setting",
        help="Any PrusaSlicer setting KEY=VALUE, e.g. --set layer_height=0.16; repeat. Wins over "
        "--infill/--supports/--brim.",
    ),
]


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """`["layer_height=0.16"]` -> `{"layer_height": "0.16"}`; a pair without `=` is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set wants KEY=VALUE, e.g. --set layer_height=0.16; got '{pair}'")
        out[key.strip()] = value.strip()
    return out
