"""`farm status` (counts) and `farm watch` (a live view): the farm at a glance."""

from __future__ import annotations

from typing import Annotated

import typer

from farm.commands.common import JsonOpt, ask, client, die, emit
from farm.commands.watch import run_watch
from farm.core.client import FarmClient, FarmError


def status(as_json: JsonOpt = False) -> None:
    """Builds by stage, jobs by state and printers by state."""
    data = ask(FarmClient.status)
    if as_json:
        emit(data)
        return
    for section, by in (("builds", data.builds), ("jobs", data.jobs), ("printers", data.printers)):
        counts = ", ".join(f"{k} {v}" for k, v in by.items() if v) or "none"
        typer.echo(f"{section:9} {counts}")
    walls = {"isolated": "sandboxed", "off": "UNSANDBOXED (FARM_CAD_SANDBOX=off)", "none": "no CAD"}
    for worker in data.workers:
        walled = walls.get(worker.sandbox, worker.sandbox)
        typer.echo(f"{'worker':9} {worker.name} ({'+'.join(worker.queues)}): {walled}")


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
