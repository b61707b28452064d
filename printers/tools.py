"""Setting up a printer without a coordinator: is it reachable, and can it print a file we send?

For the person beside a new Raspberry Pi: `farm agent check` and `farm agent print` call these
with the same `[printer]` table the agent will use, so a working check means a working agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.core.names import safe_name
from farm.core.states import PrinterState
from printers.config import read_toml
from printers.drivers import DRIVERS, make_driver
from printers.drivers.base import Driver, DriverError, PrinterConfig, PrinterStatus

ProgressReport = Callable[[str, float | None], None]  # (phase: "upload" | "print", percent or None)

# The print is over, for better or worse (IDLE: someone cleared the screen, outcome unknown).
OVER = (PrinterState.FINISHED, PrinterState.FAILED, PrinterState.IDLE)
ACTIVE = (PrinterState.PRINTING, PrinterState.PAUSED, PrinterState.BUSY)
READY = (PrinterState.IDLE, PrinterState.FINISHED, PrinterState.FAILED)
# Until the printer has shown our print running, FINISHED/IDLE may be left over from the last
# print; after this long they are taken at their word (a very short print can end unseen).
START_GRACE_S = 30.0

# What each driver cannot work without: one of the fields in each group must be set.
REQUIRED: dict[str, list[tuple[str, ...]]] = {
    "prusalink": [("password", "api_key")],
    "octoprint": [("api_key",)],
    "moonraker": [],
    "bambu": [("serial",), ("access_code",)],
}
DEFAULT_NAME = "printer"
DEFAULT_MODEL = "unknown"  # only a label here: no driver needs it to talk to the printer


# -- the two tools ---------------------------------------------------------------------------


def check(config: PrinterConfig) -> PrinterStatus:
    """Connect and read the normalised state. OFFLINE is an answer; a refused password raises."""
    driver = _driver(config)
    try:
        return driver.status()
    finally:
        driver.close()


def print_file(
    config: PrinterConfig,
    path: Path,
    *,
    on_progress: ProgressReport,
    poll_s: float = 2.0,
    stop: threading.Event | None = None,
) -> PrinterStatus:
    """Upload `path` (streamed), start it and follow it to FINISHED, FAILED or ATTENTION.

    Returns the last status read: the final one, or the latest when `stop` is set (the printer
    carries on printing; we only stop watching).
    """
    stop = stop or threading.Event()
    driver = _driver(config)
    try:
        before = driver.status()
        if before.state not in READY:
            detail = f" ({before.message})" if before.message else ""
            raise DriverError(f"{config.name} is {before.state}{detail}: it cannot start a print now")

        def upload_progress(sent: int, total: int) -> None:
            on_progress("upload", 100.0 * sent / max(total, 1))

        # One request uploads and starts, as the agent does: nothing can slip in between.
        # Under the name the farm would give it: drivers take no spaces, `..` or odd characters.
        driver.upload(path, safe_name(path.name), start=True, progress=upload_progress)
        return _follow(driver, on_progress, poll_s, stop)
    finally:
        driver.close()


def _follow(
    driver: Driver, on_progress: ProgressReport, poll_s: float, stop: threading.Event
) -> PrinterStatus:
    started = time.monotonic()
    seen_running = False
    while True:
        status = driver.status()
        seen_running = seen_running or status.state in ACTIVE
        settled = seen_running or time.monotonic() - started > START_GRACE_S
        # ATTENTION ends it too: only a person at the printer's screen can move it on.
        if status.state == PrinterState.ATTENTION or (settled and status.state in OVER):
            return status
        if status.state == PrinterState.PRINTING:
            on_progress("print", status.progress)
        if stop.wait(poll_s):
            return status


def _driver(config: PrinterConfig) -> Driver:
    try:
        return make_driver(config)
    except ValueError as exc:  # an unknown driver name: a configuration problem like a bad password
        raise DriverError(str(exc)) from None


# -- configuration from a file or from flags ------------------------------------------------


def printer_config_from_flags(
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
    """The printer from an agent TOML's `[printer]` table, from flags, or both (flags win).

    Raises ValueError naming what is missing, as flags (`--password`) or as TOML keys.
    """
    flags = {
        "driver": driver,
        "host": host,
        "port": port,
        "api_key": api_key,
        "username": username,
        "password": password,
        "serial": serial,
        "access_code": access_code,
        "model": model,
        "name": name,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    table = _printer_table(config) if config is not None else {}
    merged: dict[str, Any] = {"name": DEFAULT_NAME, "model": DEFAULT_MODEL, **table, **given}
    where = f"{config}: [printer] needs" if config is not None else "missing"
    label = _toml_key if config is not None else _flag
    missing = _missing(merged, from_file=config is not None)
    if missing:
        raise ValueError(f"{where} " + ", ".join(" or ".join(map(label, group)) for group in missing))
    try:
        return PrinterConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{label(str(e['loc'][0]))}: {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ValueError(f"bad printer settings: {problems}") from None


def _printer_table(path: Path) -> dict[str, Any]:
    table = read_toml(path, "config").get("printer")
    if not isinstance(table, dict):
        raise ValueError(f"config {path} has no [printer] table")
    return table


def _missing(settings: dict[str, Any], *, from_file: bool) -> list[tuple[str, ...]]:
    driver = settings.get("driver")
    if not driver:
        return [("driver",)]
    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; available: {', '.join(sorted(DRIVERS))}")
    # From flags a host is required: the 127.0.0.1 default is never the printer beside a Pi.
    groups = ([] if from_file else [("host",)]) + REQUIRED.get(driver, [])
    return [g for g in groups if not any(settings.get(field) for field in g)]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _toml_key(field: str) -> str:
    return field
