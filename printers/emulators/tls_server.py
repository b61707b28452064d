"""A TLS listener that serves each client in a thread of its own: the Bambu emulator's FTPS server
and both of its cameras (P1/A1 JPEG on 6000, X1 RTSPS on 322) are this with another `handle`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading


class TlsThreadServer:
    thread_name = "tls-server"
    timeout_s = 30.0  # a client silent this long is dropped

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)  # serve() looks at _closed this often
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
            threading.Thread(target=self._session, args=(raw,), daemon=True, name=self.thread_name).start()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def handle(self, sock: ssl.SSLSocket) -> None:
        """Serve one client until it hangs up or the server closes."""
        raise NotImplementedError

    def _session(self, raw: socket.socket) -> None:
        self.connections.add(raw)
        try:
            raw.settimeout(self.timeout_s)
            with self.context.wrap_socket(raw, server_side=True) as sock:
                self.handle(sock)
        except (OSError, ssl.SSLError, ValueError, struct.error):
            pass  # a client that breaks the protocol or hangs up: its session ends, nothing else
        finally:
            self.connections.discard(raw)
            raw.close()
