"""`farm printers`: list them, add one (with its Pi's enrolment code), set what is loaded, clear beds."""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer

from farm.commands import snapshot
from farm.commands.common import DURATION, UNIT_S, JsonOpt, ask, change, die, emit, plain, table
from farm.core.client import FarmClient
from farm.core.settings import get_settings
from farm.core.wire import DriverName, NewEnrolment, PrinterSettings

printers_app = typer.Typer(help="List printers (with no command), set what is loaded, clear beds.")


@printers_app.callback(invoke_without_command=True)
def printers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List printers and what they are doing."""
    if ctx.invoked_subcommand is not None:
        return
    data = ask(FarmClient.printers)
    if as_json:
        emit(data)
        return
    table(
        "printers",
        ["name", "model", "protocol", "state", "material", "job", "progress", "message"],
        [
            [
                p.name,
                p.model,
                p.protocol,
                p.state,
                " ".join(filter(None, [p.material, p.color])),
                p.job,
                f"{p.progress:.0f}%" if p.progress is not None else "",
                p.message,
            ]
            for p in data
        ],
    )


printers_app.command("snapshot")(snapshot.printers_snapshot)


@printers_app.command("add")
def printers_add(
    name: Annotated[str, typer.Argument(help="The printer's name in the farm, e.g. mk4-1.")],
    model: Annotated[str, typer.Option(help="Its model, e.g. MK4, MINI, P1S (`farm profiles`).")],
    driver: Annotated[
        str, typer.Option(help="How its Pi talks to it: prusalink, octoprint, moonraker or bambu.")
    ] = "prusalink",
    expires: Annotated[str, typer.Option(help="How long the code stays valid: 30m, 2h, 1d.")] = "30m",
    url: Annotated[
        str | None, typer.Option(help="The coordinator's address as the Pi reaches it [default: FARM_URL].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a printer and print a one-time code, with the command that enrols its Pi (admin)."""
    m = DURATION.fullmatch(expires.strip().lower())
    if m is None:
        raise typer.BadParameter(f"'{expires}' is not a duration (30m, 2h, 1d)", param_hint="--expires")
    # Unchecked here (a driver may be none of DriverName's): the coordinator's 422 says what is wrong.
    ttl_s = int(m[1]) * UNIT_S[m[2]]
    body = NewEnrolment.model_construct(
        printer=name, model=model, driver=cast(DriverName, driver), ttl_s=ttl_s
    )
    data = change(lambda farm: farm.enrol(body))
    base = (url or get_settings().url).rstrip("/")
    command = f"farm agent enroll {base} {data.code}"
    if as_json:
        emit({**plain(data), "command": command, "install": f"curl -fsSL {base}/agent/install.sh | sh"})
        return
    typer.echo(
        f"{name}: a {data.model} ({data.driver}); "
        f"enrolment code, single use, until {data.expires_at}:\n"
        f"  {data.code}\n"
        f"On its Pi, install the agent (if it is not yet) and enrol:\n"
        f"  curl -fsSL {base}/agent/install.sh | sh\n"
        f"  {command}\n"
        f"then: farm agent install-service"
    )


@printers_app.command("clear")
def printers_clear(
    name: Annotated[str, typer.Argument(help="The printer whose bed is now empty.")], as_json: JsonOpt = False
) -> None:
    """Confirm a printer's bed is empty, so it takes the next job."""
    data = change(lambda farm: farm.clear(name))
    emit(data) if as_json else typer.echo(f"{name}: bed clear, ready for the next job")


@printers_app.command("remove")
def printers_remove(
    name: Annotated[str, typer.Argument(help="The printer to take out of the farm.")],
    as_json: JsonOpt = False,
) -> None:
    """Take a printer out of the farm (its agent registers it again if it is still running)."""
    data = change(lambda farm: farm.remove_printer(name))
    emit(data) if as_json else typer.echo(f"{name}: removed")


@printers_app.command("set")
def printers_set(
    name: Annotated[str, typer.Argument(help="The printer to change.")],
    material: Annotated[str | None, typer.Option(help="Loaded: PLA, PETG, ABS, ASA or TPU.")] = None,
    color: Annotated[str | None, typer.Option(help="Its colour ('' for any).")] = None,
    nozzle: Annotated[float | None, typer.Option(help="The fitted nozzle's diameter in mm.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Its tags, replacing the old ones (repeatable); --tag '' clears.")
    ] = None,
    location: Annotated[str | None, typer.Option(help="Where it stands, e.g. 'shelf 2'.")] = None,
    power_group: Annotated[
        str | None, typer.Option(help="Its circuit: only so many printers of a group heat up at once.")
    ] = None,
    auto_eject: Annotated[bool | None, typer.Option(help="Whether it clears its own bed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Say what a printer has loaded: jobs go only to printers with their material and colour."""
    body: dict[str, Any] = {
        k: v
        for k, v in {
            "material": material,
            "color": color,
            "nozzle": nozzle,
            "tags": [t for t in tag if t] if tag is not None else None,
            "location": location,
            "power_group": power_group,
            "auto_eject": auto_eject,
        }.items()
        if v is not None
    }
    if not body:
        die("nothing to set: see `farm printers set --help` for what can be set", 2)
    # Unchecked here: the coordinator's refusal (a 422) is what this has always said.
    settings = PrinterSettings.model_construct(**body)  # only what was given: nothing else changes
    data = change(lambda farm: farm.set_printer(name, settings))
    if as_json:
        emit(data)
    else:
        typer.echo(
            f"{name}: {data.material} {data.color or '(any colour)'}, {data.nozzle:g} mm nozzle, "
            f"auto-eject {'on' if data.auto_eject else 'off'}"
        )
