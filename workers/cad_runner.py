"""Parent side of CAD builds: one sandboxed child per build, forked from a warm fork server.

Importing build123d costs ~4 s and ~400 MB, so a fork server imports it once and every build forks
from it. The parent imports no CAD code: it starts the child, enforces the wall clock, and turns the
child's `result.json` or its exit status into a `CadResult` or a `CadError`.

The request and result types are in `cad_types`, the build's folders in `cad_folders`, and the
reading of how a build ended in `cad_outcome`.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from pathlib import Path
from typing import Any

from workers import sandbox, sandbox_probe
from workers.cad_folders import (
    BUILD_DIR_PREFIX,
    MAX_PROJECT_FILES,
    collect,
    open_to_owner,
    place_source,
    remove_tree,
    sweep_stale_build_folders,
)
from workers.cad_outcome import outcome
from workers.cad_types import (
    LOG_NAME,
    OUTPUT_NAMES,
    PREVIEW_NAME,
    PREVIEW_SMALL_NAME,
    RESULT_NAME,
    STEP_NAME,
    STL_NAME,
    THREEMF_NAME,
    CadError,
    CadLimits,
    CadRequest,
    CadResult,
)

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
            root, source = place_source(req, copy, limits)
            open_to_owner(copy)
            job = _job(source, buildout, workdir, req, limits, root)
            job["sandbox"] = {
                "policy": {**asdict(self.policy), "procs": limits.procs, "tmp_mb": 2 * limits.output_mb},
                "read_only": sandbox.read_only_paths([req.env] if req.env else []),
                # tmp/ last: the sandbox takes the last writable folder for the build's TMPDIR.
                "writable": [str(buildout), str(copy.resolve()), str(scratch)],
                "scratch": str(workdir),
            }
            exitcode, timed_out = self._run(job, limits)
            collect(buildout, outdir)
            return outcome(
                _job(source, outdir, workdir, req, limits, root),
                exitcode,
                timed_out,
                limits,
                closed=self._closed,
            )
        finally:
            for folder in capped:
                sandbox.unmount(folder)
            remove_tree(workdir)

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
    from workers.cad_child import run_child  # lazy: build123d, in the fork server only

    run_child(job)


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
