"""`farm jobs` (list, retry, explain), `farm job` (one job) and `farm cancel`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from farm.commands.common import JsonOpt, ask, change, client, die_farm, emit, table
from farm.core.client import FarmError

jobs_app = typer.Typer(help="List jobs (with no command), retry failed ones, explain where they go.")


@jobs_app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state, e.g. ready or failed.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the newest this many jobs (default: every one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    data = ask(lambda farm: farm.jobs(state, most=limit))
    if as_json:
        emit(data)
        return
    table(
        "jobs",
        ["id", "source", "state", "printer", "progress", "error"],
        [
            [
                j.id,
                j.source,
                j.state,
                j.printer,
                f"{j.progress:.0f}%" if j.progress is not None else "",
                j.error,
            ]
            for j in data
        ],
    )


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[int, typer.Argument(help="The failed job to send back to the queue.")],
    as_json: JsonOpt = False,
) -> None:
    """Give a failed job one more attempt, on any printer that can take it; if its build failed, the
    part that failed (the CAD run or the slicing) is made again first."""
    data = change(lambda farm: farm.retry(job_id))
    if as_json:
        emit(data)
    elif data.state == "waiting":
        typer.echo(f"job {job_id}: waiting while its build is made again (build {data.build})")
    else:
        typer.echo(f"job {job_id}: back in the queue ({data.state})")


@jobs_app.command("explain")
def jobs_explain(
    job_id: Annotated[int, typer.Argument(help="The job to explain.")], as_json: JsonOpt = False
) -> None:
    """Say why each printer would or would not take a job."""
    data = ask(lambda farm: farm.explain(job_id))
    if as_json:
        emit(data)
        return
    job = data.job
    typer.echo(f"job {job_id} is {job.state}" + (f" on {job.printer}" if job.printer else ""))
    for entry in data.printers:
        if entry.eligible:
            place = f", next in its queue at #{entry.position}" if entry.position else ""
            typer.secho(f"  {entry.printer}: can take it{place}", fg="green")
        else:
            typer.echo(f"  {entry.printer}: " + "; ".join(entry.reasons))


def job(
    job_id: Annotated[int, typer.Argument(help="The job to show.")],
    snapshot: Annotated[
        Path | None, typer.Option(help="Save its printer camera's latest still here (see --moment).")
    ] = None,
    moment: Annotated[str, typer.Option(help="Which still: latest, start, end or failure.")] = "latest",
    as_json: JsonOpt = False,
) -> None:
    """One job: its state, printer, progress, attempts and error; its camera stills with --snapshot."""
    data = ask(lambda farm: farm.job(job_id))
    if snapshot is not None:
        with client() as farm:
            try:
                image = farm.request("GET", f"/api/jobs/{job_id}/snapshot", params={"moment": moment})
            except FarmError as exc:
                die_farm(exc)
        snapshot.write_bytes(image.content)
        kind = image.headers.get("content-type")
        typer.echo(f"job {job_id}: {kind} snapshot saved to {snapshot}", err=True)
    if as_json:
        emit(data)
        return
    for key in ("id", "source", "state", "printer", "printer_model", "material", "color", "nozzle",
                "priority", "progress", "remaining_s", "print_time_s", "filament_g", "attempts",
                "max_attempts", "retry_at", "error", "created_at", "started_at", "finished_at"):  # fmt: skip
        if (value := getattr(data, key)) not in (None, ""):
            typer.echo(f"{key:14} {value}")


def cancel(
    job_id: Annotated[int, typer.Argument(help="The job to cancel.")], as_json: JsonOpt = False
) -> None:
    """Cancel a job: a queued one never prints; a printing one is stopped on its printer."""
    data = change(lambda farm: farm.cancel(job_id))
    emit(data) if as_json else typer.echo(f"job {job_id}: cancelled")
