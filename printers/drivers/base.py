"""The one interface every printer protocol implements, and the normalised state it reports."""

from __future__ import annotations

import abc
import ipaddress
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, model_validator

from farm.core.names import UnsafeName, check_segment
from farm.core.states import PrinterState


@dataclass
class PrinterStatus:
    state: PrinterState
    progress: float | None = None  # percent, 0-100
    remaining_s: int | None = None
    layer: int | None = None
    file: str | None = None  # the file the printer is printing or last printed
    temperatures: dict[str, float] = field(default_factory=dict)  # e.g. {"nozzle": 215.0, "bed": 60.0}
    error_code: str | None = None
    message: str | None = None  # human-readable reason for FAILED / ATTENTION / OFFLINE
    material: str | None = None  # what is loaded, where the printer can tell (Bambu: AMS / spool)
    color: str | None = None  # a plain colour name (see printers/colors.py)


class PrinterConfig(BaseModel):
    """How the agent reaches one printer. Secrets stay on the agent's host."""

    name: str
    model: str  # the printer model as the farm knows it, e.g. "MINI"
    driver: str  # "prusalink", later "octoprint", "moonraker", "bambu"
    host: str = "127.0.0.1"  # a name or address; also `host:port`, `http(s)://host[:port]`, `[IPv6]:port`
    port: int | None = None  # the printer's API port, when not the protocol's usual one
    https: bool = False  # set by `host = "https://…"`: the printer's HTTP API is behind TLS
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    serial: str | None = None
    access_code: str | None = None
    ftps_port: int | None = None  # Bambu: 990 unless given
    camera_port: int | None = None  # Bambu: the camera, 6000 (P1/A1's JPEG) or 322 (X1's RTSPS) unless given
    cert_sha256: str | None = None  # Bambu: pin the printer's TLS certificate (it is self-signed)
    timeout_s: float = 10.0
    auto_eject: bool = False  # the printer clears its own bed (a belt printer, an ejection mod)

    @model_validator(mode="before")
    @classmethod
    def _split_host(cls, data: Any) -> Any:
        """`host` in any of the forms people write, split into host, port and https."""
        if not isinstance(data, dict) or not isinstance(data.get("host"), str):
            return data
        host, port, scheme = parse_host(data["host"])
        data = dict(data)
        data["host"] = host
        if port is not None:
            given = data.get("port")
            if given is not None and str(given) != str(port):
                raise ValueError(f"host = {data['host']!r} says port {port} but port = {given}: keep one")
            data["port"] = port
        if scheme is not None:
            if data.get("driver") == "bambu":
                raise ValueError(
                    "host: a Bambu printer is reached over MQTT and FTPS, not HTTP: give its address only"
                )
            data["https"] = scheme == "https"
        return data


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")  # names and IPv4 addresses


def parse_host(value: str) -> tuple[str, int | None, str | None]:
    """(host, port or None, "http"/"https" or None) from `host`, `host:port`, `http(s)://host[:port]`,
    an IPv6 address bare or in brackets (`[fe80::1]:8080`). ValueError, written for the operator,
    for anything else."""

    def bad(why: str) -> ValueError:
        return ValueError(f"host = {value!r}: {why}")

    text, scheme = value.strip(), None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise bad("only http:// or https:// may come before the address")
        text = text.rstrip("/")
        if any(c in text for c in "/?#"):
            raise bad("give the printer's address only, without a path")
    if "@" in text:
        raise bad("no user@ here: use the username and password keys")
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise bad("an IPv6 address in brackets is written [fe80::1] or [fe80::1]:8080")
        port_text = rest[1:] if rest else None
        _check_ipv6(host, bad)
    elif text.count(":") > 1:
        in_brackets = "an IPv6 address with a port goes in brackets: [fe80::1]:8080"
        _check_ipv6(text, lambda why: bad(f"{why}; {in_brackets}"))
        host = text
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        if not host or not _HOSTNAME.fullmatch(host):
            raise bad("not a host name or address (e.g. 192.168.1.50, mini-1.local, [fe80::1])")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return host, port, scheme


def _check_ipv6(host: str, bad: Callable[[str], ValueError]) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise bad("not an IPv6 address") from None


class DriverError(Exception):
    """A printer refused or failed an operation. The message is written for the operator."""


ProgressCallback = Callable[[int, int], None]  # (bytes_sent, bytes_total)


def printer_path(remote_name: str) -> tuple[str, str]:
    """(folder, file name) on the printer for a name the farm made; DriverError for anything else.

    Defence in depth: the coordinator already reduces users' names to `job<N>-<safe name>`, but a
    `..`, a backslash or a control character here would be collapsed by httpx or the printer's
    server into a path outside its storage, so every driver builds its paths through this."""
    parts = remote_name.strip("/").split("/")
    try:
        for part in parts:
            check_segment(part)
    except UnsafeName as exc:
        raise DriverError(f"refusing to send {remote_name!r} to the printer: {exc}") from None
    return "/".join(parts[:-1]), parts[-1]


def url_path(remote_name: str) -> str:
    """`printer_path` as a URL path: each segment quoted, so none can add a `/` or a `?`."""
    folder, name = printer_path(remote_name)
    return "/".join(quote(p, safe="") for p in (*folder.split("/"), name) if p)


PAUSED_AT_PRINTER = (
    "the print was paused at the printer, not by the farm (filament runout, an M600 or a button): "
    "fix it there and resume, or cancel the job"
)


class Driver(abc.ABC):
    """A printer reached over its LAN API. Sync: one agent drives one printer."""

    protocol: str

    def __init__(self, config: PrinterConfig) -> None:
        self.config = config
        self.paused_by_farm = False  # set by pause(), cleared by resume/cancel/start
        self.filament: tuple[str | None, str | None] = (None, None)  # see want_filament

    def want_filament(self, material: str | None, color: str | None) -> None:
        """The material and colour name of the job about to be uploaded. Printers that feed from
        one of several slots (a Bambu AMS) pick the slot by them; the others ignore them."""
        self.filament = (material, color)

    def _unasked_pause(self, status: PrinterStatus) -> PrinterStatus:
        """A pause the farm did not ask for waits for a person: report it as ATTENTION.

        Most protocols cannot say why a print paused; a runout, an M600 or a person at the
        printer all need someone there before the job can go on."""
        if status.state == PrinterState.PAUSED and not self.paused_by_farm:
            status.state = PrinterState.ATTENTION
            status.message = status.message or PAUSED_AT_PRINTER
        return status

    # What follows is the contract tests/test_driver_contract.py checks for every protocol.

    @abc.abstractmethod
    def status(self) -> PrinterStatus:
        """Current normalised state; OFFLINE (not an exception) when the printer cannot be reached.
        Refused credentials: DriverError, or OFFLINE saying so where the protocol cannot tell
        them from a printer that is away (Bambu's MQTT)."""

    @abc.abstractmethod
    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        """Stream a file from disk to the printer (never whole in memory) under `remote_name`;
        start it if `start`. `progress(sent, total)` rises to (size, size). DriverError for an
        unsafe name, an unreachable printer, refused credentials, a busy printer when `start`,
        or a file that is being printed."""

    @abc.abstractmethod
    def start(self, remote_name: str) -> None:
        """Start printing a file that is already on the printer; DriverError when it cannot."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Pause the running print (then PAUSED); DriverError when nothing is printing."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Resume a paused print; DriverError when nothing is paused."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the print for good (then FAILED, with a message); DriverError when there is none."""

    def snapshot(self) -> tuple[bytes, str] | None:
        """One still from the printer's camera as (image bytes, media type); None without a camera.
        DriverError when the printer cannot be reached."""
        return None

    def pause_until_change(self, stop: threading.Event, timeout_s: float) -> None:
        """The agent's pause between rounds: timeout_s, or less once `stop` is set. A protocol that
        pushes its state (Bambu's MQTT) also ends it when the print state changes, so the agent
        sees a print's end when the printer says it, not at its next round."""
        stop.wait(timeout_s)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
