"""The P1/A1 camera on TCP 6000 over TLS (Doridian/OpenBambuAPI video.md): the client sends an
80-byte auth packet (u32 LE 0x40, type 0x3000, flags 0, 0, then `bblp` and the access code, each
null-padded to 32 bytes); the printer then sends JPEG frames, each after a 16-byte header
(u32 LE payload size, itrack 0, flags 1, 0). A wrong user or code: the connection is closed."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading

from printers.emulators.camera import BAMBU_FRAME

AUTH = struct.Struct("<IIII32s32s")
HEADER = struct.Struct("<IIII")
AUTH_TYPE = 0x3000
FRAME_EVERY_S = 0.5


def auth_packet(access_code: str, user: str = "bblp") -> bytes:
    return AUTH.pack(0x40, AUTH_TYPE, 0, 0, user.encode(), access_code.encode())


class CameraServer:
    """Frames to every client that authenticates, one thread each, until it hangs up."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, access_code: str) -> None:
        self.context = context
        self.access_code = access_code
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)
        self.connections: set[socket.socket] = set()
        self._closed = threading.Event()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(raw,), daemon=True, name="bambu-camera").start()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _session(self, raw: socket.socket) -> None:
        self.connections.add(raw)
        try:
            raw.settimeout(10.0)
            with self.context.wrap_socket(raw, server_side=True) as sock:
                packet = _read(sock, AUTH.size)
                size, kind, _flags, _zero, user, code = AUTH.unpack(packet)
                if (size, kind) != (0x40, AUTH_TYPE) or user.rstrip(b"\0") != b"bblp":
                    return
                if code.rstrip(b"\0") != self.access_code.encode():
                    return
                while not self._closed.is_set():
                    sock.sendall(HEADER.pack(len(BAMBU_FRAME), 0, 1, 0) + BAMBU_FRAME)
                    if self._closed.wait(FRAME_EVERY_S):
                        return
        except (OSError, ssl.SSLError, ValueError, struct.error):
            pass
        finally:
            self.connections.discard(raw)
            raw.close()


def _read(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("closed")
        data += chunk
    return data
