"""The P1/A1 camera on TCP 6000 over TLS (Doridian/OpenBambuAPI video.md): the client sends an
80-byte auth packet (u32 LE 0x40, type 0x3000, flags 0, 0, then `bblp` and the access code, each
null-padded to 32 bytes); the printer then sends JPEG frames, each after a 16-byte header
(u32 LE payload size, itrack 0, flags 1, 0). A wrong user or code: the connection is closed."""

from __future__ import annotations

import ssl
import struct

from printers.emulators.camera import BAMBU_FRAME
from printers.emulators.tls_server import TlsThreadServer

AUTH = struct.Struct("<IIII32s32s")
HEADER = struct.Struct("<IIII")
AUTH_TYPE = 0x3000
FRAME_EVERY_S = 0.5


def auth_packet(access_code: str, user: str = "bblp") -> bytes:
    return AUTH.pack(0x40, AUTH_TYPE, 0, 0, user.encode(), access_code.encode())


class CameraServer(TlsThreadServer):
    """Frames to every client that authenticates, one thread each, until it hangs up."""

    thread_name = "bambu-camera"
    timeout_s = 10.0

    def __init__(self, host: str, port: int, context: ssl.SSLContext, access_code: str) -> None:
        super().__init__(host, port, context)
        self.access_code = access_code

    def handle(self, sock: ssl.SSLSocket) -> None:
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


def _read(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("closed")
        data += chunk
    return data
