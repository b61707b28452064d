"""The one way anything talks to the coordinator: the CLI, the workers and the printer agents.

Depends on httpx only, so it installs on a Raspberry Pi beside a printer.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

CHUNK = 1 << 20
PAGE = 1000  # the most a list endpoint gives per page
NEXT_CURSOR = "X-Next-Cursor"  # where the next page starts (farm/coordinator/api/paging.py)


class FarmError(Exception):
    """The coordinator refused a request or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FileChunks:
    """A re-iterable file body, so a request can be re-sent without holding the file in memory."""

    def __init__(self, path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                if self.progress:
                    self.progress(sent, self.size)
                yield chunk


class FarmClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise FarmError(
                f"cannot reach the coordinator at {self.url} ({exc.__class__.__name__}); "
                "is `farm up` or `farm server` running, and is FARM_URL right?"
            ) from exc
        if resp.status_code >= 400:
            raise FarmError(_detail(resp), resp.status_code)
        return resp

    def get(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params=params)
        return resp.json() if resp.status_code != 204 else None  # /api/agents/next: nothing queued

    def get_all(self, path: str, *, most: int | None = None, **params: Any) -> list[Any]:
        """Every item of a list endpoint (or the first `most`), page after page: each page's
        X-Next-Cursor header says where the next one starts."""
        items: list[Any] = []
        page_size = PAGE if most is None else max(1, min(PAGE, most))
        cursor: str | None = None
        while True:
            at = {"cursor": cursor} if cursor else {}
            resp = self.request("GET", path, params={**params, "limit": page_size, **at})
            items += resp.json()
            cursor = resp.headers.get(NEXT_CURSOR)
            if not cursor or (most is not None and len(items) >= most):
                return items if most is None else items[:most]

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.request("POST", path, json=body or {})
        return resp.json() if resp.status_code != 204 else None

    # -- artifacts ------------------------------------------------------------------------
    def upload_artifact(self, path: Path, name: str = "") -> str:
        resp = self.request(
            "PUT",
            "/api/artifacts",
            params={"name": name or path.name},
            content=FileChunks(path),
            headers={"Content-Length": str(path.stat().st_size)},
        )
        return str(resp.json()["sha256"])

    def download_artifact(self, sha256: str, dest: Path) -> Path:
        """Stream to a temp file, check the hash, then move into place: a crash leaves no half file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f, self._http.stream("GET", f"/api/artifacts/{sha256}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise FarmError(_detail(resp), resp.status_code)
                for chunk in resp.iter_bytes(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise FarmError(f"artifact {sha256} arrived corrupted; it will be fetched again")
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise FarmError(f"download of {sha256} from {self.url} failed: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    # -- builds ---------------------------------------------------------------------------
    def submit(self, path: Path, options: dict[str, Any]) -> dict[str, Any]:
        with path.open("rb") as f:
            resp = self.request(
                "POST", "/api/builds", files={"file": (path.name, f)}, data={"options": json.dumps(options)}
            )
        return resp.json()


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        detail = resp.text
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"{detail} (HTTP {resp.status_code})"
