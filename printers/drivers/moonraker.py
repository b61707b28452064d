"""Moonraker driver: Klipper printers (Mainsail/Fluidd installs, Voron, Sovol, Creality K1 rooted...).

Every answer is a `{"result": ...}` envelope or an `{"error": {"code", "message"}}` one. The API key
is optional: Moonraker trusts clients by address unless `[authorization]` says otherwise.
Klipper itself (Klippy) can be down while Moonraker answers, so status asks `/server/info` first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from farm.core.states import PrinterState
from printers.drivers.base import (
    DriverError,
    PrinterConfig,
    PrinterStatus,
    ProgressCallback,
    printer_path,
    url_path,
)
from printers.drivers.http import HttpDriver

DEFAULT_PORT = 7125
KEY_HINT = (
    "add this host to [authorization] trusted_clients in moonraker.conf, or configure the API key "
    "(Mainsail/Fluidd: Settings > Authorization, or ~/printer_data/.moonraker.secrets)"
)
OBJECTS = "print_stats&virtual_sdcard&display_status&heater_bed&extruder"

_STATES: dict[str, PrinterState] = {
    "standby": PrinterState.IDLE,
    "printing": PrinterState.PRINTING,
    "paused": PrinterState.PAUSED,
    "complete": PrinterState.FINISHED,
    "cancelled": PrinterState.FAILED,
    "error": PrinterState.FAILED,
}
# Klippy host states other than "ready" (`/server/info` klippy_state).
_KLIPPY: dict[str, tuple[PrinterState, str]] = {
    "startup": (PrinterState.BUSY, "Klipper is starting up"),
    "shutdown": (PrinterState.ATTENTION, "Klipper shut down: fix the cause, then FIRMWARE_RESTART"),
    "error": (PrinterState.ATTENTION, "Klipper reports an error: check printer.cfg and the MCU"),
    "disconnected": (PrinterState.OFFLINE, "Moonraker is not connected to Klipper"),
}
# print_stats states a new print may start from: Klipper refuses a start only while printing, but
# on a paused printer it would replace the paused job (klippy/extras/virtual_sdcard.py).
STARTABLE = frozenset({"standby", "complete", "cancelled", "error"})
# Klipper's PAUSE/RESUME/CANCEL macros answer "ok" even when they do nothing, so check first.
_ALLOWED = {"pause": {"printing"}, "resume": {"paused"}, "cancel": {"printing", "paused"}}


class MoonrakerDriver(HttpDriver):
    protocol = "moonraker"
    default_port = DEFAULT_PORT

    def __init__(self, config: PrinterConfig) -> None:
        super().__init__(config, headers={"X-Api-Key": config.api_key} if config.api_key else {})

    def _refused(self, response: httpx.Response) -> str | None:
        # Klipper's own 403s ("... not loaded") are not about the key.
        if response.status_code in (401, 403) and "loaded" not in _detail(response):
            return f"Moonraker at {self.base_url} refused this client: {KEY_HINT}"
        return None

    # -- Driver interface

    def status(self) -> PrinterStatus:
        try:
            with self._lock:
                info = self._result("GET", "/server/info")
                klippy = str(info.get("klippy_state", "disconnected"))
                if klippy != "ready":
                    state, message = _KLIPPY.get(klippy, (PrinterState.BUSY, f"Klipper is {klippy}"))
                    return PrinterStatus(state, message=message)
                status = self._result("GET", f"/printer/objects/query?{OBJECTS}").get("status") or {}
        except httpx.TransportError as exc:
            return PrinterStatus(PrinterState.OFFLINE, message=f"cannot reach {self.base_url}: {exc!r}")
        return self._unasked_pause(_to_status(status))

    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        folder, _ = printer_path(remote_name)
        self.paused_by_farm = self.paused_by_farm and not start
        data = {"root": "gcodes", "print": "true" if start else "false"}
        if folder:
            data["path"] = folder
        response = self._post_file("/server/files/upload", path, remote_name, data, progress)
        if response.status_code != 201:
            raise DriverError(_upload_error(remote_name, response))
        result = _upload_result(response)
        if start and not result.get("print_started"):
            queued = " (it was queued in the job queue)" if result.get("print_queued") else ""
            raise DriverError(
                f"uploaded {remote_name!r}, but the printer did not start it: {self._why_not()}{queued}"
            )

    def _why_not(self) -> str:
        """Why Moonraker did not start an upload: Klipper is down, or the printer is busy."""
        with self._reachable("read /server/info"):
            klippy = str(self._result("GET", "/server/info").get("klippy_state", "unknown"))
        return "it is busy" if klippy == "ready" else f"Klipper is {klippy}, not ready"

    def start(self, remote_name: str) -> None:
        url = "/printer/print/start?filename=" + url_path(remote_name)
        with self._lock, self._reachable(f"start {remote_name!r}"):
            state = self._print_state()
            # SDCARD_PRINT_FILE on a paused printer throws the paused job away and starts this one.
            if state not in STARTABLE:
                raise DriverError(f"the printer cannot start {remote_name!r} now: it is {state}")
            response = self._request("POST", url)
        self.paused_by_farm = False
        detail = _detail(response).lower()
        if response.status_code == 404 or "unable to open" in detail:  # Klipper's SDCARD_PRINT_FILE
            raise DriverError(f"the printer has no file {remote_name!r} in its gcodes folder")
        if "sd busy" in detail:
            raise DriverError(f"the printer cannot start {remote_name!r} now: it is printing or paused")
        _expect(response, f"start {remote_name!r}")

    def pause(self) -> None:
        self._job_command("pause")
        self.paused_by_farm = True

    def resume(self) -> None:
        self._job_command("resume")
        self.paused_by_farm = False

    def cancel(self) -> None:
        self._job_command("cancel")
        self.paused_by_farm = False

    # -- HTTP

    def snapshot(self) -> tuple[bytes, str] | None:
        """A still from the first enabled webcam Moonraker lists (`/server/webcams/list`, e.g.
        crowsnest's `/webcam/?action=snapshot`); None when there is none."""
        with self._reachable("list the webcams"):
            cams = self._result("GET", "/server/webcams/list").get("webcams") or []
        url = next(
            (c.get("snapshot_url") for c in cams if c.get("enabled", True) and c.get("snapshot_url")), None
        )
        return self._image(self._camera_url(str(url))) if url else None

    def _result(self, method: str, url: str) -> dict[str, Any]:
        response = self._request(method, url)
        _expect(response, f"read {url.split('?')[0]}")
        return _envelope(response)

    def _print_state(self) -> str:
        response = self._request("GET", "/printer/objects/query?print_stats")
        if response.status_code == 404:  # Klipper's endpoints appear once it has connected
            raise DriverError("Klipper has not connected to Moonraker: check that Klipper is running")
        _expect(response, "read /printer/objects/query")
        status = _envelope(response).get("status") or {}
        return str((status.get("print_stats") or {}).get("state", "unknown"))

    def _job_command(self, verb: str) -> None:
        with self._lock, self._reachable(verb):
            state = self._print_state()
            if state not in _ALLOWED[verb]:
                raise DriverError(f"cannot {verb} the print: the printer is {state}")
            _expect(self._request("POST", f"/printer/print/{verb}"), f"{verb} the print")


def _envelope(response: httpx.Response) -> dict[str, Any]:
    """The `result` of a success envelope (a dict for every endpoint read here, or "ok")."""
    try:
        data = response.json()
    except json.JSONDecodeError as exc:
        raise DriverError(f"Moonraker sent invalid JSON for {response.request.url.path}") from exc
    result = data.get("result") if isinstance(data, dict) else None
    if result == "ok":
        return {}
    if not isinstance(result, dict):
        raise DriverError(f"Moonraker sent no result envelope for {response.request.url.path}")
    return result


def _upload_result(response: httpx.Response) -> dict[str, Any]:
    """An upload's answer: Moonraker sends it bare (`{"item", "print_started", ...}`), not in the
    `result` envelope every other endpoint uses; take either."""
    try:
        data = response.json()
    except json.JSONDecodeError as exc:
        raise DriverError("Moonraker sent invalid JSON for /server/files/upload") from exc
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]
    if not isinstance(data, dict) or "item" not in data:
        raise DriverError("Moonraker sent an unexpected answer for /server/files/upload")
    return data


def _detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except (json.JSONDecodeError, AttributeError):
        return response.text.strip()[:200]
    return str(error.get("message") or "") if isinstance(error, dict) else str(error)


def _expect(response: httpx.Response, what: str) -> None:
    if response.status_code == 503:
        raise DriverError(f"cannot {what}: Klipper is not ready ({_detail(response)})")
    if response.status_code not in (200, 201):
        detail = _detail(response)
        raise DriverError(
            f"Moonraker refused to {what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
        )


def _upload_error(name: str, response: httpx.Response) -> str:
    code, detail = response.status_code, _detail(response)
    if code == 403 and "loaded" in detail:
        return f"cannot replace {name!r}: the printer is printing that file"
    return f"upload of {name!r} failed: HTTP {code}" + (f" ({detail})" if detail else "")


def _to_status(status: dict[str, Any]) -> PrinterStatus:
    stats = status.get("print_stats") or {}
    raw = str(stats.get("state", ""))
    state = _STATES.get(raw, PrinterState.BUSY)
    message = None
    if raw == "cancelled":
        message = "cancelled"
    elif raw == "error":
        message = f"print error: {stats.get('message') or 'see the Klipper console'}"
    elif raw == "paused" and stats.get("message"):  # e.g. a runout sensor's PAUSE says why
        message = f"paused: {stats['message']}"
    elif raw not in _STATES:
        message = f"unknown print_stats state {raw!r}"
    progress = _progress(status)
    return PrinterStatus(
        state=state,
        progress=100.0 if raw == "complete" else progress,
        remaining_s=_remaining(stats, progress, raw),
        layer=_int((stats.get("info") or {}).get("current_layer")),
        file=stats.get("filename") or None,
        temperatures=_temperatures(status),
        message=message,
    )


def _progress(status: dict[str, Any]) -> float | None:
    """display_status follows M73 like the printer's screen, else the file position."""
    for name in ("display_status", "virtual_sdcard"):
        value = (status.get(name) or {}).get("progress")
        if isinstance(value, int | float):
            return round(100.0 * float(value), 2)
    return None


def _remaining(stats: dict[str, Any], progress: float | None, raw: str) -> int | None:
    """Linear from print_duration (excludes pauses), as Mainsail's file-based estimate does."""
    duration = stats.get("print_duration")
    if raw == "complete":
        return 0
    if raw not in ("printing", "paused") or not progress or not isinstance(duration, int | float):
        return None
    return max(0, round(duration * (100.0 - progress) / progress))


def _temperatures(status: dict[str, Any]) -> dict[str, float]:
    pairs = {"nozzle": "extruder", "bed": "heater_bed"}
    out: dict[str, float] = {}
    for key, name in pairs.items():
        value = (status.get(name) or {}).get("temperature")
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
