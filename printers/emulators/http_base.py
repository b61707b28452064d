"""What the OctoPrint and Moonraker emulators share: keep-alive JSON handling, HTTP errors, a
streamed multipart parser, safe storage paths, and a G-code job on the shared print clock."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from printers.emulators.common import PrintClock, Readable, inspect_gcode, print_seconds

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_FIELD_BYTES = 64 * 1024  # a form field that is not a file is a flag or a path


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


@dataclass
class Job(PrintClock):
    """A G-code print on an HTTP printer: its file, temperatures and state, on the shared clock."""

    path: str  # relative to the storage dir, as OctoPrint's `path`
    size: int
    has_estimate: bool
    nozzle_c: float
    bed_c: float
    state: str = "Printing"  # Printing, Paused, done, cancelled
    settle_at: float = 0.0  # when Pausing becomes Paused, Cancelling becomes cancelled

    @classmethod
    def from_gcode(cls, root: Path, rel: str, state: str, *, speed: float, max_print_s: float | None) -> Job:
        """A print of the G-code `root/rel`, running from now for as long as its slicer's estimate
        says, `speed` times faster."""
        local = root / rel
        facts = inspect_gcode(local)
        return cls(
            path=rel,
            size=local.stat().st_size,
            duration_s=print_seconds(facts.estimate_s, speed, max_print_s),
            has_estimate=facts.estimate_s is not None,
            nozzle_c=facts.nozzle_c,
            bed_c=facts.bed_c,
            state=state,
            running_since=time.monotonic(),
        )

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

    def settle(self, state: str, now: float, delay_s: float) -> None:
        """OctoPrint waits for the printer's buffer before a pause or cancel takes effect."""
        self.halt(now)
        self.state = state
        self.settle_at = now + delay_s


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
