"""OctoPrint driver: any printer behind an OctoPrint server (OctoPi, a bare `octoprint serve`).

OctoPrint has no FINISHED or STOPPED state: after a job it is "Operational" again, with
`completion` 100 after a finished print and null after a cancelled one. So the driver remembers
which file it saw printing, to tell a cancelled or lost job (FAILED) from an idle printer.
"""

from __future__ import annotations

import json
import time
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

DEFAULT_PORT = 80  # OctoPi serves OctoPrint on 80 through haproxy; a bare install uses 5000
KEY_HINT = "check the API key (OctoPrint Settings > Application Keys, or your user's API key)"

_STATES: dict[str, PrinterState] = {
    "Printing": PrinterState.PRINTING,
    "Printing from SD": PrinterState.PRINTING,
    "Starting": PrinterState.PRINTING,
    "Starting print from SD": PrinterState.PRINTING,
    "Finishing": PrinterState.PRINTING,
    "Resuming": PrinterState.PRINTING,
    "Pausing": PrinterState.PAUSED,  # the pause is accepted; OctoPrint waits for the buffer
    "Paused": PrinterState.PAUSED,
    "Cancelling": PrinterState.BUSY,
    "Error": PrinterState.FAILED,
    "Offline": PrinterState.OFFLINE,
    "Closed": PrinterState.OFFLINE,
    "Offline after error": PrinterState.OFFLINE,
    "Closed with error": PrinterState.OFFLINE,
}
_ACTIVE = {PrinterState.PRINTING, PrinterState.PAUSED, PrinterState.BUSY}
_DISCONNECTED = {"Offline", "Closed"}  # never connected, or disconnected on purpose: safe to connect


class OctoPrintDriver(HttpDriver):
    protocol = "octoprint"
    default_port = DEFAULT_PORT

    def __init__(self, config: PrinterConfig) -> None:
        if not config.api_key:
            raise DriverError(f"printer {config.name!r} has no OctoPrint API key configured: {KEY_HINT}")
        super().__init__(config, headers={"X-Api-Key": config.api_key})
        # The file we last saw printing. Not set on start: right after a start OctoPrint can still
        # read "Operational" with no progress, which must not look like a cancelled job.
        self._job_file: str | None = None

    # -- Driver interface

    def status(self) -> PrinterStatus:
        try:
            with self._lock:
                job = self._get_json("/api/job")
                state_text = str(job.get("state") or "")
                if state_text in _DISCONNECTED:
                    return self._connect(state_text)
                printer = self._get_printer()
        except httpx.TransportError as exc:
            return PrinterStatus(PrinterState.OFFLINE, message=f"cannot reach {self.base_url}: {exc!r}")
        return self._unasked_pause(self._to_status(state_text, job, printer))

    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        folder, _ = printer_path(remote_name)
        self.paused_by_farm = self.paused_by_farm and not start
        data = {"print": "true" if start else "false"}
        if folder:
            data["path"] = folder
        response = self._post_file("/api/files/local", path, remote_name, data, progress)
        if response.status_code != 201:
            raise DriverError(_upload_error(remote_name, response))
        if start and not _json(response).get("effectivePrint"):
            raise DriverError(
                f"uploaded {remote_name!r}, but OctoPrint did not start it: the printer is not ready "
                "(printing, paused or not connected)"
            )

    def start(self, remote_name: str) -> None:
        url = "/api/files/local/" + url_path(remote_name)
        self.paused_by_farm = False
        response = self._send("POST", url, json={"command": "select", "print": True})
        if response.status_code == 404:
            raise DriverError(f"OctoPrint has no file {remote_name!r} in its local storage")
        if response.status_code == 409:
            raise DriverError(f"the printer cannot start {remote_name!r} now: {_detail(response)}")
        _expect(response, 204, f"start {remote_name!r}")

    def pause(self) -> None:
        self._job_command({"command": "pause", "action": "pause"}, "pause")
        self.paused_by_farm = True

    def resume(self) -> None:
        with self._lock:
            # OctoPrint ignores a resume until the pause has landed
            if self._wait_while("Pausing") == "Printing":  # OctoPrint answers 204 and does nothing
                raise DriverError("cannot resume the print: the printer is printing, not paused")
            self._job_command({"command": "pause", "action": "resume"}, "resume")
            self.paused_by_farm = False

    def cancel(self) -> None:
        with self._lock:
            self.status()  # records the job's file, so the cancelled job reads FAILED afterwards
            self._job_command({"command": "cancel"}, "cancel")
            self.paused_by_farm = False

    # -- state

    def _connect(self, state_text: str) -> PrinterStatus:
        """OctoPrint is up but not talking to the printer: ask it to open the serial port."""
        body: dict[str, Any] = {"command": "connect", "autoconnect": False}
        if self.config.serial:
            body["port"] = self.config.serial  # else OctoPrint's preferred port, or auto-detection
        response = self._request("POST", "/api/connection", json=body)
        port = self.config.serial or "auto"
        if response.status_code != 204:
            message = f"OctoPrint could not connect to the printer on port {port}: {_detail(response)}"
        else:
            message = f"OctoPrint was {state_text.lower()}: asked it to connect to the printer (port {port})"
        return PrinterStatus(PrinterState.OFFLINE, message=message)

    def _to_status(self, state_text: str, job: dict[str, Any], printer: dict[str, Any]) -> PrinterStatus:
        progress = job.get("progress") or {}
        completion = _float(progress.get("completion"))
        file = (job.get("job") or {}).get("file") or {}
        path = file.get("path") or file.get("name")
        state = _STATES.get(state_text)
        message = None
        if state_text == "Operational":
            state, message = self._finished_or_idle(path, completion)
        elif state is None:
            # "Opening serial connection", "Detecting baudrate", "Transferring file to SD", ...
            state, message = PrinterState.BUSY, f"OctoPrint reports {state_text!r}"
        elif state in (PrinterState.FAILED, PrinterState.OFFLINE):
            # /api/printer answers 409 in Error states; /api/job's `error` (1.5+) carries the reason.
            error = job.get("error") or (printer.get("state") or {}).get("error")
            error = error or "see the Terminal tab in OctoPrint"
            message = f"OctoPrint reports {state_text!r}: {error}"
        if state in _ACTIVE and state_text != "Cancelling" and path:
            self._job_file = path
        return PrinterStatus(
            state=state,
            progress=completion,
            remaining_s=_int(progress.get("printTimeLeft")),
            file=path,
            temperatures=_temperatures(printer),
            message=message,
        )

    def _finished_or_idle(
        self, path: str | None, completion: float | None
    ) -> tuple[PrinterState, str | None]:
        if completion is not None and completion >= 100.0:
            return PrinterState.FINISHED, None
        if path and path == self._job_file:  # it was printing and came back without finishing
            return PrinterState.FAILED, "cancelled"
        return PrinterState.IDLE, None

    def _wait_while(self, state_text: str) -> str | None:
        """Poll /api/job for at most the request timeout until OctoPrint leaves `state_text`; the
        state it is in then."""
        deadline = time.monotonic() + self.config.timeout_s
        with self._reachable("read /api/job"):
            while (state := self._get_json("/api/job").get("state")) == state_text:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        return state

    def _job_command(self, body: dict[str, Any], verb: str) -> None:
        response = self._send("POST", "/api/job", json=body)
        if response.status_code == 409:
            raise DriverError(f"cannot {verb} the print: {_detail(response)}")
        _expect(response, 204, f"{verb} the print")

    # -- HTTP

    def snapshot(self) -> tuple[bytes, str] | None:
        """A still from the webcam OctoPrint is set up with (its snapshot URL, usually mjpg-streamer's
        `/webcam/?action=snapshot`); None when it has none."""
        with self._reachable("read the webcam settings"):
            settings = self._get_json("/api/settings")
        webcam = settings.get("webcam") or {}
        url = webcam.get("snapshotUrl") or (settings.get("plugins") or {}).get("classicwebcam", {}).get(
            "snapshot"
        )
        if not url or webcam.get("webcamEnabled") is False:
            return None
        return self._image(self._camera_url(str(url)))

    def _refused(self, response: httpx.Response) -> str | None:
        if response.status_code in (401, 403):
            return f"OctoPrint at {self.base_url} refused the API key: {KEY_HINT}"
        return None

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._request("GET", url)
        _expect(response, 200, f"read {url}")
        return _json(response)

    def _get_printer(self) -> dict[str, Any]:
        response = self._request("GET", "/api/printer", params={"exclude": "sd"})
        if response.status_code == 409:  # the connection dropped between the two reads
            return {}
        _expect(response, 200, "read /api/printer")
        return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except json.JSONDecodeError as exc:
        raise DriverError(f"OctoPrint sent invalid JSON for {response.request.url.path}") from exc
    if not isinstance(data, dict):
        raise DriverError(f"OctoPrint sent unexpected JSON for {response.request.url.path}")
    return data


def _detail(response: httpx.Response) -> str:
    """OctoPrint explains errors as `{"error": "..."}`."""
    try:
        return str(response.json().get("error") or "")
    except (json.JSONDecodeError, AttributeError):
        return response.text.strip()[:200]


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        detail = _detail(response)
        raise DriverError(
            f"OctoPrint refused to {what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
        )


def _upload_error(name: str, response: httpx.Response) -> str:
    code, detail = response.status_code, _detail(response)
    if code == 409:
        return f"cannot replace {name!r}: {detail or 'the printer is busy with it'}"
    if code == 415:
        return f"OctoPrint refused {name!r}: only G-code files (.gcode, .gco, .g) can be printed"
    return f"upload of {name!r} failed: HTTP {code}" + (f" ({detail})" if detail else "")


def _temperatures(printer: dict[str, Any]) -> dict[str, float]:
    temps = printer.get("temperature") or {}
    pairs = {"nozzle": "tool0", "bed": "bed"}
    return {
        key: float(temps[tool]["actual"])
        for key, tool in pairs.items()
        if isinstance(temps.get(tool), dict) and isinstance(temps[tool].get("actual"), int | float)
    }


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
