"""`farm agent check` and `farm agent print`: set up a printer beside a Pi, no coordinator needed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from farm.commands.common import die
from farm.core.states import PrinterState
from printers.drivers.base import DriverError, PrinterConfig, PrinterStatus
from printers.tools import check, print_file, printer_config_from_flags

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="An agent TOML file; its [printer] table is used."),
]
DriverOpt = Annotated[str | None, typer.Option(help="prusalink, octoprint or moonraker.")]
HostOpt = Annotated[str | None, typer.Option(help="The printer's address on the LAN.")]
PortOpt = Annotated[int | None, typer.Option(help="The printer's HTTP port (default: the protocol's).")]
ApiKeyOpt = Annotated[str | None, typer.Option(help="API key (OctoPrint, Moonraker, PrusaLink).")]
UsernameOpt = Annotated[str | None, typer.Option(help="User name (PrusaLink: maker).")]
PasswordOpt = Annotated[str | None, typer.Option(help="Password (PrusaLink: shown on the printer).")]
SerialOpt = Annotated[str | None, typer.Option(help="Serial number or port, where the protocol needs one.")]
AccessCodeOpt = Annotated[str | None, typer.Option(help="LAN access code (Bambu).")]
ModelOpt = Annotated[str | None, typer.Option(help="The printer model, e.g. MINI (a label here).")]
NameOpt = Annotated[str | None, typer.Option(help="A name for the printer in messages [default: printer].")]


def _printer(
    config: Path | None,
    driver: str | None,
    host: str | None,
    port: int | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    serial: str | None,
    access_code: str | None,
    model: str | None,
    name: str | None,
) -> PrinterConfig:
    try:
        return printer_config_from_flags(
            config, driver, host, port, api_key, username, password, serial, access_code, model, name
        )
    except ValueError as exc:
        die(str(exc))


def _describe(status: PrinterStatus) -> str:
    parts = [str(status.state)]
    if status.file:
        parts.append(status.file)
    if status.progress is not None:
        parts.append(f"{status.progress:.0f}%")
    if status.temperatures:
        parts.append(", ".join(f"{k} {v:.0f} °C" for k, v in status.temperatures.items()))
    line = " | ".join(parts)
    return f"{line}\n  {status.message}" if status.message else line


def _status_json(status: PrinterStatus) -> str:
    return json.dumps({**dataclasses.asdict(status), "state": str(status.state)})


def check_command(
    config: ConfigOpt = None,
    driver: DriverOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    api_key: ApiKeyOpt = None,
    username: UsernameOpt = None,
    password: PasswordOpt = None,
    serial: SerialOpt = None,
    access_code: AccessCodeOpt = None,
    model: ModelOpt = None,
    name: NameOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Reach the printer and show its state; exit 1 if it is offline or refuses the credentials."""
    printer = _printer(
        config, driver, host, port, api_key, username, password, serial, access_code, model, name
    )
    try:
        status = check(printer)
    except DriverError as exc:
        die(str(exc))
    typer.echo(_status_json(status) if json_out else f"{printer.name}: {_describe(status)}")
    if status.state == PrinterState.OFFLINE:
        raise typer.Exit(1)


def print_command(
    file: Annotated[Path, typer.Argument(help="The G-code to upload and print.")],
    config: ConfigOpt = None,
    driver: DriverOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    api_key: ApiKeyOpt = None,
    username: UsernameOpt = None,
    password: PasswordOpt = None,
    serial: SerialOpt = None,
    access_code: AccessCodeOpt = None,
    model: ModelOpt = None,
    name: NameOpt = None,
    poll: Annotated[float, typer.Option(help="Seconds between status reads.")] = 2.0,
) -> None:
    """Upload a file, start it and follow the print; exit 0 only if it finishes."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskID,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    printer = _printer(
        config, driver, host, port, api_key, username, password, serial, access_code, model, name
    )
    if not file.is_file():
        die(f"{file} is not a file")
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(phase: str, percent: float | None) -> None:
            if phase not in tasks:  # the print bar appears once the upload is done
                tasks[phase] = bar.add_task(f"{phase:<6} {file.name}", total=100.0)
            if percent is not None:
                bar.update(tasks[phase], completed=percent)

        try:
            status = print_file(printer, file, on_progress=on_progress, poll_s=poll)
        except DriverError as exc:
            bar.stop()
            die(str(exc))
        except KeyboardInterrupt:
            bar.stop()
            die("stopped watching; the printer carries on with whatever it was doing")
        if status.state == PrinterState.FINISHED and "print" in tasks:
            bar.update(tasks["print"], completed=100.0)
    typer.echo(f"{printer.name}: {_describe(status)}")
    if status.state != PrinterState.FINISHED:
        raise typer.Exit(1)


def register(agent_app: typer.Typer) -> None:
    """Add `check` and `print` to the `farm agent` group."""
    agent_app.command("check")(check_command)
    agent_app.command("print")(print_command)
