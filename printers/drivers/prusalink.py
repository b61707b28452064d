"""PrusaLink v1 driver: Buddy firmware (MINI, MK4/MK4S, XL, Core One) and Prusa-Link on a Raspberry
Pi (MK3/MK3S).

Auth is HTTP Digest (Buddy: user `maker`, legacy RFC 2069; the Pi: the user set in its wizard, RFC
2617 MD5-sess) or `X-Api-Key`. Buddy's nonces live five seconds, so every request goes through one
lock: interleaved requests would race for them. Files go to the printer's first writable storage as
`GET /api/v1/storage` lists them: `usb` on Buddy, `local` on a Pi (whose `sdcard` is read-only).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from farm.core.states import PrinterState
from printers.drivers.base import DriverError, PrinterConfig, PrinterStatus, ProgressCallback, url_path
from printers.drivers.http import HttpDriver

log = logging.getLogger(__name__)

DEFAULT_USERNAME = "maker"
# Where uploads go when the printer cannot list its storages (`/api/v1/storage` missing: 404).
FALLBACK_STORAGE = "usb"
CHUNK_BYTES = 64 * 1024
# Buddy writes uploads to a USB stick; the TCP window can stall for a long time mid-transfer.
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
        self._storage: Storage | None = None  # read once per connection, see `_writable_storage`

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
                if job is not None and self._storage is None:
                    self._known_storage()  # to read the job's path relative to it
        except httpx.TransportError as exc:
            self._storage = None  # the printer may come back with another USB stick, or none
            return PrinterStatus(PrinterState.OFFLINE, message=f"cannot reach {self.base_url}: {exc!r}")
        except _Unavailable as exc:
            return PrinterStatus(PrinterState.BUSY, message=str(exc))
        roots = {"usb", "local"} | ({self._storage.name} if self._storage else set())
        return self._unasked_pause(_to_status(status, job, roots))

    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror}") from exc
        self.paused_by_farm = self.paused_by_farm and not start
        timeout = self._upload_timeout()
        body = _FileBody(path, size, progress)
        with self._lock, self._reachable(f"upload {remote_name!r}"):
            self._prime_auth()
            storage = self._writable_storage()
            url = _file_url(storage.path, remote_name)
            headers = {
                "Content-Length": str(size),
                "Content-Type": _content_type(storage, remote_name),
                "Overwrite": "?1",
                "Print-After-Upload": "?1" if start else "?0",
            }
            response = self._request("PUT", url, content=body, headers=headers, timeout=timeout)
        if response.status_code != 201:
            if response.status_code == 404:  # the storage went away: list them again next time
                self._storage = None
            raise DriverError(_upload_error(remote_name, response, storage))

    def start(self, remote_name: str) -> None:
        self.paused_by_farm = False
        with self._lock, self._reachable(f"start {remote_name!r}"):
            storage = self._writable_storage()
            response = self._request("POST", _file_url(storage.path, remote_name))
        if response.status_code == 404:
            raise DriverError(f"the printer has no file {remote_name!r} in its storage {storage.path!r}")
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

    def snapshot(self) -> tuple[bytes, str] | None:
        """The default camera's last still (Buddy firmware with a camera; 204 without one)."""
        return self._image("/api/v1/cameras/snap")

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._request("GET", url)
        if response.status_code == 503:  # Prusa-Link while it starts or looks for the printer's serial port
            raise _Unavailable(f"PrusaLink is not ready: {_detail(response) or 'HTTP 503'}")
        _expect(response, 200, f"read {url}")
        return _json(response)

    def _get_job(self) -> dict[str, Any] | None:
        response = self._request("GET", "/api/v1/job")
        if response.status_code == 204:  # the job ended between the two reads
            return None
        _expect(response, 200, "read /api/v1/job")
        return _json(response)

    def _writable_storage(self) -> Storage:
        """The first storage `/api/v1/storage` lists as available and not read-only, cached until the
        printer drops off the network or refuses a file URL with 404."""
        if self._storage is not None:
            return self._storage
        response = self._request("GET", "/api/v1/storage")
        if response.status_code == 404:
            log.warning(
                "%s lists no storages (GET /api/v1/storage: 404); uploading to %r",
                self.base_url,
                FALLBACK_STORAGE,
            )
            self._storage = Storage(FALLBACK_STORAGE, FALLBACK_STORAGE)
            return self._storage
        _expect(response, 200, "list its storages (/api/v1/storage)")
        listed = _json(response).get("storage_list")
        entries = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        for entry in entries:
            path = str(entry.get("path") or "").strip("/")
            if path and entry.get("available", True) and not entry.get("read_only", False):
                self._storage = Storage(path, str(entry.get("name") or path))
                return self._storage
        seen = ", ".join(
            f"{str(e.get('path', '?')).strip('/')} ({'read-only' if e.get('read_only') else 'unavailable'})"
            for e in entries
        )
        raise DriverError(
            f"the printer has no writable storage for prints: {seen or 'it lists none'} "
            "(insert a USB drive, or check the printer's storage settings)"
        )

    def _known_storage(self) -> None:
        try:
            self._writable_storage()
        except DriverError as exc:  # a status read still answers; uploads will say what is wrong
            log.debug("%s: %s", self.base_url, exc)

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


class _Unavailable(DriverError):
    """503: the API is up but not the printer behind it (Prusa-Link initialising)."""


def _content_type(storage: Storage, remote_name: str) -> str:
    """Prusa-Link (0.8.1, prusa/link/web/files.py) takes `application/octet-stream` bodies to a
    libmagic check of the destination path before the upload is moved there: every new file is a
    500 FileNotFoundError. `text/x.gcode` skips that check; Buddy firmware reads any type."""
    if storage.path == "local" and not remote_name.lower().endswith((".bgcode", ".bgc")):
        return "text/x.gcode"
    return "application/octet-stream"


class Storage:
    """A storage as `/api/v1/storage` names it: `path` in file URLs, `name` in the paths jobs report."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path  # "usb" (Buddy), "local" (Prusa-Link on a Pi)
        self.name = name  # "usb", "PrusaLink gcodes"


def _file_url(storage: str, remote_name: str) -> str:
    return f"/api/v1/files/{storage}/" + url_path(remote_name)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except json.JSONDecodeError as exc:
        raise DriverError(f"the printer sent invalid JSON for {response.request.url.path}") from exc
    if not isinstance(data, dict):
        raise DriverError(f"the printer sent unexpected JSON for {response.request.url.path}")
    return data


def _detail(response: httpx.Response) -> str:
    """The printer's explanation. Buddy: `<code>: <reason>\\n\\n<detail>` in text, `text` in JSON;
    Prusa-Link on a Pi: `<title>\\n<text>\\n<details>\\n\\nSee: <url>`, `title`/`message` in JSON."""
    if "json" in response.headers.get("content-type", ""):
        try:
            data = response.json()
            return str(data.get("text") or data.get("message") or "")
        except (json.JSONDecodeError, AttributeError):
            return ""
    if "html" in response.headers.get("content-type", ""):
        return ""
    head, _, detail = response.text.partition("\n\n")
    if re.match(r"\d{3}: ", head):  # Buddy
        return (detail or head).strip()
    return ": ".join(line.strip() for line in head.splitlines() if line.strip())


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        detail = _detail(response)
        raise DriverError(
            f"printer refused to {what}: HTTP {response.status_code}" + (f" ({detail})" if detail else "")
        )


def _upload_error(name: str, response: httpx.Response, storage: Storage) -> str:
    code, detail = response.status_code, _detail(response)
    if code == 404:
        why = f" ({detail})" if detail else ""
        return f"the printer has no storage {storage.path!r} for {name!r}{why}"
    if code == 409 and "read only" in detail.lower():
        return f"the printer's storage {storage.path!r} is read-only: cannot store {name!r}"
    if code == 409 and "exists" in detail.lower():
        return f"cannot replace {name!r}: the printer refused to overwrite it ({detail})"
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


def _to_status(status: dict[str, Any], job: dict[str, Any] | None, roots: set[str]) -> PrinterStatus:
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
        file=_job_file(job, roots),
        temperatures=_temperatures(printer),
        message=message,
    )


def _job_file(job: dict[str, Any] | None, roots: set[str]) -> str | None:
    """The long name, relative to the storage like the uploaded `remote_name` (on Buddy `name` is the
    8.3 alias). Buddy's `path` is the folder ("/usb/dir"); Prusa-Link's is the file's own path
    ("/PrusaLink gcodes/dir/name.gcode")."""
    info = (job or {}).get("file") or {}
    name = info.get("display_name") or info.get("name")
    if not name:
        return None
    parts = [p for p in str(info.get("display_path") or info.get("path") or "").split("/") if p]
    if parts and parts[-1] == name:
        parts.pop()
    if parts and parts[0] in roots:
        parts.pop(0)
    return "/".join([*parts, str(name)])


def _temperatures(printer: dict[str, Any]) -> dict[str, float]:
    pairs = {"nozzle": "temp_nozzle", "bed": "temp_bed"}
    return {key: float(printer[field]) for key, field in pairs.items() if printer.get(field) is not None}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
