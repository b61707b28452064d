"""What the HTTP drivers (PrusaLink, OctoPrint, Moonraker) share: one client, one lock, clear errors."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import httpx

from printers.drivers.base import Driver, DriverError, PrinterConfig, ProgressCallback, printer_path

# A printer hashes and analyses a large upload (OctoPrint) or writes it to slow USB storage
# (PrusaLink) before it answers.
UPLOAD_IO_TIMEOUT_S = 120.0


class ProgressFile:
    """A file object that reports how much httpx has read from it.

    httpx streams a multipart file part by `read()`ing it in chunks, sizes it with `fileno()`,
    and `seek(0)`s before every send, so a retried request re-reads from the start.
    """

    def __init__(self, f: BinaryIO, size: int, progress: ProgressCallback | None) -> None:
        self._f = f
        self._size = size
        self._progress = progress
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._sent += len(chunk)
        if chunk and self._progress is not None:
            self._progress(self._sent, self._size)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._sent = self._f.seek(offset, whence)
        return self._sent

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()


class HttpDriver(Driver):
    """A printer behind an HTTP API. Subclasses say how the API refuses credentials (`_refused`)."""

    default_port = 80

    def __init__(self, config: PrinterConfig, **client_kwargs: Any) -> None:
        super().__init__(config)
        host = f"[{config.host}]" if ":" in config.host else config.host  # IPv6
        port = config.port or (443 if config.https else self.default_port)
        self.base_url = f"{'https' if config.https else 'http'}://{host}:{port}"
        # Serialised: PrusaLink nonces live 5 s, and status reads must not interleave with commands.
        self._lock = threading.RLock()
        self._client = httpx.Client(base_url=self.base_url, timeout=config.timeout_s, **client_kwargs)

    def close(self) -> None:
        self._client.close()

    def _refused(self, response: httpx.Response) -> str | None:
        """The operator-facing message when `response` means the credentials are wrong, else None."""
        return None

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request under the lock. Refused credentials are an operator error; transport errors pass."""
        with self._lock:
            response = self._client.request(method, url, **kwargs)
        if (message := self._refused(response)) is not None:
            raise DriverError(message)
        return response

    @contextlib.contextmanager
    def _reachable(self, what: str) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise DriverError(f"cannot {what}: no answer from {self.base_url} ({exc!r})") from exc
        except httpx.TransportError as exc:  # connected, then the printer went away mid-request
            reason = f"the connection to {self.base_url} broke off"
            raise DriverError(f"cannot {what}: {reason} ({exc!r})") from exc

    def _upload_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(UPLOAD_IO_TIMEOUT_S, connect=self.config.timeout_s)

    def _post_file(
        self, url: str, path: Path, remote_name: str, data: dict[str, str], progress: ProgressCallback | None
    ) -> httpx.Response:
        """POST `path` as the multipart part `file`, named by `remote_name`'s last segment, streamed
        from disk with `progress` reported as httpx reads it."""
        _, name = printer_path(remote_name)
        try:
            f = path.open("rb")
            size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror}") from exc
        with f, self._reachable(f"upload {remote_name!r}"):
            files = {"file": (name, ProgressFile(f, size, progress), "application/octet-stream")}
            return self._request("POST", url, files=files, data=data, timeout=self._upload_timeout())

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        with self._reachable(f"{method} {url}"):
            return self._request(method, url, **kwargs)

    def _image(self, url: str) -> tuple[bytes, str] | None:
        """GET an image: None when the printer says there is none (any non-200, or no bytes)."""
        response = self._send("GET", url)
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if response.status_code != 200 or not response.content or not kind.startswith("image/"):
            return None
        return response.content, kind

    def _camera_url(self, url: str) -> str:
        """A webcam URL as the printer's host configured it, reachable from here: relative ones
        against the printer's API, and `127.0.0.1`/`localhost` (the usual OctoPi and Klipper setting,
        right only on the printer's own host) replaced by the printer's address."""
        full = urljoin(self.base_url + "/", url)
        parts = urlsplit(full)
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            netloc = host + (f":{parts.port}" if parts.port else "")
            full = parts._replace(netloc=netloc).geturl()
        return full
