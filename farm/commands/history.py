"""`farm history`: ended jobs, and totals per printer and material."""

from __future__ import annotations

from typing import Annotated

import typer

from farm.commands.common import JsonOpt, client, die_farm, emit, table
from farm.core.client import FarmError


def history(
    printer: Annotated[str | None, typer.Option(help="Only jobs printed on this printer.")] = None,
    material: Annotated[str | None, typer.Option(help="Only jobs in this material, e.g. PETG.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only jobs of this token's builds.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs that ended at or after this UTC time, e.g. 2026-12-01.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only jobs that ended before this UTC time.")] = None,
    state: Annotated[str | None, typer.Option(help="done, failed or cancelled (default: all three).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the newest jobs to list.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Finished, failed and cancelled jobs, and totals per printer and material: prints, hours on
    the printer, filament (the slicer's estimate)."""
    with client() as farm:
        try:
            data = farm.history(
                limit=limit,
                printer=printer,
                material=material,
                owner=owner,
                since=since,
                until=until,
                state=state,
            )
        except FarmError as exc:
            die_farm(exc)
    if as_json:
        emit(data)
        return
    totals = data.totals
    for key, rows in (
        ("printer", [(r.printer, r) for r in totals.by_printer]),
        ("material", [(r.material, r) for r in totals.by_material]),
    ):
        table(
            f"totals by {key}",
            [key, "done", "failed", "cancelled", "hours", "filament g"],
            [[name, r.done, r.failed, r.cancelled, r.hours, r.filament_g] for name, r in rows],
        )
    every = totals.all
    typer.echo(
        f"all: {every.done} done, {every.failed} failed, {every.cancelled} cancelled, "
        f"{every.hours} h printing, {every.filament_g} g of filament"
    )
    table(
        f"newest {len(data.jobs)} jobs",
        ["id", "source", "state", "printer", "material", "ended", "error"],
        [[j.id, j.source, j.state, j.printer, j.material, j.finished_at, j.error] for j in data.jobs],
    )
