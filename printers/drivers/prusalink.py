"""PrusaLink v1 driver for Prusa printers on Buddy firmware (MINI, MK4/MK4S, XL, Core One).

Auth is HTTP Digest (user `maker`, legacy RFC 2069) or `X-Api-Key`. The printer's nonces live
five seconds, so every request goes through one lock: interleaved requests would race for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from printers.drivers.base import (
    DriverError,
    PrinterConfig,
    PrinterState,
    PrinterStatus,
    ProgressCallback,
    url_path,
)
from printers.drivers.http import HttpDriver

DEFAULT_USERNAME = "maker"
CHUNK_BYTES = 64 * 1024
# Buddy writes uploads to a USB stick; the TCP window can stall for a long time mid-transfer.
UPLOAD_IO_TIMEOUT_S = 120.0
PASSWORD_HINT = (
    "the PrusaLink password is shown on the printer in Settings > Network > PrusaLink (user name 'maker')"
)

_STATES: dict[str, PrinterState] = {
    "IDLE": PrinterState.IDLE,
    "READY": PrinterState.IDLE,
    "BUSY": PrinterState.BUSY,
    "PRINTING": PrinterState.PRINTING,
    "PAUSED": PrinterState.PAUSED,
    "FINISHED": PrinterState.FINISHED,
    "STOPPED": PrinterState.FAILED,
    "ERROR": PrinterState.FAILED,
    "ATTENTION": PrinterState.ATTENTION,
}
_MESSAGES: dict[str, str] = {
    "STOPPED": "stopped",
    "ERROR": "the printer reports an error: check the printer's screen",
    "ATTENTION": (
        "the printer is waiting for someone: check the printer's screen "
        "(e.g. a G-code compatibility warning or a filament prompt)"
    ),
}


class _FileBody:
    """An upload body that can be sent more than once.

    httpx re-sends the request after a digest challenge (a stale nonce), which needs a fresh
    iteration; a generator would be exhausted, so `__iter__` reopens the file every time.
    """

    def __init__(self, path: Path, size: int, progress: ProgressCallback | None) -> None:
        self._path = path
        self._size = size
        self._progress = progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        with self._path.open("rb") as f:
            while sent < self._size:
                chunk = f.read(min(CHUNK_BYTES, self._size - sent))
                if not chunk:
                    raise DriverError(f"{self._path} got shorter while it was being uploaded")
                sent += len(chunk)
                yield chunk
                if self._progress is not None:
                    self._progress(sent, self._size)


class PrusaLinkDriver(HttpDriver):
    protocol = "prusalink"

    def __init__(self, config: PrinterConfig) -> None:
        super().__init__(config, **_auth(config))

    def _refused(self, response: httpx.Response) -> str | None:
        if response.status_code == 401:
            return f"the printer at {self.base_url} rejected the password: {PASSWORD_HINT}"
        return None

    # -- Driver interface

    def status(self) -> PrinterStatus:
        try:
            with self._lock:
                status = self._get_json("/api/v1/status")
                job = self._get_job() if status.get("job") else None
        except httpx.TransportError as exc:
            return PrinterStatus(PrinterState.OFFLINE, message=f"cannot reach {self.base_url}: {exc!r}")
        return self._unasked_pause(_to_status(status, job))

    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror}") from exc
        self.paused_by_farm = self.paused_by_farm and not start
        headers = {
            "Content-Length": str(size),
            "Content-Type": "application/octet-stream",
            "Overwrite": "?1",
            "Print-After-Upload": "?1" if start else "?0",
        }
        timeout = httpx.Timeout(UPLOAD_IO_TIMEOUT_S, connect=self.config.timeout_s)
        body = _FileBody(path, size, progress)
        url = _file_url(remote_name)
        with self._lock, self._reachable(f"upload {remote_name!r}"):
            self._prime_auth()
            response = self._request("PUT", url, content=body, headers=headers, timeout=timeout)
        if response.status_code != 201:
            raise DriverError(_upload_error(remote_name, response))

    def start(self, remote_name: str) -> None:
        self.paused_by_farm = False
        response = self._send("POST", _file_url(remote_name))
        if response.status_code == 404:
            raise DriverError(f"the printer has no file {remote_name!r} on its USB drive")
        if response.status_code == 409:
            raise DriverError(
                f"the printer cannot start {remote_name!r} now: it is printing, paused, busy "
                "or waiting for someone at its screen"
            )
        _expect(response, 204, f"start {remote_name!r}")

    def pause(self) -> None:
        self._job_command("PUT", "pause", "pause")
        self.paused_by_farm = True

    def resume(self) -> None:
        self._job_command("PUT", "resume", "resume")
        self.paused_by_farm = False

    def cancel(self) -> None:
        self._job_command("DELETE", None, "cancel")
        self.paused_by_farm = False

    # -- HTTP

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._request("GET", url)
        _expect(response, 200, f"read {url}")
        return _json(response)

    def _get_job(self) -> dict[str, Any] | None:
        response = self._request("GET", "/api/v1/job")
        if response.status_code == 204:  # the job ended between the two reads
            return None
        _expect(response, 200, "read /api/v1/job")
        return _json(response)

    def _prime_auth(self) -> None:
        """A cheap authenticated GET, so a large PUT goes out with a fresh digest, not to a 401."""
        _expect(self._send("GET", "/api/version"), 200, "read /api/version")

    def _job_command(self, method: str, command: str | None, verb: str) -> None:
        with self._lock:
            with self._reachable(verb):
                status = self._get_json("/api/v1/status")
            job_id = (status.get("job") or {}).get("id")
            state = (status.get("printer") or {}).get("state", "UNKNOWN")
            if job_id is None:
                raise DriverError(f"cannot {verb}: the printer has no print job (state {state})")
            url = f"/api/v1/job/{job_id}" + (f"/{command}" if command else "")
            response = self._send(method, url)
        if response.status_code == 409:
            raise DriverError(f"cannot {verb} the print: the printer is {state.lower()}")
        if response.status_code == 404:
            raise DriverError(f"cannot {verb}: job {job_id} is no longer the printer's current job")
        _expect(response, 204, f"{verb} job {job_id}")


def _auth(config: PrinterConfig) -> dict[str, Any]:
    if config.password:
        return {"auth": httpx.DigestAuth(config.username or DEFAULT_USERNAME, config.password)}
    if config.api_key:
        return {"headers": {"X-Api-Key": config.api_key}}
    raise DriverError(f"printer {config.name!r} has no PrusaLink password configured: {PASSWORD_HINT}")


def _file_url(remote_name: str) -> str:
    return "/api/v1/files/usb/" + url_path(remote_name)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except json.JSONDecodeError as exc:
        raise DriverError(f"the printer sent invalid JSON for {response.request.url.path}") from exc
    if not isinstance(data, dict):
        raise DriverError(f"the printer sent unexpected JSON for {response.request.url.path}")
    return data


def _detail(response: httpx.Response) -> str:
    """The firmware's explanation: `<code>: <reason>\\n\\n<detail>` in text, or `text` in JSON."""
    if "json" in response.headers.get("content-type", ""):
        try:
            return str(response.json().get("text") or "")
        except (json.JSONDecodeError, AttributeError):
            return ""
    head, _, detail = response.text.partition("\n\n")
    return (detail or head).strip()


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        detail = _detail(response)
        raise DriverError(
            f"printer refused to {what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
        )


def _upload_error(name: str, response: httpx.Response) -> str:
    code, detail = response.status_code, _detail(response)
    if code == 409 and "print right now" in detail:
        return f"uploaded {name!r}, but the printer could not start it: it is not ready (busy or printing)"
    if code == 409 and "busy" in detail:
        return f"cannot replace {name!r}: the printer is printing that file"
    if code == 409 and "transfer" in detail:
        return "the printer is already receiving another file; try again when that upload finishes"
    if code == 415:
        return f"the printer refused {name!r}: only .gcode/.bgcode files can be printed"
    if code in (422, 431):
        return f"the printer refused the file name {name!r}: {detail or 'invalid name'}"
    if code == 507:
        return f"cannot store {name!r}: {detail or 'USB drive missing or full'}"
    if code == 403:
        return f"the printer does not allow writing {name!r} (outside its USB storage)"
    return f"upload of {name!r} failed: HTTP {code}" + (f" ({detail})" if detail else "")


def _to_status(status: dict[str, Any], job: dict[str, Any] | None) -> PrinterStatus:
    printer = status.get("printer") or {}
    raw_state = str(printer.get("state", "")).upper()
    state = _STATES.get(raw_state, PrinterState.BUSY)
    message = _MESSAGES.get(raw_state)
    if raw_state not in _STATES:
        message = f"unknown PrusaLink state {raw_state!r}"
    problem = printer.get("status_printer") or {}
    if isinstance(problem, dict) and problem.get("ok") is False and problem.get("message"):
        message = (
            f"the printer reports an error: {problem['message']} (check the printer's screen)"
            if raw_state == "ERROR"
            else str(problem["message"])
        )
    job_summary = status.get("job") or {}
    return PrinterStatus(
        state=state,
        progress=_float(job_summary.get("progress")),
        remaining_s=_int(job_summary.get("time_remaining")),
        file=_job_file(job),
        temperatures=_temperatures(printer),
        message=message,
    )


def _job_file(job: dict[str, Any] | None) -> str | None:
    """The long name, relative to /usb/ like the uploaded `remote_name` (`name` is the 8.3 alias)."""
    info = (job or {}).get("file") or {}
    name = info.get("display_name") or info.get("name")
    if not name:
        return None
    folder = str(info.get("display_path") or info.get("path") or "").strip("/").removeprefix("usb")
    return f"{folder.strip('/')}/{name}" if folder.strip("/") else str(name)


def _temperatures(printer: dict[str, Any]) -> dict[str, float]:
    pairs = {"nozzle": "temp_nozzle", "bed": "temp_bed"}
    return {key: float(printer[field]) for key, field in pairs.items() if printer.get(field) is not None}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
