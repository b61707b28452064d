"""What every protocol emulator shares: reading a G-code's facts, the fault switches, and an HTTP
server that can vanish."""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

MODEL_CHECK_BYTES = 64 * 1024  # the firmware only scans the start of the file for M862.x
ESTIMATE_TAIL_BYTES = 256 * 1024  # PrusaSlicer writes the time estimate near the end
FALLBACK_PRINT_S = 3.0  # a G-code without an estimate still "prints" for a moment

_MODEL_RE = re.compile(rb'^[ \t]*M862\.3[ \t]+P[ \t]*"?([^"\s;]+)"?', re.MULTILINE)
_ESTIMATE_RE = re.compile(
    rb"^;[ \t]*estimated printing time \(normal mode\)[ \t]*=[ \t]*([^\r\n]+)", re.MULTILINE
)
_DURATION_PART_RE = re.compile(r"(\d+)\s*([dhms])")
_TEMP_RE = re.compile(rb"^[ \t]*M(104|109|140|190)\b[^;\r\n]*?\bS(\d+(?:\.\d+)?)", re.MULTILINE)
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcodeFacts:
    model: str | None  # from `M862.3 P "<model>"`
    estimate_s: float | None  # from `; estimated printing time (normal mode) = ...`
    nozzle_c: float
    bed_c: float


@dataclass(kw_only=True)
class PrintClock:
    """A print's own time in the emulator's accelerated seconds: it runs, halts (a pause, a stop)
    and runs again, and never passes `total_s` (the print itself, unless a job adds a phase to it).
    Every emulator's job is one."""

    duration_s: float
    elapsed_s: float = 0.0  # up to the last halt
    running_since: float | None = None  # monotonic time of the last run; None while halted

    @property
    def total_s(self) -> float:
        return self.duration_s

    def elapsed(self, now: float) -> float:
        extra = now - self.running_since if self.running_since is not None else 0.0
        return min(self.elapsed_s + extra, self.total_s)

    def run(self, now: float) -> None:
        self.running_since = now

    def halt(self, now: float) -> None:
        self.elapsed_s = self.elapsed(now)
        self.running_since = None


class StatefulJob(Protocol):
    """A job an EmulatedPrinter holds: a PrintClock with the state its protocol names."""

    state: str
    duration_s: float

    def elapsed(self, now: float) -> float: ...

    def halt(self, now: float) -> None: ...


J = TypeVar("J", bound=StatefulJob)


class EmulatedPrinter(Generic[J]):
    """What the HTTP emulators' printers share: the storage folder, how much faster than the
    slicer's estimate they print (at most `max_print_s` a print), one job at a time, and the lock
    around it. A job in state RUNNING turns DONE once its time is up (`_refresh`, with the lock)."""

    RUNNING: ClassVar[str]
    DONE: ClassVar[str]

    def __init__(self, *, root: Path, speed: float, max_print_s: float | None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.root = root
        self.speed = speed
        self.max_print_s = max_print_s
        self._job: J | None = None
        self._lock = threading.RLock()

    def _refresh(self, now: float) -> J | None:
        job = self._job
        if job and job.state == self.RUNNING and job.elapsed(now) >= job.duration_s:
            job.halt(now)
            job.state = self.DONE
        return job


def print_seconds(estimate_s: float | None, speed: float, max_print_s: float | None) -> float:
    """How long a print with the slicer's `estimate_s` takes on an emulator running `speed` times
    faster, at most `max_print_s`."""
    duration = estimate_s / speed if estimate_s else FALLBACK_PRINT_S
    if max_print_s is not None:
        duration = min(duration, max_print_s)
    return max(duration, 0.001)


def parse_duration(text: str) -> float | None:
    """`1d 2h 21m 13s` -> seconds; None if nothing recognisable."""
    parts = _DURATION_PART_RE.findall(text)
    return float(sum(int(n) * _UNIT_S[unit] for n, unit in parts)) if parts else None


def inspect_gcode(path: Path) -> GcodeFacts:
    """Read only the head (model check, temperatures) and the tail (estimate), never the whole file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(MODEL_CHECK_BYTES)
        f.seek(max(0, size - ESTIMATE_TAIL_BYTES))
        tail = f.read(ESTIMATE_TAIL_BYTES)
    model = _MODEL_RE.search(head)
    estimates = _ESTIMATE_RE.findall(tail) or _ESTIMATE_RE.findall(head)
    temps: dict[bytes, float] = {}
    for code, value in _TEMP_RE.findall(head):
        if float(value) > 0:
            temps.setdefault(code, float(value))
    return GcodeFacts(
        model=model.group(1).decode("ascii", "replace") if model else None,
        estimate_s=parse_duration(estimates[-1].decode("ascii", "replace")) if estimates else None,
        nozzle_c=temps.get(b"104", temps.get(b"109", 215.0)),
        bed_c=temps.get(b"140", temps.get(b"190", 60.0)),
    )


def storage_folder(path: Path | str) -> Path:
    """An emulator's storage folder, made if it is not there yet."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


LOCAL_PRINT_NAME = "started-at-the-printer.gcode"
PRINT_LOG = ".prints.jsonl"  # in the storage folder; listings skip dot files
_print_log_lock = threading.Lock()


def record_print(root: Path, name: str, seconds: float | None = None) -> None:
    """Append a print the farm started to `<storage>/.prints.jsonl`, one JSON object a line, written
    through at once: the print history a real printer keeps, readable by another process (the
    chaos test counts each job's prints in it to catch a double print; bench/farm.py reads the
    printers' busy time from `at` and `seconds`, the wall-clock time this print takes)."""
    entry: dict[str, Any] = {"file": name, "at": time.time()}
    if seconds is not None:
        entry["seconds"] = round(seconds, 4)
    line = json.dumps(entry) + "\n"
    with _print_log_lock, (root / PRINT_LOG).open("a") as f:
        f.write(line)


def read_print_log(root: Path) -> list[dict[str, Any]]:
    """Every print `record_print` logged in this storage folder, oldest first."""
    try:
        lines = (root / PRINT_LOG).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


class FaultSwitches(abc.ABC):
    """What goes wrong at real printers, switched the same way on every emulator.

    tests/test_faults.py drives each protocol's driver through every switch; the same names work
    on every emulator, so a demo or a test never needs to know the protocol to break a printer."""

    @abc.abstractmethod
    def go_offline(self) -> None:
        """Drop off the network (Wi-Fi gone, unplugged cable); a running print carries on."""

    @abc.abstractmethod
    def come_back(self) -> None:
        """Back on the network, on the same ports, with whatever the print did meanwhile."""

    @abc.abstractmethod
    def abort_next_upload(self, after_bytes: int = 64 * 1024) -> None:
        """Cut the next upload's connection after `after_bytes` of its body; nothing of it is kept."""

    @abc.abstractmethod
    def fail_print(self, message: str, code: int | None = None) -> None:
        """The running print stops with an error (`code` where the protocol carries one)."""

    @abc.abstractmethod
    def start_local_print(self, name: str = LOCAL_PRINT_NAME, seconds: float = 600.0) -> None:
        """Someone starts a print at the printer itself: it is busy with a job the farm did not send."""

    @abc.abstractmethod
    def need_attention(self, message: str = "Filament runout") -> None:
        """The running print stops and waits for a person at the printer."""

    @abc.abstractmethod
    def attend(self) -> None:
        """The person at the printer fixes what `need_attention` asked for; the print goes on."""


class Readable(Protocol):
    """What an upload body is read through: a socket file, or one wrapped by `UploadCutter`."""

    def read(self, n: int = -1, /) -> bytes: ...


class UploadCutter:
    """The `abort_next_upload` switch for emulators that read uploads from a socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._after: int | None = None

    def arm(self, after_bytes: int) -> None:
        with self._lock:
            self._after = after_bytes

    def wrap(self, stream: Readable, conn: socket.socket) -> Readable:
        """`stream` as it is, or, when armed (once), a stream that drops `conn` after the limit."""
        with self._lock:
            after, self._after = self._after, None
        return stream if after is None else _CutStream(stream, conn, after)


class _CutStream:
    def __init__(self, stream: Readable, conn: socket.socket, after: int) -> None:
        self._stream, self._conn, self._left = stream, conn, after

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError("the emulator cut the upload (abort_next_upload)")
        chunk = self._stream.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(chunk)
        return chunk


class EmulatorServer(ThreadingHTTPServer):
    """Tracks its connections, so a stopped emulator drops keep-alive clients like a dead host."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], emulator: Any, handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client (or a fault switch) dropped the connection
            log.debug("connection from %s dropped", client_address)
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class EmulatorThread:
    """start/stop/serve_forever for an HTTP emulator's server, the same for every protocol."""

    name: str
    handler: type[BaseHTTPRequestHandler]  # the protocol's requests

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.cutter = UploadCutter()  # the HTTP handlers read uploads through it (abort_next_upload)

    def _make_server(self) -> EmulatorServer:
        return EmulatorServer((self.host, self._requested_port), self, self.handler)

    @property
    def port(self) -> int:
        if self._server is not None:
            return int(self._server.server_address[1])
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("the emulator is not started; port=0 is resolved by start()")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopped.clear()
        self._server = self._make_server()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self.name}-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("%s emulator listening on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._requested_port = int(server.server_address[1])  # a restart comes back on this port
            server.shutdown()
            server.drop_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._stopped.set()

    def close(self) -> None:
        """Stop for good: the same as `stop()` here (nothing else to remove), and the name every
        emulator shares, Bambu's included (which also removes its certificate)."""
        self.stop()

    def go_offline(self) -> None:
        self.stop()

    def abort_next_upload(self, after_bytes: int = 64 * 1024) -> None:
        self.cutter.arm(after_bytes)

    def come_back(self) -> None:
        self.start()

    def serve_forever(self) -> None:
        """Start if needed and block until `stop()` is called from another thread."""
        self.start()
        while not self._stopped.wait(0.5):
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
