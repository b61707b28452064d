"""An OctoPrint server with one printer behind it, emulated over a real socket.

Standard library only, like the PrusaLink emulator. It speaks the endpoints the OctoPrint driver
uses, with the JSON shapes and status codes OctoPrint 1.11 sends (checked against a real server
with its virtual printer): `X-Api-Key` or 403, a serial connection that starts Closed unless
`connected`, `/api/printer` 409 while not operational, uploads as streamed multipart with
`print=true` (`effectivePrint` false when the printer is busy, 409 when overwriting the file
being printed), and job states that fall back to "Operational" after a job (completion 100.0
after a finished one, null after a cancel).

Printing runs in accelerated time: the slicer's estimate divided by `speed`, at most
`max_print_s`. The multipart parser here is shared with the Moonraker emulator.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from printers.emulators.camera import camera_png
from printers.emulators.common import (
    LOCAL_PRINT_NAME,
    EmulatorServer,
    EmulatorThread,
    FaultSwitches,
    PrintClock,
    Readable,
    UploadCutter,
    inspect_gcode,
    print_seconds,
    record_print,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_FIELD_BYTES = 64 * 1024  # a form field that is not a file is a flag or a path
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


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- multipart


class _Body:
    """The request body as a bounded stream: never reads past Content-Length."""

    def __init__(self, stream: Readable, length: int) -> None:
        self._stream = stream
        self.remaining = length

    def read(self, n: int) -> bytes:
        if self.remaining <= 0:
            return b""
        try:
            chunk = self._stream.read(min(n, self.remaining))
        except OSError:
            chunk = b""
        self.remaining -= len(chunk)
        return chunk


def multipart_boundary(content_type: str | None) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type or not content_type.startswith("multipart/form-data") or not match:
        raise HttpError(400, "Expected a multipart/form-data body")
    return match.group(1).encode()


def parse_multipart(
    stream: Readable, length: int, boundary: bytes, open_file: Callable[[str], BinaryIO]
) -> dict[str, str]:
    """Stream a multipart body: file parts go chunk by chunk to `open_file(filename)` (closed here),
    other parts are returned as text. A file part's value in the result is its filename."""
    body = _Body(stream, length)
    delimiter = b"\r\n--" + boundary
    buf = b"\r\n" + _read_until(body, b"", b"--" + boundary)  # drop any preamble
    fields: dict[str, str] = {}
    while True:
        buf = _fill(body, buf, 2)
        if buf.startswith(b"--"):
            return fields
        head, _, buf = _fill_until(body, buf[2:], b"\r\n\r\n").partition(b"\r\n\r\n")
        name, filename = _disposition(head)
        if filename is not None:
            fields[name] = filename
            with open_file(filename) as out:
                buf = _copy_part(body, buf, delimiter, out.write)
        else:
            value = bytearray()
            buf = _copy_part(body, buf, delimiter, value.extend)
            if len(value) > MAX_FIELD_BYTES:
                raise HttpError(400, f"Form field {name!r} is too large")
            fields[name] = value.decode("utf-8", "replace")


def _read_until(body: _Body, buf: bytes, marker: bytes) -> bytes:
    """Consume up to and including `marker`; return what follows it in the buffer."""
    buf = _fill_until(body, buf, marker)
    return buf.partition(marker)[2]


def _fill_until(body: _Body, buf: bytes, marker: bytes, limit: int = MAX_FIELD_BYTES) -> bytes:
    while marker not in buf:
        if len(buf) > limit:
            raise HttpError(400, "Malformed multipart body")
        chunk = body.read(CHUNK_BYTES)
        if not chunk:
            raise HttpError(400, "Truncated multipart body")
        buf += chunk
    return buf


def _fill(body: _Body, buf: bytes, n: int) -> bytes:
    while len(buf) < n:
        chunk = body.read(CHUNK_BYTES)
        if not chunk:
            raise HttpError(400, "Truncated multipart body")
        buf += chunk
    return buf


def _copy_part(body: _Body, buf: bytes, delimiter: bytes, write: Callable[[bytes], Any]) -> bytes:
    """Write a part's content until the next delimiter; return what follows the delimiter."""
    keep = len(delimiter) - 1  # a delimiter may straddle two reads
    while True:
        at = buf.find(delimiter)
        if at >= 0:
            write(buf[:at])
            return buf[at + len(delimiter) :]
        if len(buf) > keep:
            write(buf[:-keep])
            buf = buf[-keep:]
        chunk = body.read(CHUNK_BYTES)
        if not chunk:
            raise HttpError(400, "Truncated multipart body")
        buf += chunk


def _disposition(head: bytes) -> tuple[str, str | None]:
    text = head.decode("utf-8", "replace")
    name = re.search(r'[; ]name="([^"]*)"', text)
    filename = re.search(r'filename="([^"]*)"', text)
    if name is None:
        raise HttpError(400, "Multipart part without a name")
    return name.group(1), filename.group(1) if filename else None


def safe_relpath(path: str) -> str:
    """`a/b.gcode` from user input, refusing `..` and absolute escapes."""
    parts = [p for p in unquote(path).replace("\\", "/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise HttpError(400, "Invalid path")
    return "/".join(parts)


# --------------------------------------------------------------------------- printer state

_ACTIVE = ("Printing", "Pausing", "Paused", "Cancelling")
_SETTLES_TO = {"Pausing": "Paused", "Cancelling": "cancelled"}


@dataclass
class Job(PrintClock):
    path: str  # relative to the storage dir, as OctoPrint's `path`
    size: int
    has_estimate: bool
    nozzle_c: float
    bed_c: float
    state: str = "Printing"  # Printing, Paused, done, cancelled
    settle_at: float = 0.0  # when Pausing becomes Paused, Cancelling becomes cancelled

    @classmethod
    def started_at_printer(cls, root: Path, name: str, seconds: float, state: str, note: str) -> Job:
        """A print someone started there (a fault switch): its file appears, it runs `seconds`."""
        local = root / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(f"; {note}\nG28\n")
        return cls(
            path=name,
            size=local.stat().st_size,
            duration_s=max(seconds, 0.001),
            has_estimate=True,
            nozzle_c=215.0,
            bed_c=60.0,
            state=state,
            running_since=time.monotonic(),
        )

    def settle(self, state: str, now: float) -> None:
        """OctoPrint waits for the printer's buffer before a pause or cancel takes effect."""
        self.halt(now)
        self.state = state
        self.settle_at = now + SETTLE_S


class Printer:
    """OctoPrint's view of its printer: connection, current job, local storage. Thread-safe."""

    def __init__(self, *, root: Path, speed: float, max_print_s: float | None, connected: bool) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.root = root
        self.speed = speed
        self.max_print_s = max_print_s
        self.received: list[Path] = []
        self.port: str | None = "VIRTUAL" if connected else None
        self._connected_at: float | None = 0.0 if connected else None
        self._error: str | None = None
        self._job: Job | None = None
        self._lock = threading.RLock()

    def _refresh(self, now: float) -> Job | None:
        job = self._job
        if job and job.state == "Printing" and job.elapsed(now) >= job.duration_s:
            job.halt(now)
            job.state = "done"
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
            facts = inspect_gcode(local)
            duration = print_seconds(facts.estimate_s, self.speed, self.max_print_s)
            self._job = Job(
                path=rel,
                size=local.stat().st_size,
                duration_s=duration,
                has_estimate=facts.estimate_s is not None,
                nozzle_c=facts.nozzle_c,
                bed_c=facts.bed_c,
                running_since=time.monotonic(),
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
                job.settle("Cancelling", now)
            elif command == "pause":
                action = action or ("resume" if state == "Paused" else "pause")  # no action: toggle
                if action == "pause" and state == "Printing":
                    job.settle("Pausing", now)
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


class JsonHandler(BaseHTTPRequestHandler):
    """Keep-alive JSON plumbing shared by the OctoPrint and Moonraker emulators."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    timeout = 30
    _unread = 0

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s emulator %s: " + format, self.server_version, self.address_string(), *args)

    def do_GET(self) -> None:
        self.handle_method("GET")

    def do_POST(self) -> None:
        self.handle_method("POST")

    def do_DELETE(self) -> None:
        self.handle_method("DELETE")

    def handle_method(self, method: str) -> None:
        raise NotImplementedError

    @property
    def path_only(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query, keep_blank_values=True)

    def begin(self) -> None:
        try:
            self._unread = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self._unread = 0

    def take_body(self) -> _Body:
        """The body is the handler's from here on; nothing is drained for it afterwards."""
        body, self._unread = _Body(self.rfile, self._unread), 0
        return body

    def json_body(self) -> dict[str, Any]:
        body = self.take_body()
        raw = body.read(body.remaining) if body.remaining <= MAX_FIELD_BYTES else b""
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise HttpError(400, "Malformed JSON body") from None
        if not isinstance(data, dict):
            raise HttpError(400, "Expected a JSON object")
        return data

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = b"" if status == 204 else json.dumps(data).encode()
        self._drain()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status != 204:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def send_image(self, body: bytes, content_type: str = "image/png") -> None:
        """A camera still, as mjpg-streamer's `?action=snapshot` answers."""
        self._drain()
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _drain(self) -> None:
        """Swallow an unread body so a keep-alive connection stays in step."""
        body = self.take_body()
        while body.remaining > 0:
            if not body.read(CHUNK_BYTES):
                self.close_connection = True
                break


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
        self.host = host
        self.api_key = api_key
        storage_dir = Path(storage_dir)
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.printer = Printer(root=storage_dir, speed=speed, max_print_s=max_print_s, connected=connected)
        self.received: list[Path] = []  # every file an upload stored, in order
        self.cutter = UploadCutter()
        self._requested_port = port
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def _make_server(self) -> EmulatorServer:
        return EmulatorServer((self.host, self._requested_port), self, _Handler)

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
