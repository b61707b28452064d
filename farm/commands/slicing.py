"""`farm profiles` and `farm slice`: the slicing stage, run locally with the workers' wrapper."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from farm.commands.atomic import publish, staging
from farm.commands.common import die
from farm.commands.options import BrimOpt, InfillOpt, SetOpt, SupportsOpt, parse_settings
from farm.core.print_options import print_options
from farm.core.printer_models import (
    MODELS,
    PrinterModel,
    UnknownChoice,
    check_material,
    check_model,
    check_quality,
)
from farm.core.slice_error import SliceError

if TYPE_CHECKING:
    from workers.slice_cache import SliceCache
    from workers.slicer import SliceResult


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "printfarm" / "slices"


def profiles_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the printer models the farm can slice for."""
    rows = [
        {
            "model": m.name,
            "title": m.title,
            "bed_x": m.bed[0],
            "bed_y": m.bed[1],
            "bed_z": m.bed[2],
            "nozzle": m.nozzle,
            "protocol": m.protocol,
            "output": m.output_suffix,
            "materials": list(m.materials),
            "qualities": list(m.qualities),
        }
        for m in MODELS.values()
    ]
    if json_out:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        bed = f"{r['bed_x']:g} x {r['bed_y']:g} x {r['bed_z']:g} mm"
        typer.echo(f"{r['model']:<8} {bed:<22} {r['protocol']:<10} {r['title']}")


def slice_command(
    mesh: Annotated[Path, typer.Argument(help="An .stl, .3mf or .obj mesh.")],
    printer_model: Annotated[str, typer.Option("--printer-model", help="A model from `farm profiles`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The G-code (or .gcode.3mf) to write.")],
    material: Annotated[str, typer.Option(help="PLA, PETG, ABS, ASA or TPU.")] = "PLA",
    quality: Annotated[str, typer.Option(help="draft, standard or fine.")] = "standard",
    infill: InfillOpt = None,
    supports: SupportsOpt = None,
    brim: BrimOpt = None,
    setting: SetOpt = None,
    copies: Annotated[
        int, typer.Option(min=1, max=1000, help="Copies arranged on one plate; says how many fit if not all.")
    ] = 1,
    cache_dir: Annotated[Path | None, typer.Option(help="Slice cache directory.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Always run the slicer.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Slice a mesh locally, with the same profiles and cache as the farm's workers."""
    from workers.slice_cache import SliceCache  # lazy: the worker extra, not in the agent install

    model, material, quality = _choices(printer_model, material, quality)
    overrides = _overrides(infill, supports, brim) | parse_settings(setting)
    cache = None if no_cache else SliceCache(cache_dir or default_cache_dir())
    result = _slice_into_place(
        mesh, model, output, material=material, quality=quality, overrides=overrides, copies=copies,
        cache=cache, json_out=json_out,
    )  # fmt: skip
    if json_out:
        doc = {"output": str(result.gcode), "cached": result.cached, **result.meta.to_json()}
        typer.echo(json.dumps(doc))
    else:
        typer.echo(_describe(result))


def _choices(printer_model: str, material: str, quality: str) -> tuple[PrinterModel, str, str]:
    """The model, material and quality, by the rules `farm submit` and `farm printers set` check."""
    try:
        model = check_model(printer_model)
        return model, check_material(material, model), check_quality(quality, model)
    except UnknownChoice as exc:
        die(str(exc), 2)


def _overrides(infill: str | None, supports: str | None, brim: float | None) -> dict[str, str]:
    try:
        return print_options(infill=infill, supports=supports, brim=brim)
    except SliceError as exc:
        die(str(exc))


def _slice_into_place(
    mesh: Path,
    model: PrinterModel,
    output: Path,
    *,
    material: str,
    quality: str,
    overrides: dict[str, str],
    copies: int,
    cache: SliceCache | None,
    json_out: bool,
) -> SliceResult:
    """Slice beside the output, then rename onto it: a slice that fails leaves the old file."""
    from workers.arrange import CopiesDontFit  # lazy: the worker extra, not in the agent install
    from workers.slicer import output_paths, slice_mesh  # lazy: the worker extra, not in the agent install

    plain, send = output_paths(output, model)
    try:
        with staging(send.parent) as stage:
            result = slice_mesh(
                mesh, model, stage / output.name, material=material, quality=quality,
                overrides=overrides, copies=copies, cache=cache,
            )  # fmt: skip
            staged_plain = result.plain_gcode or result.gcode
            publish({staged_plain: plain, result.gcode: send} if send != plain else {result.gcode: send})
    except CopiesDontFit as exc:
        if json_out:  # scripts (and the coordinator) get the split as data
            typer.echo(json.dumps({"error": str(exc), "per_plate": exc.per_plate, "plates": exc.plates}))
        die(str(exc))
    except SliceError as exc:
        die(str(exc))
    except OSError as exc:
        die(f"cannot write the slice: {exc}")
    return dataclasses.replace(result, gcode=send, plain_gcode=plain)


def _describe(result: SliceResult) -> str:
    m = result.meta
    hit = " (from the cache)" if result.cached else ""
    size = ""
    if m.bbox:
        (x0, y0, z0), (x1, y1, z1) = m.bbox
        size = f", {x1 - x0:.1f} x {y1 - y0:.1f} x {z1 - z0:.1f} mm"
    objects = f"{m.objects} objects, " if m.objects and m.objects > 1 else ""
    return (
        f"{result.gcode}{hit}: {m.printer_model}, {objects}{m.layers} layers{size}, "
        f"{_duration(m.print_time_s)}, {m.filament_g} g / {m.filament_m} m of {m.filament_type or 'filament'}"
    )


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "unknown time"
    h, rest = divmod(seconds, 3600)
    return f"{h}h {rest // 60}m" if h else f"{rest // 60}m {rest % 60}s"


def register(app: typer.Typer) -> None:
    """Add `profiles` and `slice` to the `farm` command."""
    app.command("profiles")(profiles_command)
    app.command("slice")(slice_command)
