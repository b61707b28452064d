"""The server side of RFC 6455 WebSockets on a `BaseHTTPRequestHandler` connection (standard library
only): the opening handshake, unfragmented or fragmented text frames from a masking client, ping/pong
and close. Enough for JSON-RPC clients such as Moonraker's; no extensions, no binary messages."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import struct
from http.server import BaseHTTPRequestHandler

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 1 << 20
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(Exception):
    """The client closed the connection, went away, or broke the protocol."""


def is_upgrade(handler: BaseHTTPRequestHandler) -> bool:
    connection = handler.headers.get("Connection", "").lower()
    return handler.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in connection


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class WebSocket:
    """One accepted connection. `receive()` returns the next text message; control frames are answered."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._rfile = handler.rfile
        self._wfile = handler.wfile
        key = handler.headers.get("Sec-WebSocket-Key", "")
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept_key(key))
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True  # after the socket closes, no more HTTP on it

    def _read(self, n: int) -> bytes:
        try:
            data = self._rfile.read(n) if n else b""
        except OSError as exc:  # a timeout or a reset
            raise WebSocketClosed("connection lost") from exc
        if len(data) != n:
            raise WebSocketClosed("connection lost")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        if not b1 & 0x80 or length > MAX_MESSAGE_BYTES:  # clients must mask (RFC 6455 5.1)
            self.close(1002)
            raise WebSocketClosed("unmasked or oversized frame")
        mask = self._read(4)
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read(length)))
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def receive(self) -> str:
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = self._frame()
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CLOSE:
                self.close(1000)
                raise WebSocketClosed("closed by the client")
            else:
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def close(self, code: int = 1000) -> None:
        with contextlib.suppress(WebSocketClosed):  # the client may already be gone
            self._send(OP_CLOSE, struct.pack("!H", code))

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        try:
            self._wfile.write(head + payload)
            self._wfile.flush()
        except OSError as exc:
            raise WebSocketClosed("connection lost") from exc
