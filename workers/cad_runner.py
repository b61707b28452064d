"""Parent side of CAD builds: one sandboxed child per build, forked from a warm fork server.

Importing build123d costs ~4 s and ~400 MB, so a fork server imports it once and every build forks
from it. The parent imports no CAD code: it starts the child, enforces the wall clock, and turns the
child's `result.json` or its exit status into a `CadResult` or a `CadError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from pathlib import Path
from typing import Any

from workers import sandbox, sandbox_probe

# mr (MakerRepo) and pydantic serve @artifact / @customizable projects. cad_child last: it freezes the gc.
PRELOAD = ["build123d", "pydantic", "mr", "workers.cad_runner", "workers.cad_child"]
SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "AUTH", "CRED", "URL", "DSN", "PROXY")
# OCCT meshes in parallel and glibc gives each thread its own 64 MB malloc arena of address space,
# which on a many-core host alone would exhaust the memory limit. Set for the fork server only.
FORKSERVER_ENV = {"MALLOC_ARENA_MAX": "2"}
KILL_GRACE_S = 10.0
REAPER_GRACE_S = 2.0  # for a build's reaper to kill what it left, before the group kill
WARM_UP_TIMEOUT_S = 120.0
DYING_SERVER_WAIT_S = 5.0
PF_EXITING = 0x4

STL_NAME, THREEMF_NAME, RESULT_NAME, LOG_NAME = "model.stl", "model.3mf", "result.json", "build.log"
STEP_NAME, PREVIEW_NAME, PREVIEW_SMALL_NAME = "model.step", "preview.png", "preview-96.png"
OUTPUT_NAMES = (STL_NAME, THREEMF_NAME, STEP_NAME, PREVIEW_NAME, PREVIEW_SMALL_NAME, RESULT_NAME, LOG_NAME)

Point = tuple[float, float, float]


@dataclass(frozen=True)
class CadLimits:
    cpu_s: int = 300
    wall_s: float = 600
    # Address space (RLIMIT_AS), not RSS: a fresh child already maps ~1 GB (OCP and friends; ~250 MB
    # of it resident), so a build has ~3 GB to work with. Below ~1 GB even a plain box crashes.
    memory_mb: int = 4096
    output_mb: int = 512
    procs: int = 128  # threads and processes beyond the uid's current ones; only enforced for non-root


class CadError(Exception):
    """A build that failed, with a message meant for the user.

    kind: syntax | entry | params | exception | empty | mesh (the user's script: mesh = it fails the
    mesh checks) or limit | crash (the process).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class CadResult:
    stl: Path
    threemf: Path
    bbox: tuple[Point, Point]
    volume: float
    objects: int  # objects on the plate: one per shape shown or returned, one per solid of a compound
    log: Path | None = None  # what the script printed
    warnings: list[str] = field(default_factory=list)
    step: Path | None = None  # only when the request asked for it
    preview: Path | None = None  # 256 x 256 PNG, isometric
    preview_small: Path | None = None  # 96 x 96 PNG
    mesh: dict[str, Any] = field(default_factory=dict)  # workers.mesh.MeshReport, with check/preview ms
    # What the script showed: {"name", "kind", "solids", "prints", "color"?} per object (workers.scene)
    shown: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "outline (a sketch)": shown, not printed


@dataclass
class CadRequest:
    """One build. With `project` (a tar.gz of the project), `source` is the entry file's path inside it."""

    source: Path
    outdir: Path
    entry: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # str from --param, any JSON from --params
    project: Path | None = None
    env: Path | None = None  # site-packages of the project's requirements (workers.cad_env)
    step: bool = False  # also export a STEP file
    inspect: bool = False  # only run the script and list what it shows (CadRunner.inspect)


_server_lock = threading.Lock()
_server_users = 0  # open runners share the one fork server; the last to close stops it


class CadRunner:
    """Runs builds; `build` may be called from several threads at once."""

    def __init__(self, limits: CadLimits | None = None, policy: sandbox.Policy | None = None) -> None:
        self.limits = limits or CadLimits()
        self.policy = policy or sandbox.Policy()
        self.sandbox: sandbox_probe.Report | None = None
        self._ctx = multiprocessing.get_context("forkserver")
        self._lock = threading.Lock()
        self._running: set[multiprocessing.process.BaseProcess] = set()
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Start the fork server now (build123d import, ~4 s) rather than in the first build."""
        global _server_users
        with self._lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("CadRunner is closed")
            sweep_stale_build_folders(Path(tempfile.gettempdir()))
            self.sandbox = sandbox_probe.probe(self.policy)
            if not self.sandbox.usable:
                raise sandbox_probe.Unavailable(self.sandbox)
            self._ctx.set_forkserver_preload(PRELOAD)
            with _server_lock:
                _ensure_forkserver()
                _server_users += 1
            try:
                _warm_up()
            except BaseException:
                with _server_lock:
                    _server_users -= 1
                raise
            self._started = True

    def build(self, req: CadRequest, limits: CadLimits | None = None) -> CadResult:
        """Build `req` in a fresh child. Raises CadError for anything the user should be told."""
        self.start()
        limits = limits or self.limits
        outdir = req.outdir.resolve()
        if req.project is None and not req.source.is_file():
            raise CadError("entry", f"no such script: {req.source}")
        outdir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_NAMES:
            (outdir / name).unlink(missing_ok=True)  # never report a previous build's files
        # The build sees only its own folders: its copy of the project (or of the lone script's
        # folder), out/ and tmp/, all writable (scripts export files beside themselves; the copy is
        # thrown away), and its requirements read-only. Its outputs are moved to `outdir`
        # afterwards, after checks.
        workdir = Path(tempfile.mkdtemp(prefix=f"{BUILD_DIR_PREFIX}{os.getpid()}-"))
        os.chmod(workdir, 0o711)  # a build running under its own uid may pass through, not list
        buildout, scratch = workdir / "out", workdir / "tmp"
        copy = workdir / ("project" if req.project else "src")
        for folder in (buildout, scratch, copy):
            folder.mkdir()
        # As root, the build's writable folders are size-limited tmpfs: it cannot fill the worker's
        # disk or use up its inodes through them (elsewhere only RLIMIT_FSIZE per file holds).
        # The copy's tmpfs has room for the largest project plus as much again for what it writes.
        inodes = {copy: MAX_PROJECT_FILES + 10000}
        capped = [
            d
            for d in (buildout, scratch, copy)
            if self.policy.enabled and sandbox.mount_tmpfs(d, limits.output_mb * 2, inodes.get(d, 10000))
        ]
        os.chmod(copy, 0o700)  # the build's uid gets it (sandbox.enter); no one else may pass
        try:
            root, source = _place_source(req, copy, limits)
            _open_to_owner(copy)
            job = _job(source, buildout, workdir, req, limits, root)
            job["sandbox"] = {
                "policy": {**asdict(self.policy), "procs": limits.procs, "tmp_mb": 2 * limits.output_mb},
                "read_only": sandbox.read_only_paths([req.env] if req.env else []),
                # tmp/ last: the sandbox takes the last writable folder for the build's TMPDIR.
                "writable": [str(buildout), str(copy.resolve()), str(scratch)],
                "scratch": str(workdir),
            }
            exitcode, timed_out = self._run(job, limits)
            _collect(buildout, outdir)
            return _outcome(
                _job(source, outdir, workdir, req, limits, root),
                exitcode,
                timed_out,
                limits,
                closed=self._closed,
            )
        finally:
            for folder in capped:
                sandbox.unmount(folder)
            _remove_tree(workdir)

    def inspect(self, req: CadRequest, limits: CadLimits | None = None) -> list[dict[str, Any]]:
        """Run the script in the same sandbox, and list what it shows, without meshing anything:
        {"name", "kind", "solids", "prints", "color"?} per shown object. Raises CadError."""
        req = CadRequest(**{**asdict(req), "inspect": True})
        return self.build(req, limits).shown

    def close(self) -> None:
        """Stop running builds and, if no other runner uses it, the fork server."""
        global _server_users
        with self._lock:
            was_started, self._started, self._closed = self._started, False, True
            running = list(self._running)
        for proc in running:
            self._stop(proc)
        if was_started:
            with _server_lock:
                _server_users -= 1
                if _server_users == 0:
                    _stop_forkserver()

    def _run(self, job: dict[str, Any], limits: CadLimits) -> tuple[int | None, bool]:
        proc = _BuildProcess(target=_child_main, args=(job,), name="cad-build", daemon=True)
        # Starting and reaping hold the lock: Process.start() polls every other live child, and two
        # threads reading one child's exit status would leave one of them with a bogus 255.
        with self._lock:
            if self._closed:
                raise CadError("crash", "the CAD runner was closed")
            _start_process(proc)
            self._running.add(proc)
        try:
            try:
                timed_out = not wait([proc.sentinel], limits.wall_s)
            except BaseException:  # e.g. Dramatiq's time limit, raised asynchronously in this thread
                self._stop(proc)
                raise
            if timed_out:
                self._stop(proc)
                wait([proc.sentinel], KILL_GRACE_S)
            else:
                # Processes the script left behind are still in the group. The group keeps its id
                # reserved while it has members, so this cannot hit an unrelated process group.
                _kill_group(proc.pid, fallback_to_pid=False)
            if self._needs_uid_sweep() and proc.pid is not None:
                _kill_uid(self.policy.uid_base + proc.pid)
            with self._lock:
                proc.join(0)
                return proc.exitcode, timed_out
        finally:
            with self._lock:
                self._running.discard(proc)
            if proc.exitcode is not None:
                proc.close()

    def _stop(self, proc: multiprocessing.process.BaseProcess) -> None:
        """Kill a build before its end. Where it runs under a reaper (sandbox._fork_under_reaper),
        the reaper is asked first: it kills what left the group, which a group kill would orphan."""
        if self._has_reaper() and proc.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
            wait([proc.sentinel], REAPER_GRACE_S)
        _kill_group(proc.pid)

    def _has_reaper(self) -> bool:
        """Whether builds run under a reaper: sandboxed, without a PID namespace or a uid of their own."""
        if not self.policy.enabled or self.sandbox is None:
            return False
        active = {layer.name for layer in self.sandbox.layers if layer.active}
        own_uid = os.geteuid() == 0 and self.policy.wants("identity")
        return "pidns" not in active and not own_uid

    def _needs_uid_sweep(self) -> bool:
        """Without a PID namespace, a build's processes that left its group must be found by uid."""
        if os.geteuid() != 0 or not self.policy.wants("identity") or self.sandbox is None:
            return False
        return not any(layer.name == "pidns" and layer.active for layer in self.sandbox.layers)


def _kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of `uid` (a build's own, as root), until none is left."""
    for _ in range(rounds):
        found = False
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
                if int(line.split()[1]) == uid:
                    found = True
                    os.kill(int(status.parent.name), signal.SIGKILL)
            except (OSError, StopIteration, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


class _LeanPopen(popen_forkserver.Popen):
    """The stock forkserver launch, minus re-running the parent's `__main__` in every child.

    multiprocessing re-imports the main script in each child so that targets defined there unpickle.
    Ours lives in this module, and re-running a worker's (or pytest's) main script per build would be
    slow at best. A copy of `popen_forkserver.Popen._launch` (CPython 3.11-3.13) with two keys dropped.
    """

    _fds: list[int]  # set by popen_forkserver.Popen.__init__ before it calls _launch

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        # Nothing of the worker's a build needs to see: its command line, its multiprocessing key.
        prep_data.pop("sys_argv", None)
        prep_data.pop("authkey", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)  # the child watches this to notice the parent is gone
        self.finalizer = util.Finalize(self, _close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def _close_fds(*fds: int) -> None:
    # multiprocessing.util.close_fds, which typeshed does not declare.
    for fd in fds:
        os.close(fd)


class _BuildProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _LeanPopen:
        return _LeanPopen(process_obj)


def _start_process(proc: _BuildProcess) -> None:
    # A server that died between our check and the fork (a build can kill it) fails the
    # connection; one retry goes through _ensure_forkserver(), which restarts it scrubbed.
    for attempt in (1, 2):
        with _server_lock:
            _ensure_forkserver()
        try:
            proc.start()
            return
        except (OSError, EOFError) as error:
            if attempt == 2:
                raise CadError("crash", f"could not start the build process: {error!r}") from error


def _child_main(job: dict[str, Any]) -> None:
    # Pickled by reference instead of cad_child.run_child, so the parent never imports build123d.
    from workers.cad_child import run_child

    run_child(job)


MAX_PROJECT_FILES = 20_000


def _unpack(archive: Path, dest: Path, limits: CadLimits) -> Path:
    """Extract a project archive into the build's private folder: plain files and folders only.

    Written by hand rather than with tarfile's "data" filter, which Python releases before 3.11.13
    let links and long paths slip past (CVE-2025-4517 and friends): no member can be a link, so no
    path written here can lead out of `dest`.
    """
    budget, count = limits.output_mb << 20, 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                count += 1
                if count > MAX_PROJECT_FILES:
                    raise CadError("limit", f"the project holds more than {MAX_PROJECT_FILES} files")
                parts = _member_parts(member.name)
                if member.isdir():
                    dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    what = f"{member.name!r}, which is not a plain file (projects travel without links)"
                    raise CadError("entry", f"the project archive holds {what}")
                budget -= member.size
                if budget < 0:
                    raise CadError("limit", f"the project unpacks to more than {limits.output_mb} MB")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with open(fd, "wb") as out, source or io.BytesIO() as data:
                    shutil.copyfileobj(data, out)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise CadError("entry", f"the project archive cannot be unpacked: {exc}") from None
    return dest.resolve()


def _place_source(req: CadRequest, copy: Path, limits: CadLimits) -> tuple[Path | None, Path]:
    """Fill the build's copy: (the project's root or None for a lone script, the entry file)."""
    if req.project:
        root = _unpack(req.project, copy, limits)
        source = (root / req.source).resolve()
        if not source.is_file() or not source.is_relative_to(root):
            raise CadError("entry", f"no file {req.source} in the project")
        return root, source
    return None, _copy_lone_script(req.source.resolve(), copy, limits)


def _open_to_owner(copy: Path) -> None:
    """Let the build change and replace its copy's files (a log or an export from an earlier run
    may be among them): the copy's own folder is the build uid's alone (mode 0700), so inside it
    everything may be writable by all."""
    for folder, dirs, files in os.walk(copy):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777, follow_symlinks=False)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666, follow_symlinks=False)


def _member_parts(name: str) -> list[str]:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or any("\0" in p for p in parts):
        raise CadError("entry", f"the project archive holds a path that leads outside it: {name!r}")
    return parts


def _copy_lone_script(script: Path, dest: Path, limits: CadLimits) -> Path:
    """A script without a project brings the plain files beside it (its helper modules), no folders.

    Copied rather than shown in place: the folder may be one the build's uid cannot enter.
    """
    budget = limits.output_mb << 20
    siblings = sorted(p for p in script.parent.iterdir() if p.is_file() and not p.is_symlink())
    siblings = [p for p in siblings if p != script]
    for path in [script, *siblings]:
        size = path.stat().st_size
        if path != script and size > budget:
            continue
        budget -= size
        shutil.copyfile(path, dest / path.name)
    return dest / script.name


BUILD_DIR_PREFIX = "cad-build-"


def sweep_stale_build_folders(tmp: Path) -> None:
    """Unmount and remove build folders whose worker died (kill -9 leaves its tmpfs mounts behind).

    Each folder is named `cad-build-<worker pid>-…`; a pid that no longer runs marks it stale.
    """
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        mounts = []
    for folder in tmp.glob(f"{BUILD_DIR_PREFIX}*-*"):
        owner = folder.name[len(BUILD_DIR_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        for point in mounts:
            if point.startswith(f"{folder}/"):
                sandbox.unmount(Path(point))
        _remove_tree(folder)


def _remove_tree(path: Path) -> None:
    """The build's folder, however the build left it: too deep for shutil.rmtree's recursion, or
    with folders it made unwritable (a worker that is not root shares the build's uid)."""
    with contextlib.suppress(RecursionError):
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        for argv in (
            ["chmod", "-R", "u+rwx", "--", str(path)],
            ["rm", "-rf", "--one-file-system", "--", str(path)],
        ):
            subprocess.run(argv, check=False, timeout=600, capture_output=True)


def _collect(buildout: Path, outdir: Path) -> None:
    """Copy what the build wrote to `outdir`: regular files only, read through a descriptor.

    The build's uid owns its out/ folder and could leave a link there (to /etc/shadow, say) for the
    worker to upload; opening with O_NOFOLLOW and checking the open file leaves no window to swap it.
    """
    for name in OUTPUT_NAMES:
        try:
            fd = os.open(buildout / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # absent, or a link
        with open(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                continue
            with open(outdir / name, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)


def _job(
    source: Path, outdir: Path, workdir: Path, req: CadRequest, limits: CadLimits, root: Path | None
) -> dict[str, Any]:
    return {
        "source": str(source),
        "project_root": str(root) if root else None,
        "env": str(req.env) if req.env else None,
        "entry": req.entry,
        "params": {str(k): v for k, v in req.params.items()},
        "workdir": str(workdir),
        "stl": str(outdir / STL_NAME),
        "threemf": str(outdir / THREEMF_NAME),
        "step": str(outdir / STEP_NAME) if req.step else None,
        "preview": str(outdir / PREVIEW_NAME),
        "preview_small": str(outdir / PREVIEW_SMALL_NAME),
        "result": str(outdir / RESULT_NAME),
        "log": str(outdir / LOG_NAME),
        "trace": str(workdir / ".faulthandler"),
        "limits": asdict(limits),
        "inspect": req.inspect,
    }


# --------------------------------------------------------------------------------------------------
# The fork server


def _ensure_forkserver() -> None:
    """Start the fork server if it is not running, with the worker's secrets out of its environment.

    Its environment is fixed at exec time and readable at /proc/<pid>/environ by every child, so the
    secrets are removed from os.environ only for the instant it is started. Caller holds _server_lock.
    """
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is not None and _server_alive(pid):
        return
    with _scrubbed_environ():
        forkserver.ensure_running()


def _server_alive(pid: int) -> bool:
    """Whether the fork server still serves; if it is dying, wait until ensure_running() can see it.

    A build can kill the server. Its exit closes our status pipe before it becomes a zombie, and in
    that window ensure_running() would still call it alive, then restart it unscrubbed on the next
    fork. Waiting for the zombie (without reaping it) hands the restart to _ensure_forkserver().
    """
    deadline = time.monotonic() + DYING_SERVER_WAIT_S
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False
        if not _exiting(pid) or time.monotonic() > deadline:
            return True
        time.sleep(0.005)


def _exiting(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return bool(int(fields[6]) & PF_EXITING)  # fields[6] is field 9, the kernel's task flags


def _warm_up() -> None:
    """Wait until the fork server has imported build123d: it serves its first fork only after that."""
    proc = _BuildProcess(target=_check_preloaded, name="cad-warm-up", daemon=True)
    proc.start()
    proc.join(WARM_UP_TIMEOUT_S)
    if proc.exitcode != 0:
        _kill_group(proc.pid)
        raise RuntimeError(f"the CAD fork server could not import {', '.join(PRELOAD)}")
    proc.close()


def _check_preloaded() -> None:
    # The fork server swallows ImportErrors of preloaded modules; builds would then import per child.
    if not all(name in sys.modules for name in PRELOAD):
        os._exit(1)


def _stop_forkserver() -> None:
    """Free the fork server's ~400 MB. Private API, so best effort."""
    server = forkserver._forkserver
    pid, stop = getattr(server, "_forkserver_pid", None), getattr(server, "_stop", None)
    if pid is None or stop is None:
        return
    # _stop() alone waits for every holder of the server's "alive" pipe, which includes any
    # process a build left behind; terminating the server first makes the wait short.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    stop()


def _is_secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith("FARM_") or any(marker in upper for marker in SECRET_MARKERS)


@contextlib.contextmanager
def _scrubbed_environ() -> Iterator[None]:
    # For the few milliseconds of the spawn, other threads of the worker do not see the secrets
    # either; that happens at start-up and after a fork server death only.
    saved = {name: value for name, value in os.environ.items() if _is_secret(name)}
    added = {k: v for k, v in FORKSERVER_ENV.items() if k not in os.environ}
    for name in saved:
        del os.environ[name]
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _kill_group(pid: int | None, fallback_to_pid: bool = True) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        if fallback_to_pid:  # killed before its setpgrp() ran
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    except PermissionError:
        pass


# --------------------------------------------------------------------------------------------------
# Reading the outcome


def _outcome(
    job: dict[str, Any], exitcode: int | None, timed_out: bool, limits: CadLimits, closed: bool
) -> CadResult:
    source, trace = Path(job["source"]), Path(job["trace"])
    where = _last_user_frame(trace, Path(job["project_root"] or source.parent))
    cpu_dump = _has_cpu_dump(trace)
    if timed_out:
        message = f"the build ran longer than the {limits.wall_s:g} s wall-clock limit and was stopped"
        raise CadError("limit", message + where)
    result = _read_result(Path(job["result"]))
    if result is not None and exitcode == 0:
        if not result.get("ok"):
            raise CadError(str(result.get("kind", "exception"))[:20], str(result.get("message", ""))[:4000])
        if job.get("inspect"):
            return _inspected(job, result)
        try:
            return CadResult(
                stl=Path(job["stl"]),
                threemf=Path(job["threemf"]),
                bbox=(_point(result["bbox"][0]), _point(result["bbox"][1])),
                volume=float(result["volume"]),
                objects=int(result["objects"]),
                log=Path(job["log"]),
                warnings=[str(w) for w in result.get("warnings", [])],
                step=Path(job["step"]) if job["step"] else None,
                preview=Path(job["preview"]),
                preview_small=Path(job["preview_small"]),
                mesh=dict(result.get("mesh") or {}),
                shown=_shown(result),
                skipped=[str(s) for s in result.get("skipped", [])],
            )
        except (KeyError, TypeError, ValueError, IndexError):  # written by the build: as hostile as it
            raise CadError("crash", "the build left a result that cannot be read") from None
    if closed:
        raise CadError("crash", "the build was stopped because the CAD runner closed")
    raise _exit_error(exitcode, limits, where, cpu_dump, Path(job["log"]))


def _shown(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The build's list of shown objects, checked: written by the build, as hostile as it."""
    out = []
    for item in result.get("shown") or []:
        entry: dict[str, Any] = {
            "name": str(item["name"])[:200],
            "kind": str(item["kind"])[:100],
            "solids": int(item["solids"]),
            "prints": bool(item["prints"]),
        }
        if item.get("color") is not None:
            entry["color"] = [float(c) for c in item["color"]][:4]
        out.append(entry)
    return out


def _inspected(job: dict[str, Any], result: dict[str, Any]) -> CadResult:
    """An inspect run's result: what was shown, and no files."""
    try:
        return CadResult(
            stl=Path(job["stl"]),
            threemf=Path(job["threemf"]),
            bbox=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
            volume=0.0,
            objects=0,
            log=Path(job["log"]),
            shown=_shown(result),
            skipped=[str(s) for s in result.get("skipped", [])],
        )
    except (KeyError, TypeError, ValueError, IndexError):
        raise CadError("crash", "the build left a result that cannot be read") from None


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_tail(path, 1 << 20))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _point(values: list[float]) -> Point:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


# What C/C++ code prints when an allocation fails under RLIMIT_AS before it aborts or exits.
_OUT_OF_MEMORY = ("std::bad_alloc", "cannot allocate memory", "Standard_OutOfMemory")

_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "aborted",
    signal.SIGFPE: "floating-point exception",
    signal.SIGILL: "illegal instruction",
}


def _exit_error(exitcode: int | None, limits: CadLimits, where: str, cpu_dump: bool, log: Path) -> CadError:
    if exitcode is None:
        return CadError("crash", "the build could not be stopped")
    if exitcode == -signal.SIGXCPU or (exitcode == -signal.SIGKILL and cpu_dump):
        return CadError(
            "limit", f"the build used more than {limits.cpu_s} s of CPU time and was stopped{where}"
        )
    if exitcode == -signal.SIGKILL:
        return CadError("crash", f"the build was killed (SIGKILL); the host may be out of memory{where}")
    if exitcode == -signal.SIGXFSZ:
        return CadError("limit", f"the build wrote a file larger than the {limits.output_mb} MB limit{where}")
    if any(marker in _tail(log) for marker in _OUT_OF_MEMORY):
        return CadError("limit", f"the build used more than {limits.memory_mb} MB of memory{where}")
    if exitcode < 0:
        signum = -exitcode
        name = _SIGNAL_NAMES.get(signum) or (signal.strsignal(signum) or "unknown signal").lower()
        return CadError("crash", f"the build crashed (signal {signum}, {name}){where}")
    return CadError("crash", f"the build exited with status {exitcode} without a result{where}")


def _tail(path: Path, size: int = 65536) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with open(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return ""
        f.seek(max(0, info.st_size - size))
        return f.read(size).decode("utf-8", "replace")


# faulthandler output: a dump starts with one of these lines, then `  File "...", line N in func`.
_DUMP_START = re.compile(r"^(Fatal Python error|Timeout \(|Stack \()")
_FRAME = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+) in (?P<func>.+)$')


def _last_user_frame(trace: Path, root: Path) -> str:
    """` (at part.py, line 3, in loop)`: the innermost frame of the user's files in the last dump."""
    lines = _tail(trace).splitlines()
    starts = [i for i, line in enumerate(lines) if _DUMP_START.match(line)]
    for line in lines[starts[-1] :] if starts else []:
        frame = _FRAME.match(line)
        if frame and _is_user_file(frame["file"], root):
            relative = os.path.relpath(frame["file"], root)
            return f" (at {relative}, line {frame['line']}, in {frame['func']})"
    return ""


def _is_user_file(filename: str, root: Path) -> bool:
    path = os.path.realpath(filename)
    library = (os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), os.path.dirname(__file__))
    return path.startswith(f"{root}{os.sep}") and not any(
        path.startswith(f"{lib}{os.sep}") for lib in library
    )


def _has_cpu_dump(trace: Path) -> bool:
    # A bare "Stack (" dump comes from the SIGXCPU (or SIGXFSZ) handler; crash dumps open with
    # "Fatal Python error". A SIGKILL after such a dump is the CPU hard limit, not the OOM killer.
    lines = _tail(trace).splitlines()
    return any(
        line.startswith("Stack (")
        and not any(p.startswith("Fatal Python error") for p in lines[max(0, i - 2) : i])
        for i, line in enumerate(lines)
    )
