"""The inside of one CAD build: a throwaway child forked from the warm fork server.

`run_child` locks the process down (process group, resource limits, private cwd, bare environment),
runs the user's script (`cad_script`), finds what it built, writes the meshes and a small
`result.json`, and exits. Everything the parent learns comes from that file or from the exit
status; nothing is pickled back.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import json
import os
import resource
import signal
import sys
import time
import warnings
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, TextIO

# Imported here so that the fork server pays for it once and every build starts warm.
import build123d as bd

from farm.core.mesh import (
    MeshProblem,
    MeshReport,
    check_mesh,
    point,
    read_stl,
    snap_near_zero,
    write_previews,
)
from workers.cad_script import BuildFailure, UserScript, entry_name, resolve
from workers.sandbox import Policy, View, enter
from workers.sandbox_libc import SandboxError
from workers.scene import Printed, Scene, sort_scene
from workers.threemf import MeshObject, split_by_object, write_3mf
from workers.viewer import Viewer

KEEP_ENV = ("PATH", "HOME", "LANG", "TMPDIR")
# What a build writes: paths in the job; "step" only when the submitter asked for it.
OUTPUTS = ("stl", "threemf", "step", "preview", "preview_small")
STL_TOLERANCE = 0.01
ANGULAR_TOLERANCE = 0.1
MAX_MESSAGE = 4000
OPEN_FILES = 512  # with memfd and SysV shared memory refused, this bounds what a build keeps open
PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------------------------------
# Process set-up


def run_child(job: dict[str, Any]) -> None:
    """Process target. `job` holds plain data only: paths, entry, params and limits."""
    os.setpgrp()  # first: the parent's timeout kills this whole group, grandchildren included
    _die_with_parent()
    _release_forkserver()
    _redirect_output(Path(job["log"]))
    trace = open(job["trace"], "w")  # noqa: SIM115 - open for faulthandler until the process ends
    _close_inherited_fds(keep=trace.fileno())
    _apply_limits(job["limits"])
    # A project runs from its root, so that relative paths in it mean what they mean at home.
    cwd = job.get("project_root") or str(Path(job["source"]).parent)
    try:
        _enter_sandbox(job, cwd)
    except (SandboxError, OSError) as error:
        message = f"the build's sandbox could not be set up on this worker: {error}"
        _write_json(Path(job["result"]), {"ok": False, "kind": "crash", "message": message})
        os._exit(0)
    # After the sandbox's forks: the wall-clock dump runs in a thread, and threads do not survive a fork.
    _enable_tracebacks(trace, float(job["limits"]["wall_s"]))
    for name in list(os.environ):
        if name not in KEEP_ENV:
            del os.environ[name]
    try:
        outputs = {name: Path(job[name]) for name in OUTPUTS if job.get(name)}
        summary = build(
            Path(job["source"]),
            outputs,
            job.get("entry"),
            dict(job.get("params") or {}),
            memory_mb=int(job["limits"]["memory_mb"]),
            project_root=Path(job["project_root"]) if job.get("project_root") else None,
            env=Path(job["env"]) if job.get("env") else None,
            inspect_only=bool(job.get("inspect")),
        )
        result: dict[str, Any] = {"ok": True, **summary}
    except BuildFailure as failure:
        result = {"ok": False, "kind": failure.kind, "message": failure.message[:MAX_MESSAGE]}
    _write_json(Path(job["result"]), result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: user atexit hooks and stray non-daemon threads must not hold the exit.
    os._exit(0)


def _enter_sandbox(job: dict[str, Any], cwd: str) -> None:
    walls = job.get("sandbox")
    if not walls:
        os.chdir(cwd)
        return
    view = View(walls["read_only"], walls["writable"], cwd=cwd, scratch=walls["scratch"])
    enter(Policy.from_dict(walls["policy"]), view)


def _close_inherited_fds(keep: int) -> None:
    """Close what the fork server handed down (its job pipe, the root resource tracker's pipe, ...).

    A build writing to the resource tracker could make it unlink the worker's shared memory.
    """
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    with contextlib.suppress(ImportError, AttributeError):
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._fd = None  # type: ignore[attr-defined]  # private; no public way


def _die_with_parent() -> None:
    # The fork server exits when the worker dies; this makes a still-running build follow it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _release_forkserver() -> None:
    # The fork server runs until every copy of its "alive" pipe is closed, and each child inherits
    # one. Dropping ours lets the server exit when the worker dies, even while this build hangs,
    # and the death signal above then takes this build with it.
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[attr-defined]  # private; read by getattr above


def _redirect_output(log: Path) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _enable_tracebacks(stream: TextIO, wall_s: float) -> None:
    """Dump the Python stack on a crash, at the CPU and file-size limits and before the wall-clock kill.

    The parent reads the last dump to tell the user which line of their script was running.
    """
    faulthandler.enable(file=stream, all_threads=False)
    faulthandler.register(signal.SIGXCPU, file=stream, all_threads=False)
    # Python ignores SIGXFSZ, and C++ exporters ignore failed writes: dying is the only reliable report.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    faulthandler.register(signal.SIGXFSZ, file=stream, all_threads=False, chain=True)
    faulthandler.dump_traceback_later(max(wall_s - 0.5, wall_s * 0.8), file=stream)


def _apply_limits(limits: dict[str, Any]) -> None:
    mb = 1024 * 1024
    _set_limit(resource.RLIMIT_AS, int(limits["memory_mb"]) * mb)
    # SIGXCPU at the soft limit only dumps the stack (see above); SIGKILL follows a second later.
    _set_limit(resource.RLIMIT_CPU, int(limits["cpu_s"]), grace=1)
    _set_limit(resource.RLIMIT_FSIZE, int(limits["output_mb"]) * mb)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_NOFILE, OPEN_FILES)
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC, and it counts every task of the real uid
        _set_limit(resource.RLIMIT_NPROC, _tasks_of_uid(os.getuid()) + int(limits["procs"]))


def _set_limit(which: int, soft: int, grace: int = 0) -> None:
    _, hard = resource.getrlimit(which)
    cap = hard if hard != resource.RLIM_INFINITY else soft + grace
    resource.setrlimit(which, (min(soft, cap), min(soft + grace, cap)))


def _tasks_of_uid(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
    return count


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent never sees half a file


# --------------------------------------------------------------------------------------------------
# The build


def build(
    source: Path,
    outputs: dict[str, Path],
    entry: str | None,
    params: dict[str, Any],
    memory_mb: int,
    project_root: Path | None = None,
    env: Path | None = None,
    inspect_only: bool = False,
) -> dict[str, Any]:
    """Run the script, resolve what it built and export it (or, inspect_only, list what it
    shows). Raises BuildFailure."""
    script = UserScript(source, project_root, env)
    viewer = Viewer()
    with script.reporting_errors(memory_mb):
        namespace = script.execute(viewer)
        shown = resolve(script, namespace, viewer, entry, params)
        scene = sort_scene(shown, default_name=entry_name(entry) or source.stem)
        if inspect_only:
            return {"shown": scene.listing, "skipped": [f"{n} ({k})" for n, k in scene.skipped]}
        if not scene.printed:
            raise BuildFailure("empty", nothing_to_print(scene, script.name))
        return export(scene, outputs)


# --------------------------------------------------------------------------------------------------
# Shapes and export


def nothing_to_print(scene: Scene, filename: str) -> str:
    if not scene.listing:
        return f"{filename} produced no shape (the result was empty or None)"
    return (
        f"{filename} shows nothing solid to print: {scene.describe_skipped()}; "
        "show a Part, a BuildPart or a Solid"
    )


def export(scene: Scene, outputs: dict[str, Path]) -> dict[str, Any]:
    """One combined binary STL, one 3MF object per solid (named and coloured as shown), STEP when
    asked, then the mesh checks and the previews; returns the summary for result.json."""
    objects = scene.printed
    solids = [p.solid for p in objects]
    combined = solids[0] if len(solids) == 1 else bd.Compound(solids)
    skipped = [f"{name} ({kind})" for name, kind in scene.skipped]
    if skipped:
        print(f"skipped: {', '.join(skipped)}")  # into the build's log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not bd.export_stl(
            combined, outputs["stl"], tolerance=STL_TOLERANCE, angular_tolerance=ANGULAR_TOLERANCE
        ):
            raise BuildFailure("exception", "writing the STL failed")
        tris = snap_near_zero(read_stl(outputs["stl"]))
        # The STL holds each solid's faces in turn: cut back into solids, each is judged and written
        # on its own (solids that touch, like the boards of a stud wall, each stay closed).
        blocks = split_by_object(tris, solids) if len(solids) > 1 else [tris]
        mesh = _check(tris, blocks, objects)
        if blocks is not None:
            written = [
                MeshObject(block, p.name, p.name, p.color) for block, p in zip(blocks, objects, strict=True)
            ]
        else:  # the STL could not be cut: one object, as the STL is
            written = [MeshObject(tris, objects[0].name if len(objects) == 1 else None)]
        write_3mf(outputs["threemf"], written)
        if "step" in outputs:
            _export_step(combined, objects, outputs["step"])
    mesh.update(_previews(tris, outputs))
    box = combined.bounding_box()
    notes = sorted({str(w.message) for w in caught})
    return {
        "objects": len(objects),
        "bbox": [[box.min.X, box.min.Y, box.min.Z], [box.max.X, box.max.Y, box.max.Z]],
        "volume": sum(solid.volume for solid in solids),
        "mesh": mesh,
        "warnings": ([f"skipped: {', '.join(skipped)}"] if skipped else []) + notes,
        "shown": scene.listing,
        "skipped": skipped,
    }


def _export_step(combined: bd.Shape, objects: list[Printed], path: Path) -> None:
    # Several objects go in as one compound whose children carry the 3MF's names.
    if len(objects) > 1:
        for printed in objects:
            printed.solid.label = printed.name or ""
        combined = bd.Compound(children=[p.solid for p in objects])
    if not bd.export_step(combined, path):
        raise BuildFailure("exception", "writing the STEP file failed")


def _check(tris: Any, blocks: list[Any] | None, objects: list[Printed]) -> dict[str, Any]:
    """The report of the STL's triangles (what the slicer will read), solid by solid; BuildFailure
    if one would not print, naming it when there are several."""
    started = time.perf_counter()
    reports = []
    for i, block in enumerate(blocks if blocks is not None else [tris], start=1):
        try:
            reports.append(check_mesh(block))
        except MeshProblem as problem:
            where = f"{_which_solid(objects, i)}: " if blocks is not None and len(objects) > 1 else ""
            raise BuildFailure("mesh", f"{where}{problem}") from None
    low, high = tris.min(axis=(0, 1)), tris.max(axis=(0, 1))
    report = MeshReport(
        triangles=len(tris),
        open_edges=sum(r.open_edges for r in reports),
        nonmanifold_edges=sum(r.nonmanifold_edges for r in reports),
        bbox=(point(low), point(high)),
    )
    if report.nonmanifold_edges:
        warnings.warn(
            f"the mesh has {report.nonmanifold_edges} edges shared by more than two triangles: "
            "a solid touches itself along an edge; slicers print that, but it may come out weak there",
            stacklevel=1,
        )
    return {**report.to_json(), "check_ms": round((time.perf_counter() - started) * 1000, 1)}


def _which_solid(objects: list[Printed], index: int) -> str:
    """`solid 2 of 3 ("lid", x 0 to 10, y -5 to 5, z 0 to 2 mm)`: which object, and where."""
    printed = objects[index - 1]
    try:
        box = printed.solid.bounding_box()
        where = ", ".join(
            f"{axis} {lo:.4g} to {hi:.4g}" for axis, lo, hi in zip("xyz", box.min, box.max, strict=True)
        )
        where += " mm"
    except Exception:  # a shape too broken to measure: its index still says which
        where = "no bounding box"
    named = f'"{printed.name}", ' if printed.name else ""
    return f"solid {index} of {len(objects)} ({named}{where})"


def _previews(tris: Any, outputs: dict[str, Path]) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = {256: outputs.get("preview"), 96: outputs.get("preview_small")}
    write_previews(tris, {size: path for size, path in sizes.items() if path is not None})
    return {"preview_ms": round((time.perf_counter() - started) * 1000, 1)}


# Runs once, in the fork server, after the preloads: park build123d's ~10^6 objects in the permanent
# generation. Otherwise a child's first full collection walks them all, dirtying every page it
# shares with the server (~150 ms of copy-on-write at a random moment of the build).
gc.collect()
gc.freeze()
