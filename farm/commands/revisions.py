"""`farm revisions` and `farm diff`: a part's builds over time, and what changed between two."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from farm.commands.common import JsonOpt, ask, client, die, emit, plain
from farm.commands.watch import stdout_console
from farm.core.client import FarmError
from farm.core.wire import BuildDiff, Change, Estimate


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes}m"


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _size(size: list[float] | None) -> str:
    return "-" if not size else " x ".join(f"{v:g}" for v in (round(s, 2) for s in size))


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def _estimates(est: dict[str, Estimate]) -> str:
    shown = [f"{m} {_duration(e.print_time_s)} {_number(e.filament_g, ' g')}" for m, e in est.items()]
    return ", ".join(shown) or "-"


def revisions(
    name: Annotated[str, typer.Argument(help="The project's name (as registered with the farm).")],
    part: Annotated[str, typer.Argument(help="The part's name in the project's printfarm.toml.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the newest N builds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every build of a project's part, newest first: when, commit and tag, parameters, stage,
    volume, size, and the slicer's print time and filament per printer model.
    Compare two with `farm diff A B`."""
    rows = ask(lambda farm: farm.revisions(name, part, most=limit))
    if as_json:
        emit(rows)
        return
    table = Table(title=f"{name} / {part}")
    for column in ("build", "when", "commit", "tag", "params", "stage", "volume mm³", "size mm", "estimates"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.id),
            (r.created_at or "")[:16].replace("T", " "),
            (r.git.commit or "")[:7] or "-",
            r.git.tag or "-",
            _params(r.params),
            r.stage,
            _number(r.volume_mm3),
            _size(r.size_mm),
            _estimates(r.estimates),
        )
    stdout_console().print(table)


def _change(c: Change, unit: str, fmt: Any = None) -> str:
    show = fmt or (lambda v: _number(v, unit))
    if c.a == c.b:
        return f"{show(c.a)} (same)"
    line = f"{show(c.a)} -> {show(c.b)}"
    if c.change is not None:
        sign = "+" if c.change >= 0 else "-"
        line += f" ({sign}{show(abs(c.change))}"
        line += f", {c.percent:+.1f}%)" if c.percent is not None else ")"
    return line


def _print_diff(d: BuildDiff) -> None:
    a, b = d.a, d.b
    typer.echo(f"build {a.id} -> build {b.id}" + ("" if d.same_part else " (not the same part)"))
    for what, ref in (("commit", d.commit), ("tag", d.tag)):
        if ref.a or ref.b:
            short = [(v or "-")[:12] if what == "commit" else (v or "-") for v in (ref.a, ref.b)]
            typer.echo(f"  {what:9} {short[0]} -> {short[1]}" if ref.changed else f"  {what:9} {short[0]}")
    p = d.params
    if not (p.added or p.removed or p.changed):
        typer.echo(f"  {'params':9} same ({_params(a.params)})")
    for k, v in p.changed.items():
        typer.echo(f"  {'param':9} {k}: {v.a} -> {v.b}")
    for k, added in p.added.items():
        typer.echo(f"  {'param':9} {k}: added, {added}")
    for k, removed in p.removed.items():
        typer.echo(f"  {'param':9} {k}: removed (was {removed})")
    typer.echo(f"  {'volume':9} {_change(d.volume_mm3, ' mm³')}")
    for axis, c in d.size_mm.items():
        typer.echo(f"  {'size ' + axis:9} {_change(c, ' mm', lambda v: _number(v, ' mm', 2))}")
    for model, e in d.estimates.items():
        typer.echo(f"  {model:9} time {_change(e.print_time_s, '', _duration)}")
        typer.echo(f"  {'':9} filament {_change(e.filament_g, ' g', lambda v: _number(v, ' g', 2))}")
    for side, models in ((a, d.models_only_in_a), (b, d.models_only_in_b)):
        if models:
            typer.echo(f"  sliced for {', '.join(models)} only in build {side.id}")
    if d.same_mesh:
        typer.echo("  the mesh is the same")


def diff(
    a: Annotated[int, typer.Argument(min=1, help="The earlier build's id.")],
    b: Annotated[int, typer.Argument(min=1, help="The later build's id.")],
    image: Annotated[
        Path | None,
        typer.Option(help="Also write a PNG of both parts, one camera and scale, the changes boxed in red."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed from build A to build B: parameters, volume, bounding box, the slicer's print
    time and filament per printer model both were sliced for, commit and tag."""
    with client() as farm:
        try:
            data = farm.diff(a, b)
            if image is not None:
                resp = farm.request("GET", f"/api/builds/{a}/diff/{b}/image")
                image.write_bytes(resp.content)
                regions = int(resp.headers.get("X-Changed-Regions", 0))
        except FarmError as exc:
            die(str(exc), 2 if exc.status in (400, 422) else 1)
        except OSError as exc:
            die(f"cannot write {image}: {exc.strerror}", 2)
    if as_json:  # with --image, the picture's path and how many changes it marks
        emit(data if image is None else {**plain(data), "image": {"path": str(image), "regions": regions}})
        return
    _print_diff(data)
    if image is not None:
        typer.echo(f"  image     {image}: {regions} changed region{'s' if regions != 1 else ''} marked")


def register(app: typer.Typer) -> None:
    app.command("revisions")(revisions)
    app.command("diff")(diff)
