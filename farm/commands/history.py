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
    given = {"printer": printer, "material": material, "owner": owner, "since": since, "until": until}
    params = {k: v for k, v in {**given, "state": state}.items() if v is not None}
    with client() as farm:
        try:
            data = farm.get("/api/history", limit=limit, **params)
        except FarmError as exc:
            die_farm(exc)
    if as_json:
        emit(data)
        return
    for key in ("printer", "material"):
        rows = data["totals"][f"by_{key}"]
        table(
            f"totals by {key}",
            [key, "done", "failed", "cancelled", "hours", "filament g"],
            [[r[key], r["done"], r["failed"], r["cancelled"], r["hours"], r["filament_g"]] for r in rows],
        )
    every = data["totals"]["all"]
    typer.echo(
        f"all: {every['done']} done, {every['failed']} failed, {every['cancelled']} cancelled, "
        f"{every['hours']} h printing, {every['filament_g']} g of filament"
    )
    table(
        f"newest {len(data['jobs'])} jobs",
        ["id", "source", "state", "printer", "material", "ended", "error"],
        [
            [j["id"], j["source"], j["state"], j["printer"], j["material"], j["finished_at"], j["error"]]
            for j in data["jobs"]
        ],
    )
