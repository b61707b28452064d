"""A content-addressed cache of CAD builds: the same inputs never mesh twice.

The key covers everything that decides the meshes: the script's bytes (and name: it names the 3MF
objects) or, for a project, every file of it and the entry file's path, the entry point, the
parameters, the project's requirements (and the versions installed for them), the build123d and OCP
versions and our own exporter (and mesh checks and preview renderer). A STEP file is not part of the
key: it is made only on request, and an entry without one is a miss for a request that wants one;
that build's entry, STEP included, then serves both kinds of request. A hit
returns paths inside the cache; nothing is copied. Entries are written to a temporary directory and
renamed into place, so a reader never sees half an entry. Only successful builds are cached.

This module imports no CAD code: the CLI and the coordinator can compute keys without build123d.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from functools import lru_cache, partial
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from workers.cad_env import EnvStore, read_requirements
from workers.cad_types import (
    LOG_NAME,
    PREVIEW_NAME,
    PREVIEW_SMALL_NAME,
    STEP_NAME,
    STL_NAME,
    THREEMF_NAME,
    CadRequest,
    CadResult,
)

log = logging.getLogger("farm.cad_cache")

# Bump when the entry layout or the meaning of a key changes.
CACHE_FORMAT = "2"  # 2: previews and mesh checks in every entry, STEP in some
META_NAME = "meta.json"
ENVS_DIR = "envs"  # environments of projects' requirements (workers.cad_env), beside the entries
# The exporter's tolerances and naming live in cad_child.py, the entry point's choice and its
# parameters' types in cad_script.py, the checks and previews in farm/core/mesh.py; hashing their
# bytes (without importing them, which would import build123d) invalidates the cache whenever the
# way meshes are made changes.
_OURS = ("cad_child.py", "cad_script.py", "scene.py", "viewer.py", "threemf.py")
EXPORTER = (
    *(Path(__file__).with_name(name) for name in _OURS),
    Path(__file__).parent.parent / "farm" / "core" / "mesh.py",
)
OCP_DISTRIBUTIONS = ("cadquery-ocp", "cadquery-ocp-novtk")


def cad_cache_key(
    source: Path,
    entry: str | None,
    params: Mapping[str, Any],
    *,
    project: Path | None = None,
    packages: Iterable[str] = (),
    versions: Mapping[str, str] | None = None,
) -> str:
    """The sha256 of everything that decides a build's meshes, as 64 hex digits.

    With `project` (a tar.gz), `source` is the entry file's path inside it. `packages` are the
    declared requirements and what was installed for them; `versions` defaults to the installed
    build123d and OCP and is an argument so that tests can vary it.
    """
    digest = hashlib.sha256()

    def field(name: str, value: bytes) -> None:
        # Length-prefixed, so that no two different sets of fields hash the same byte stream.
        for part in (name.encode(), value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)

    field("format", CACHE_FORMAT.encode())
    if project is not None:
        field("entry file", source.as_posix().encode())
    for relative, file_digest in source_tree_digests(source, project):
        field("file", f"{relative}\0{file_digest}".encode())
    field("entry", (entry or "").encode())
    field("params", _canonical(sorted((str(k), v) for k, v in params.items())))
    field("packages", _canonical(sorted(packages)))
    field("versions", _canonical(sorted((versions if versions is not None else cad_versions()).items())))
    for exporter in EXPORTER:
        field("exporter", _file_sha256(exporter).encode())
    return digest.hexdigest()


def source_tree_digests(source: Path, project: Path | None = None) -> list[tuple[str, str]]:
    """(path relative to the project, sha256) for each file of the source, sorted by path.

    The file itself, or each file in a project archive (its contents, not the archive's bytes).
    """
    if project is None:
        return [(source.name, _file_sha256(source))]
    digests = []
    with tarfile.open(project, "r:gz") as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isfile() else None
            if reader is not None:
                digest = hashlib.sha256()
                for block in iter(partial(reader.read, 1 << 20), b""):
                    digest.update(block)
                digests.append((member.name, digest.hexdigest()))
    return sorted(digests)


@lru_cache
def cad_versions() -> dict[str, str]:
    """The installed build123d and OCP versions, from package metadata: no 4 s build123d import."""
    return {"build123d": _version("build123d"), "OCP": _ocp_version()}


def _ocp_version() -> str:
    for name in OCP_DISTRIBUTIONS:
        version = _version(name)
        if version != "none":
            return f"{name} {version}"
    # Another OCP wheel: ask which distribution provides the module (slower: it scans them all).
    for name in metadata.packages_distributions().get("OCP", []):
        return f"{name} {_version(name)}"
    return "none"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class CadCache:
    """Entries live in `root/<key[:2]>/<key>/`: model.stl, model.3mf, the previews, build.log,
    meta.json and, when a build asked for it, model.step."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str, *, step: bool = False) -> CadResult | None:
        """The cached result, with paths inside the cache, or None (also when `step` is asked
        for and the entry has none). The result names a STEP file only when asked for."""
        entry = self.entry_dir(key)
        try:
            meta = json.loads((entry / META_NAME).read_text())
            result = _result_from_meta(entry, meta)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        files = [result.stl, result.threemf, result.preview, result.preview_small]
        if not all(path is not None and path.is_file() for path in files):
            return None
        if step and not (entry / STEP_NAME).is_file():
            return None
        return dataclasses.replace(result, step=entry / STEP_NAME if step else None)

    def put(self, key: str, result: CadResult) -> CadResult:
        """Store `result` under `key` and return it as read back from the cache.

        A concurrent put of the same key is fine: builds of one key are interchangeable, so the loser
        of the rename just keeps the winner's entry. An existing entry is replaced (`--no-cache`).
        """
        entry = self.entry_dir(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=entry.parent))
        try:
            _write_entry(staging, result)
            _swap_in(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = self.get(key, step=result.step is not None)
        if stored is None:
            raise OSError(f"the CAD cache entry {entry} vanished right after it was written")
        return stored


def _write_entry(folder: Path, result: CadResult) -> None:
    shutil.copyfile(result.stl, folder / STL_NAME)
    shutil.copyfile(result.threemf, folder / THREEMF_NAME)
    for path, name in ((result.preview, PREVIEW_NAME), (result.preview_small, PREVIEW_SMALL_NAME)):
        if path is not None:
            shutil.copyfile(path, folder / name)
    if result.step is not None:
        shutil.copyfile(result.step, folder / STEP_NAME)
    if result.log is not None and result.log.is_file():
        shutil.copyfile(result.log, folder / LOG_NAME)
    meta = {
        "bbox": [list(result.bbox[0]), list(result.bbox[1])],
        "volume": result.volume,
        "objects": result.objects,
        "warnings": result.warnings,
        "mesh": result.mesh,
        "shown": result.shown,
        "skipped": result.skipped,
    }
    # meta.json last: get() treats an entry without it as absent.
    (folder / META_NAME).write_text(json.dumps(meta))


def _swap_in(staging: Path, entry: Path) -> None:
    """Rename `staging` to `entry`; an existing entry is first renamed aside, then removed."""
    try:
        os.rename(staging, entry)
        return
    except OSError:
        if not entry.exists():
            raise
    old = Path(tempfile.mkdtemp(prefix=f".old-{entry.name[:12]}-", dir=entry.parent))
    with contextlib.suppress(FileNotFoundError):  # another writer is replacing it right now
        os.rename(entry, old / "entry")
    try:
        os.rename(staging, entry)
    except OSError:
        if not entry.exists():  # a concurrent writer won: keep its entry
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _result_from_meta(entry: Path, meta: dict[str, Any]) -> CadResult:
    low, high = meta["bbox"]
    x0, y0, z0 = (float(v) for v in low)
    x1, y1, z1 = (float(v) for v in high)
    log_path = entry / LOG_NAME
    return CadResult(
        stl=entry / STL_NAME,
        threemf=entry / THREEMF_NAME,
        bbox=((x0, y0, z0), (x1, y1, z1)),
        volume=float(meta["volume"]),
        objects=int(meta["objects"]),
        log=log_path if log_path.is_file() else None,
        warnings=[str(w) for w in meta.get("warnings", [])],
        preview=entry / PREVIEW_NAME,
        preview_small=entry / PREVIEW_SMALL_NAME,
        mesh=dict(meta.get("mesh") or {}),
        shown=list(meta.get("shown") or []),
        skipped=[str(s) for s in meta.get("skipped", [])],
    )


class Builder(Protocol):
    """What cached_build needs of a runner: workers.cad_runner.CadRunner, or a wrapper of one."""

    def build(self, req: CadRequest) -> CadResult: ...


def cached_build(
    runner: Builder, cache: CadCache, request: CadRequest, *, use_cache: bool = True
) -> tuple[CadResult, bool]:
    """Build `request` unless the cache has it; returns (result, whether it was a cache hit).

    A project's requirements are installed first (outside the sandbox, into `cache.envs`), so
    that the key covers what was installed. With use_cache=False the build always runs and its
    result replaces the entry. A CadError propagates and caches nothing. A cache that cannot be
    written costs the cache, not the build.
    """
    packages: list[str] = []
    if request.project is not None:
        declared = read_requirements(request.project)
        env, installed = EnvStore(cache.root / ENVS_DIR).ensure(declared)
        request = dataclasses.replace(request, env=env)
        packages = declared + installed
    key = cad_cache_key(
        request.source, request.entry, request.params, project=request.project, packages=packages
    )
    if use_cache and (hit := cache.get(key, step=request.step)) is not None:
        return hit, True
    result = runner.build(request)
    try:
        return cache.put(key, result), False
    except OSError as exc:
        log.warning("could not store build %s in the CAD cache: %s", key[:12], exc)
        return result, False
