"""Reading how a CAD build ended: its `result.json`, or its exit status, log and faulthandler dump,
turned into a CadResult or a CadError that says what went wrong (and where in the user's code).

Everything read here was written by the build, so it is read as hostile: bounded, without
following links, and checked field by field.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from workers.cad_types import CadError, CadLimits, CadResult, Point


def outcome(
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
