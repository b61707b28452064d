"""An OctoPrint server with one printer behind it, emulated over a real socket.

Standard library only, like the PrusaLink emulator. It speaks the endpoints the OctoPrint driver
uses, with the JSON shapes and status codes OctoPrint 1.11 sends (checked against a real server
with its virtual printer): `X-Api-Key` or 403, a serial connection that starts Closed unless
`connected`, `/api/printer` 409 while not operational, uploads as streamed multipart with
`print=true` (`effectivePrint` false when the printer is busy, 409 when overwriting the file
being printed), and job states that fall back to "Operational" after a job (completion 100.0
after a finished one, null after a cancel).

Printing runs in accelerated time: the slicer's estimate divided by `speed`, at most
`max_print_s`. What it shares with the Moonraker emulator is in http_base.py.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

from printers.emulators.camera import camera_png
from printers.emulators.common import (
    LOCAL_PRINT_NAME,
    EmulatedPrinter,
    EmulatorServer,
    EmulatorThread,
    FaultSwitches,
    record_print,
    storage_folder,
)
from printers.emulators.http_base import (
    HttpError,
    Job,
    JsonHandler,
    multipart_boundary,
    parse_multipart,
    safe_relpath,
)

log = logging.getLogger(__name__)

GCODE_EXTENSIONS = (".gcode", ".gco", ".g")
PORTS = ["/dev/ttyACM0", "VIRTUAL"]
CONNECT_DELAY_S = 0.3  # "Opening serial connection" before "Operational"
SETTLE_S = 0.2  # "Pausing" before "Paused", "Cancelling" before "Operational"
AMBIENT_C = 21.3
NOT_ACTIVE = "Printer is neither printing nor paused, '{}' command cannot be performed"
FORBIDDEN = (
    "You don't have the permission to access the requested resource. "
    "It is either read-protected or not readable by the server."
)


# --------------------------------------------------------------------------- printer state

_ACTIVE = ("Printing", "Pausing", "Paused", "Cancelling")
_SETTLES_TO = {"Pausing": "Paused", "Cancelling": "cancelled"}


class Printer(EmulatedPrinter[Job]):
    """OctoPrint's view of its printer: connection, current job, local storage. Thread-safe."""

    RUNNING, DONE = "Printing", "done"

    def __init__(self, *, root: Path, speed: float, max_print_s: float | None, connected: bool) -> None:
        super().__init__(root=root, speed=speed, max_print_s=max_print_s)
        self.received: list[Path] = []
        self.port: str | None = "VIRTUAL" if connected else None
        self._connected_at: float | None = 0.0 if connected else None
        self._error: str | None = None

    def _refresh(self, now: float) -> Job | None:
        job = super()._refresh(now)
        if job and job.state in _SETTLES_TO and now >= job.settle_at:
            job.state = _SETTLES_TO[job.state]
        return job

    def state_text(self) -> str:
        with self._lock:
            now = time.monotonic()
            if self._error is not None:
                return "Error"
            if self._connected_at is None:
                return "Offline"
            if now < self._connected_at:
                return "Opening serial connection"
            job = self._refresh(now)
            return job.state if job and job.state in _ACTIVE else "Operational"

    def operational(self) -> bool:
        return self.state_text() in ("Operational", *_ACTIVE)

    # -- connection

    def connect(self, port: str | None) -> None:
        with self._lock:
            if port is not None and port not in PORTS and port != "AUTO":
                raise HttpError(400, "port is invalid")
            self.port = port if port not in (None, "AUTO") else PORTS[0]
            self._error = None
            self._connected_at = time.monotonic() + CONNECT_DELAY_S

    def disconnect(self) -> None:
        with self._lock:
            self._connected_at = None
            self._job = None

    def firmware_pause(self) -> None:
        """The firmware pauses by itself (`//action:paused` on a filament runout or an M600)."""
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job is None or job.state != "Printing":
                raise RuntimeError("need_attention needs a running print")
            job.halt(now)
            job.state = "Paused"

    def firmware_resume(self) -> None:
        with self._lock:
            job = self._refresh(time.monotonic())
            if job is not None and job.state == "Paused":
                job.running_since = time.monotonic()
                job.state = "Printing"

    def start_local(self, name: str, seconds: float) -> None:
        """A print someone started from OctoPrint's own UI."""
        with self._lock:
            if self.state_text() != "Operational":
                raise RuntimeError(f"OctoPrint is {self.state_text()}, not ready for a local print")
            self._job = Job.started_at_printer(
                self.root, name, seconds, "Printing", "started from OctoPrint's UI"
            )

    def fail(self, message: str) -> None:
        """The firmware reports an error (e.g. thermal runaway): the job dies, the state is Error."""
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job and job.state in _ACTIVE:
                job.halt(now)
                job.state = "cancelled"
            self._error = message

    # -- jobs

    def is_printing_file(self, rel: str) -> bool:
        with self._lock:
            job = self._refresh(time.monotonic())
            return job is not None and job.state in _ACTIVE and job.path == rel

    def start_print(self, rel: str) -> None:
        local = self.root / rel
        with self._lock:
            if not rel or not local.is_file():
                raise HttpError(404, "The requested URL was not found on the server.")
            if self.state_text() != "Operational":
                raise HttpError(409, "Printer is not operational or already printing")
            self._job = Job.from_gcode(
                self.root, rel, "Printing", speed=self.speed, max_print_s=self.max_print_s
            )
            record_print(self.root, rel, self._job.duration_s)

    def job_command(self, command: str, action: str | None) -> None:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            state = self.state_text()
            if command == "start":
                if job is None or state != "Operational":
                    raise HttpError(409, "Printer is not operational or already printing")
                self.start_print(job.path)
                return
            if command not in ("cancel", "pause"):
                raise HttpError(400, f"Unknown command {command!r}")
            if job is None or state not in _ACTIVE:
                raise HttpError(409, NOT_ACTIVE.format(command))
            if command == "cancel" and state != "Cancelling":
                job.settle("Cancelling", now, SETTLE_S)
            elif command == "pause":
                action = action or ("resume" if state == "Paused" else "pause")  # no action: toggle
                if action == "pause" and state == "Printing":
                    job.settle("Pausing", now, SETTLE_S)
                elif action == "resume" and state == "Paused":  # ignored while still Pausing
                    job.running_since = now
                    job.state = "Printing"
                elif action not in ("pause", "resume", "toggle"):
                    raise HttpError(400, f"Unknown action {action!r}")

    # -- views

    def job_json(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            state = self.state_text()
            file: dict[str, Any] = {"date": None, "name": None, "origin": None, "path": None, "size": None}
            progress: dict[str, Any] = dict.fromkeys(
                ("completion", "filepos", "printTime", "printTimeLeft", "printTimeLeftOrigin")
            )
            if job is not None:
                local = self.root / job.path
                file = {
                    "date": int(local.stat().st_mtime) if local.exists() else None,
                    "display": local.name,
                    "name": local.name,
                    "origin": "local",
                    "path": job.path,
                    "size": job.size,
                }
                if job.state != "cancelled":
                    progress = self._progress(job, now)
            estimate = job.duration_s if job and job.has_estimate else None
            return {
                "job": {
                    "averagePrintTime": None,
                    "estimatedPrintTime": estimate,
                    "filament": {"length": None, "volume": None},
                    "file": file,
                    "lastPrintTime": None,
                    "user": "admin" if job else None,
                },
                "progress": progress,
                "state": state,
                **({"error": self._error} if self._error is not None else {}),  # only while in Error
            }

    @staticmethod
    def _progress(job: Job, now: float) -> dict[str, Any]:
        elapsed = job.elapsed(now)
        fraction = elapsed / job.duration_s
        return {
            "completion": 100.0 * fraction,  # a percentage, whatever the docs' example says
            "filepos": int(job.size * fraction),
            "printTime": int(elapsed),
            "printTimeLeft": max(0, round(job.duration_s - elapsed)),
            "printTimeLeftOrigin": "estimate" if job.has_estimate else "linear",
        }

    def printer_json(self) -> dict[str, Any]:
        with self._lock:
            state = self.state_text()
            if not self.operational():
                raise HttpError(409, "Printer is not operational")
            job = self._refresh(time.monotonic())
            heating = job is not None and job.state in _ACTIVE
            flags = {
                "cancelling": state == "Cancelling",
                "closedOrError": False,
                "error": False,
                "finishing": False,
                "operational": True,
                "paused": state == "Paused",
                "pausing": state == "Pausing",
                "printing": state == "Printing",
                "ready": state == "Operational",
                "resuming": False,
                "sdReady": False,
            }
            return {
                "sd": {"ready": False},
                "state": {"error": "", "flags": flags, "text": state},
                "temperature": {
                    "tool0": _temp(job.nozzle_c if job and heating else 0.0),
                    "bed": _temp(job.bed_c if job and heating else 0.0),
                },
            }

    def connection_json(self) -> dict[str, Any]:
        with self._lock:
            state = self.state_text()
            closed = state == "Offline"
            return {
                "current": {
                    "baudrate": None if closed else 115200,
                    "port": None if closed else self.port,
                    "printerProfile": "_default",
                    "state": "Closed" if closed else state,
                },
                "options": {
                    "baudratePreference": None,
                    "baudrates": [250000, 230400, 115200, 57600, 38400, 19200, 9600],
                    "portPreference": None,
                    "ports": PORTS,
                    "printerProfilePreference": "_default",
                    "printerProfiles": [{"id": "_default", "name": "Default"}],
                },
            }


def _temp(target: float) -> dict[str, float]:
    return {"actual": round(target - 0.3, 1) if target else AMBIENT_C, "offset": 0, "target": target}


# --------------------------------------------------------------------------- HTTP


class _Handler(JsonHandler):
    server_version = "OctoPrint"
    server: EmulatorServer

    @property
    def printer(self) -> Printer:
        return self.server.emulator.printer

    def handle_method(self, method: str) -> None:
        self.begin()
        if (method, self.path_only) == ("GET", "/webcam/") and self.query.get("action") == ["snapshot"]:
            # mjpg-streamer behind OctoPi's haproxy: no API key asked
            self.send_image(camera_png(self.server.emulator.state))
            return
        try:
            self._authorize()
            status, data, headers = self._route(method)
        except HttpError as exc:
            status, data, headers = exc.status, {"error": exc.message}, {}
        self.send_json(status, data, headers)

    def _authorize(self) -> None:
        key = self.headers.get("X-Api-Key") or ""
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        expected = self.server.emulator.api_key.encode()
        if not any(hmac.compare_digest(k.encode(), expected) for k in (key, bearer) if k):
            raise HttpError(403, FORBIDDEN)

    def _route(self, method: str) -> tuple[int, Any, dict[str, str]]:
        path = self.path_only
        route = (method, path)
        if route == ("GET", "/api/version"):
            return 200, {"api": "0.1", "server": "1.11.8", "text": "OctoPrint 1.11.8 (emulated)"}, {}
        if route == ("GET", "/api/settings"):  # only the webcam part, as OctoPi sets it up
            port = self.server.server_address[1]
            snap = f"http://127.0.0.1:{port}/webcam/?action=snapshot"
            webcam = {"webcamEnabled": True, "streamUrl": "/webcam/?action=stream", "snapshotUrl": snap}
            return 200, {"webcam": webcam, "plugins": {"classicwebcam": {"snapshot": snap}}}, {}
        if route == ("GET", "/api/connection"):
            return 200, self.printer.connection_json(), {}
        if route == ("POST", "/api/connection"):
            return self._post_connection()
        if route == ("GET", "/api/printer"):
            return 200, self.printer.printer_json(), {}
        if route == ("GET", "/api/job"):
            return 200, self.printer.job_json(), {}
        if route == ("POST", "/api/job"):
            body = self.json_body()
            self.printer.job_command(str(body.get("command")), body.get("action"))
            return 204, None, {}
        if route == ("POST", "/api/files/local"):
            return self._upload()
        if method == "POST" and path.startswith("/api/files/local/"):
            return self._file_command(safe_relpath(path.removeprefix("/api/files/local/")))
        raise HttpError(404, "The requested URL was not found on the server.")

    def _post_connection(self) -> tuple[int, Any, dict[str, str]]:
        body = self.json_body()
        if body.get("command") == "connect":
            self.printer.connect(body.get("port"))
        elif body.get("command") == "disconnect":
            self.printer.disconnect()
        else:
            raise HttpError(400, "Unknown command")
        return 204, None, {}

    def _file_command(self, rel: str) -> tuple[int, Any, dict[str, str]]:
        body = self.json_body()
        if body.get("command") != "select":
            raise HttpError(400, "Unknown command")
        if not (self.printer.root / rel).is_file():
            raise HttpError(404, "The requested URL was not found on the server.")
        if body.get("print"):
            self.printer.start_print(rel)
        return 204, None, {}

    def _upload(self) -> tuple[int, Any, dict[str, str]]:
        boundary = multipart_boundary(self.headers.get("Content-Type"))
        root = self.printer.root
        tmp = root / f".upload-{threading.get_ident()}.tmp"
        try:
            body = self.take_body()
            try:
                stream = self.server.emulator.cutter.wrap(self.rfile, self.connection)
                fields = parse_multipart(stream, body.remaining, boundary, lambda _: tmp.open("wb"))
            except HttpError:
                self.close_connection = True  # the rest of the body is not worth reading
                raise
            name = fields.get("file")
            if not name or not tmp.exists():
                raise HttpError(400, "No file to upload and no folder to create")
            if not name.lower().endswith(GCODE_EXTENSIONS):
                raise HttpError(415, "Could not upload file, invalid type")
            rel = safe_relpath(f"{fields.get('path', '')}/{name}")
            if self.printer.is_printing_file(rel):
                raise HttpError(409, "Trying to overwrite file that is currently being printed")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(root / rel)
        finally:
            tmp.unlink(missing_ok=True)
        self.server.emulator.received.append(root / rel)
        effective_print = fields.get("print", "false").lower() == "true" and self._try_print(rel)
        return 201, self._upload_json(rel, effective_print), {"Location": self._file_url(rel)}

    def _try_print(self, rel: str) -> bool:
        """OctoPrint stores the file anyway and just reports that it did not start it."""
        try:
            self.printer.start_print(rel)
        except HttpError:
            return False
        return True

    def _file_url(self, rel: str) -> str:
        return f"{self.server.emulator.url}/api/files/local/{rel}"

    def _upload_json(self, rel: str, effective_print: bool) -> dict[str, Any]:
        refs = {
            "resource": self._file_url(rel),
            "download": f"{self.server.emulator.url}/downloads/files/local/{rel}",
        }
        local = {"name": rel.rsplit("/", 1)[-1], "origin": "local", "path": rel, "refs": refs}
        return {
            "done": True,
            "effectivePrint": effective_print,
            "effectiveSelect": effective_print,
            "files": {"local": local},
        }


# --------------------------------------------------------------------------- public API


class OctoPrintEmulator(EmulatorThread, FaultSwitches):
    """An OctoPrint server on a real TCP port. `start()` serves in a daemon thread; `stop()` ends it."""

    name = "octoprint"
    handler = _Handler

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str,
        storage_dir: Path,
        speed: float = 60.0,
        max_print_s: float | None = None,
        connected: bool = True,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        self.printer = Printer(
            root=storage_folder(storage_dir), speed=speed, max_print_s=max_print_s, connected=connected
        )
        self.received: list[Path] = []  # every file an upload stored, in order

    @property
    def state(self) -> str:
        """The state string /api/job reports ("Offline", "Operational", "Printing", ...)."""
        return self.printer.state_text()

    def fail(self, message: str = "Thermal Runaway") -> None:
        """The printer's firmware reports an error: the job stops and OctoPrint shows Error."""
        self.printer.fail(message)

    # -- fault switches (common.FaultSwitches)

    def fail_print(self, message: str = "Thermal Runaway", code: int | None = None) -> None:
        self.printer.fail(message)  # OctoPrint reports the firmware's error text, no code

    def start_local_print(self, name: str = LOCAL_PRINT_NAME, seconds: float = 600.0) -> None:
        self.printer.start_local(name, seconds)

    def need_attention(self, message: str = "Filament runout") -> None:
        self.printer.firmware_pause()  # OctoPrint shows Paused; the reason stays on the printer

    def attend(self) -> None:
        self.printer.firmware_resume()
