"""`farm agent enroll` and `farm agent install-service`: a Pi joins the farm with one code.

Only httpx, typer and pydantic (the agent's base install): no server or CAD packages.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from farm.commands.agent_tools import (
    AccessCodeOpt,
    ApiKeyOpt,
    DriverOpt,
    HostOpt,
    PasswordOpt,
    PortOpt,
    SerialOpt,
    UsernameOpt,
)
from farm.commands.common import die
from farm.core.client import FarmClient, FarmError
from farm.core.states import PrinterState
from farm.core.wire import Enrolment
from printers.config import AgentConfig, CoordinatorConfig
from printers.drivers.base import DriverError, PrinterConfig
from printers.tools import check, printer_config_from_flags

T = TypeVar("T")

SYSTEMD_DIR = Path("/etc/systemd/system")
CONFIG_EXIT = 2  # the agent's exit status for a configuration mistake: restarting cannot help


def default_config() -> Path:
    """Where enrol writes agent.toml and install-service reads it: /etc/printfarm as root, else
    ~/.config/printfarm."""
    if os.geteuid() == 0:
        return Path("/etc/printfarm/agent.toml")
    return Path.home() / ".config" / "printfarm" / "agent.toml"


ConfigOut = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Where agent.toml goes [default: /etc/printfarm as root, else ~/.config/printfarm].",
    ),
]


def _ask_missing(
    driver: str, password: str | None, api_key: str | None, serial: str | None, access_code: str | None
) -> tuple[str | None, str | None, str | None, str | None]:
    """Prompt for the secret(s) this driver cannot work without (printers.tools.REQUIRED)."""
    if driver == "prusalink" and not (password or api_key):
        password = typer.prompt(
            "PrusaLink password (the printer shows it: Settings > Network)", hide_input=True
        )
    elif driver == "octoprint" and not api_key:
        api_key = typer.prompt("OctoPrint API key (Settings > Application Keys)", hide_input=True)
    elif driver == "bambu":
        serial = serial or typer.prompt("Serial number (the printer's Settings > Device)")
        if not access_code:
            access_code = typer.prompt("LAN access code (Settings > Network)", hide_input=True)
    return password, api_key, serial, access_code


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by its owner only (0600) from the first byte: it holds secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an old .part of another mode keeps its mode on O_CREAT
        f.write(text)
    part.replace(path)


def enroll_command(
    url: Annotated[str, typer.Argument(help="The coordinator, e.g. http://farm.local:8000.")],
    code: Annotated[str, typer.Argument(help="The code `farm printers add` printed.")],
    driver: DriverOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    api_key: ApiKeyOpt = None,
    username: UsernameOpt = None,
    password: PasswordOpt = None,
    serial: SerialOpt = None,
    access_code: AccessCodeOpt = None,
    config: ConfigOut = None,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Enrol without reaching the printer first.")
    ] = False,
) -> None:
    """Join the farm: check the printer, trade the code for this printer's agent token, write agent.toml.

    Asks for what the flags do not give. The code is spent only once the printer answered."""
    out = config or default_config()
    url = url.rstrip("/")
    with FarmClient(url, None) as client:
        info = _asked(lambda: client.enrolment(code))
        typer.echo(f"enrolling printer {info.printer} ({info.model}) with {url}")
        driver = driver or typer.prompt(
            "Driver (prusalink, octoprint, moonraker, bambu)", default=info.driver
        )
        host = host or typer.prompt("The printer's address on this network (host or host:port)")
        password, api_key, serial, access_code = _ask_missing(driver, password, api_key, serial, access_code)
        printer = _printer(info, driver, host, port, api_key, username, password, serial, access_code)
        if not skip_check:
            _check(printer, host)
        granted = _asked(lambda: client.enroll(code))
    cfg = AgentConfig(coordinator=CoordinatorConfig(url=url, token=granted.token), printer=printer)
    write_private(out, cfg.to_toml())
    typer.echo(
        f"enrolled: {out} (mode 600) holds token '{granted.token_name}' for {printer.name}\n"
        f"run it: farm agent --config {out}\n"
        f"or as a service: farm agent install-service --config {out}"
    )


def _asked(call: Callable[[], T]) -> T:
    """A call about the code; a refusal of it (a 4xx) exits 2, as a bad argument."""
    try:
        return call()
    except FarmError as exc:
        die(str(exc), 2 if exc.status and 400 <= exc.status < 500 else 1)


def _printer(
    info: Enrolment,
    driver: str,
    host: str,
    port: int | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    serial: str | None,
    access_code: str | None,
) -> PrinterConfig:
    """The [printer] table from the flags and answers, named and modelled as the farm enrolled it."""
    try:
        return printer_config_from_flags(
            None, driver, host, port, api_key, username, password, serial, access_code,
            info.model, info.printer,
        )  # fmt: skip
    except ValueError as exc:
        die(str(exc), 2)


def _check(printer: PrinterConfig, host: str) -> None:
    """Reach the printer before the code is spent: a wrong address or secret is fixed and retried."""
    try:
        status = check(printer)
    except DriverError as exc:
        die(f"{exc} (the code is still good: fix this and run enroll again)")
    if status.state == PrinterState.OFFLINE:
        answer = status.message or "offline"
        die(f"{printer.name} does not answer at {host}: {answer} (the code is still good)")
    typer.echo(f"{printer.name}: {status.state}")


def unit_text(config: Path, printer: str, user: str | None) -> str:
    """A systemd unit running the agent: restarted when it fails (not on a config mistake, exit 2),
    logging to journald (`journalctl -u NAME`)."""
    run_as = f"User={user}\n" if user and user != "root" else ""
    return (
        "[Unit]\n"
        f"Description=printfarm agent for printer {printer}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"{run_as}"
        f"ExecStart={sys.executable} -m farm agent --config {config}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        f"RestartPreventExitStatus={CONFIG_EXIT}\n"
        "StandardOutput=journal\n"
        "StandardError=journal\n"
        "SyslogIdentifier=printfarm-agent\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def unit_name(printer: str) -> str:
    return "printfarm-agent-" + re.sub(r"[^A-Za-z0-9_.-]", "-", printer) + ".service"


def install_service_command(
    config: ConfigOut = None,
    unit_dir: Annotated[
        Path, typer.Option(help="Where the unit file goes; enabled only in the default, as root.")
    ] = SYSTEMD_DIR,
) -> None:
    """Write a systemd unit for this agent and, as root with systemd, enable and start it."""
    path = (config or default_config()).resolve()
    try:
        cfg = AgentConfig.load(path)
        cfg.token()
    except SystemExit as exc:
        die(str(exc), 2)
    owner = pwd.getpwuid(path.stat().st_uid).pw_name
    name = unit_name(cfg.printer.name)
    unit = unit_dir / name
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        unit.write_text(unit_text(path, cfg.printer.name, owner))
    except OSError as exc:
        die(f"cannot write {unit}: {exc.strerror} (run as root, or give --unit-dir)")
    typer.echo(f"wrote {unit}")
    systemctl = shutil.which("systemctl")
    if unit_dir == SYSTEMD_DIR and systemctl and os.geteuid() == 0 and Path("/run/systemd/system").is_dir():
        for argv in ([systemctl, "daemon-reload"], [systemctl, "enable", "--now", name]):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                die(f"{' '.join(argv)}: {done.stderr.strip()}")
        typer.echo(f"enabled and started {name}; its log: journalctl -u {name} -f")
    else:
        typer.echo(f"to start it: sudo systemctl daemon-reload && sudo systemctl enable --now {name}")


def register(agent_app: typer.Typer) -> None:
    agent_app.command("enroll")(enroll_command)
    agent_app.command("install-service")(install_service_command)
