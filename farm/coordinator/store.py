"""Content-addressed artifact files: a blob's name is its sha256, so storing twice costs nothing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

CHUNK = 1 << 20


class TooLarge(Exception):
    pass


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Write to a temp file while hashing, then rename into place (atomic: no half blobs)."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"the upload is larger than the {max_bytes >> 20} MB limit")
                    digest.update(chunk)
                    f.write(chunk)
            return self._commit(tmp, digest.hexdigest()), size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has(sha):
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._commit(tmp, sha)
        return sha

    def _commit(self, tmp: str, sha: str) -> str:
        dest = self.path(sha)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)
        return sha
