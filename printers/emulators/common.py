"""What every protocol emulator shares: reading a G-code's facts, and an HTTP server that can vanish."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class GcodeFacts:
    model: str | None  # from `M862.3 P "<model>"`
    estimate_s: float | None  # from `; estimated printing time (normal mode) = ...`
    nozzle_c: float
    bed_c: float


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

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
