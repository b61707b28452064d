"""`farm status` (counts) and `farm watch` (a live view): the farm at a glance."""

from __future__ import annotations

from typing import Annotated

import typer

from farm.commands.common import JsonOpt, client, die, emit, get
from farm.commands.watch import run_watch
from farm.core.client import FarmError


def status(as_json: JsonOpt = False) -> None:
    """Builds by stage, jobs by state and printers by state."""
    data = get("/api/status")
    if as_json:
        emit(data)
        return
    for section in ("builds", "jobs", "printers"):
        counts = ", ".join(f"{k} {v}" for k, v in data[section].items() if v) or "none"
        typer.echo(f"{section:9} {counts}")
    for worker in data.get("workers", []):
        walls = {"isolated": "sandboxed", "off": "UNSANDBOXED (FARM_CAD_SANDBOX=off)", "none": "no CAD"}
        queues = "+".join(worker["queues"])
        walled = walls.get(worker["sandbox"], worker["sandbox"])
        typer.echo(f"{'worker':9} {worker['name']} ({queues}): {walled}")


def watch(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option(help="Draw once and exit (for scripts and tests).")] = False,
) -> None:
    """A live view of printers and active jobs, with progress bars and ETAs. Ctrl-C ends it."""
    with client() as farm:
        try:
            run_watch(farm, interval=interval, once=once)
        except FarmError as exc:
            die(str(exc))
