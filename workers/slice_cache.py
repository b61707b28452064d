"""A content-addressed cache of slicer output on the local disk.

The key covers everything that decides the bytes of a slice: the mesh, the complete flattened
profile (overrides included) and the slicer version. A hit therefore skips the slicer entirely.
Entries are written to a temporary directory and renamed into place, so a reader never sees a
half-written entry and two workers racing on the same key both end up with a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FORMAT = "printfarm-slice-cache-1"  # bump when what a cached entry contains changes
META_FILE = "meta.json"
_HASH_CHUNK = 1024 * 1024


def cache_key(mesh: Path, profile_text: str, slicer_version: str, *, extra: str = "") -> str:
    """sha256 over the mesh bytes, the flattened profile, the slicer version and `extra`
    (anything else that shapes the output, e.g. the packaging of a Bambu .gcode.3mf)."""
    h = hashlib.sha256()
    # Length-prefixed fields: no two different inputs can concatenate to the same stream.
    for part in (KEY_FORMAT, slicer_version, extra, profile_text):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    with Path(mesh).open("rb") as f:
        while block := f.read(_HASH_CHUNK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    key: str
    files: dict[str, Path]  # role ("gcode", "send", ...) -> the cached file
    meta: dict[str, Any]


class SliceCache:
    """`get(key)` / `put(key, files, meta)` over `root/<key[:2]>/<key>/`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def _dir(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key[:2] / key

    def get(self, key: str) -> CacheEntry | None:
        entry = self._dir(key)
        try:
            record = json.loads((entry / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        files = {role: entry / name for role, name in record.get("files", {}).items()}
        if not all(p.is_file() for p in files.values()):
            return None  # pruned by hand: treat as a miss, the next put replaces it
        return CacheEntry(key, files, record.get("meta", {}))

    def put(self, key: str, files: Mapping[str, Path], meta: Mapping[str, Any]) -> CacheEntry:
        """Store copies of `files` (role -> path) with `meta` (JSON-serialisable)."""
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            names: dict[str, str] = {}
            for role, src in files.items():
                name = Path(src).name
                if name == META_FILE or name in names.values():
                    name = f"{role}-{name}"
                shutil.copyfile(src, tmp / name)
                names[role] = name
            record = {"files": names, "meta": dict(meta)}
            (tmp / META_FILE).write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)  # a stale or partial entry
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.get(key) is None:  # another worker won the race: its entry is as good
                raise
        entry = self.get(key)
        assert entry is not None
        return entry


__all__ = ["CacheEntry", "SliceCache", "cache_key"]
