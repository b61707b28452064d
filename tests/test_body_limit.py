"""A body over the upload limit is refused before the coordinator reads it, on a real server over
a raw socket, so that the test counts the bytes that went out before the answer came back."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from farm.coordinator.api.bodylimit import FORM_OVERHEAD
from tests.conftest import RunningFarm, farm_server

CHUNK = b"\0" * (1 << 20)
BOUNDARY = "pfboundary"


def zeros(total: int) -> Iterator[bytes]:
    """`total` bytes made as they are sent, never held: one reused 1 MiB chunk."""
    while total > 0:
        yield CHUNK[: min(total, len(CHUNK))]
        total -= len(CHUNK)


def multipart_head(filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def answer(sock: socket.socket, wait_s: float) -> tuple[int, dict] | None:
    """The status and JSON detail of the response, if one arrives within `wait_s`."""
    if not select.select([sock], [], [], wait_s)[0]:
        return None
    data = b""
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):  # the server closes after a 413
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    """Send body chunks until the server answers (or the body ends); returns the bytes sent."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server answered and closed its end
            break
        sent += len(chunk)
    return sent


def test_a_700_mb_upload_is_refused_before_its_body_is_read(farm: RunningFarm) -> None:
    """The farm's default limit (512 MB); the body is made as it is sent and never held."""
    size = 700 << 20
    token = (farm.data_dir / "admin.token").read_text().strip()
    host, port = farm.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/builds HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
        )
        early = answer(sock, 10)  # no body sent yet: a server that reads it first would still wait
        sent = 0
        if early is None:
            sent = send_until_answered(sock, zeros(size))
    assert early is not None, f"no answer before the body; {sent >> 20} MB of it were read before one came"
    status, body = early
    assert status == 413, body
    assert "512 MB upload limit" in body["detail"] and "FARM_MAX_UPLOAD_MB" in body["detail"]
    assert sent == 0
    health = httpx.get(f"{farm.url}/api/health", timeout=10)  # and the server carries on
    assert health.status_code == 200


@contextlib.contextmanager
def small_limit_server(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`farm server` with a 1 MB upload limit and its own TMPDIR, where a multipart upload spools."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path / "data"),
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/6",
        "FARM_MAX_UPLOAD_MB": "1",
        "TMPDIR": str(temp),
    }
    with farm_server(env, tmp_path / "server.log") as (_, base):
        yield base, (tmp_path / "data" / "admin.token").read_text().strip(), tmp_path


class LargestFile:
    """The largest file seen under some folders while it runs (a thread looks every 5 ms)."""

    def __init__(self, *roots: Path) -> None:
        self.roots, self.largest, self._stop = roots, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                for path in root.rglob("*"):
                    with contextlib.suppress(OSError):
                        self.largest = max(self.largest, path.stat().st_size)
            time.sleep(0.005)

    def __enter__(self) -> LargestFile:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def small_limit(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    with small_limit_server(redis_url, tmp_path_factory.mktemp("limit")) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "head"),
    [("/api/builds", multipart_head("big.stl")), ("/api/artifacts?name=big.gcode", b"")],
)
def test_a_chunked_body_is_cut_off_at_the_limit(
    small_limit: tuple[str, str, Path], path: str, head: bytes
) -> None:
    """No Content-Length: the server stops reading at the limit. The body is sent up to a little
    past the limit and never ended, so a server that read to its end would never answer."""
    base, token, root = small_limit
    limit = (1 << 20) + FORM_OVERHEAD
    port = int(base.rsplit(":", 1)[1])
    method = "POST" if path == "/api/builds" else "PUT"
    content_type = f"multipart/form-data; boundary={BOUNDARY}" if head else "application/octet-stream"
    with LargestFile(root) as watch, socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )

        def chunked() -> Iterator[bytes]:
            for piece in (head, *zeros(limit + (256 << 10))):
                if piece:
                    yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"

        sent = send_until_answered(sock, chunked())
        got = answer(sock, 20)
    assert got is not None, f"no answer after {sent} bytes: the server waits for the rest of the body"
    status, body = got
    assert status == 413 and "1 MB" in body["detail"], body
    assert watch.largest <= limit  # nothing past the limit reached the disk
    assert not list((root / "data" / "artifacts").glob("??/*"))  # and nothing was stored


def test_bodies_within_the_limit_still_go_through(small_limit: tuple[str, str, Path]) -> None:
    base, token, _root = small_limit
    auth = {"Authorization": f"Bearer {token}"}
    body = b"; a small G-code\n" * 1000
    put = httpx.put(f"{base}/api/artifacts", params={"name": "ok.gcode"}, content=body, headers=auth)
    assert put.status_code == 200 and put.json()["size"] == len(body)
    streamed = httpx.put(  # chunked, under the limit
        f"{base}/api/artifacts", params={"name": "ok.gcode"}, content=iter([body, body]), headers=auth
    )
    assert streamed.status_code == 200 and streamed.json()["size"] == 2 * len(body)
    too_big = httpx.put(f"{base}/api/artifacts", content=b"\0" * (3 << 20), headers=auth)
    assert too_big.status_code == 413 and "1 MB upload limit" in too_big.json()["detail"]
