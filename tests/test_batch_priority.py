"""On one box, CAD builds and slicing run below the coordinator and agents (workers/priority.py).

Against `farm up`: a design reports the priority its own build runs at, and tries to raise its
I/O priority back; PrusaSlicer is caught in /proc while it slices; the coordinator and agents are
read as the kernel keeps them.
"""

from __future__ import annotations

import errno
import json
import re
import threading
import time
from pathlib import Path

from tests.conftest import REPO, RunningFarm
from workers import priority

# Fails the build on purpose, with what the kernel says about the build's own process.
REPORTER = """\
import ctypes, os, platform
get, set_ = {"x86_64": (252, 251), "aarch64": (31, 30)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
io = libc.syscall(get, 1, 0)
raised = libc.syscall(set_, 1, 0, (2 << 13) | 0)  # best effort, level 0: above the worker's
why = ctypes.get_errno()
try:
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - 10)  # back up
    reniced = "yes"
except OSError as error:
    reniced = error.errno
raise RuntimeError(
    f"PRIORITY nice={os.getpriority(os.PRIO_PROCESS, 0)} policy={os.sched_getscheduler(0)} "
    f"io={io} raised={raised} errno={why} reniced={reniced} nonce={time_ns}"
)
"""
SETTINGS = priority.BatchPriority()  # the defaults farm up runs with


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])  # "/autogroup-42 nice 10"


def _threads_of(pid: int) -> list[priority.Observed]:
    return [priority.observe(pid, int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]


def test_builds_and_slicing_run_below_the_coordinator_and_agents(farm: RunningFarm, tmp_path: Path) -> None:
    up = json.loads((farm.data_dir / "farm-up.json").read_text())
    parts, base = up["children"], priority.observe(up["pid"]).nice  # `farm up` and what it starts
    batch = min(19, base + SETTINGS.nice)
    worker = parts["worker"]

    design = tmp_path / "reporter.py"
    design.write_text(REPORTER.replace("{time_ns}", str(time.time_ns())))
    code, build = farm.cli_json("submit", str(design), "--no-project", "--wait", timeout=300)
    assert code == 1 and build["stage"] == "failed", build  # type: ignore[call-overload]
    said = re.search(
        r"PRIORITY nice=(\d+) policy=(\d+) io=(-?\d+) raised=(-?\d+) errno=(\d+) reniced=(\w+)",
        json.dumps(build),
    )
    assert said, build
    nice, policy, io, raised, why = (int(v) for v in said.groups()[:5])
    assert nice == batch and SETTINGS.nice == 10
    assert io >> priority.IOPRIO_CLASS_SHIFT == priority.IOPRIO_CLASS_IDLE, io
    assert priority.POLICIES[policy] == SETTINGS.cpu
    # The build cannot climb back out of the idle I/O class: the seccomp filter refuses the call.
    assert (raised, why) == (-1, errno.EPERM)
    assert said.group(6) == str(errno.EACCES)  # nor back to nice 0: it holds no CAP_SYS_NICE

    # PrusaSlicer, caught in /proc while it slices a mesh for this run (a new infill: no cache hit).
    seen: dict[int, tuple[str, priority.Observed]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in _descendants(worker):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    seen.setdefault(pid, (comm, priority.observe(pid)))
                except OSError:
                    pass  # it ended
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        infill = str(11 + time.time_ns() % 80)
        argv = ["submit", str(REPO / "examples" / "cube.stl"), "--printer-model", "MINI", "--infill", infill]
        code, sliced = farm.cli_json(*argv, "--wait", timeout=300)
    finally:
        done.set()
        watcher.join()
    assert code == 0, sliced
    slicers = [seen_ for comm, seen_ in seen.values() if comm.startswith("prusa")]
    assert slicers, f"no PrusaSlicer seen under the worker: {seen}"
    for s in slicers:
        assert (s.nice, s.io_class, s.policy) == (batch, "idle", "normal"), s

    # Every thread of the worker and of its fork server: new threads inherit the creating thread's.
    for pid in [worker, *_descendants(worker)]:
        for t in _threads_of(pid):
            assert (t.nice, t.io_class) == (batch, "idle"), (pid, t)
    # Autogroup scheduling shares the CPU between sessions before nice counts: farm up starts each
    # part in a session of its own, so the worker's whole group must be lowered too.
    if Path("/proc/sys/kernel/sched_autogroup_enabled").exists():
        assert _autogroup_nice(worker) == batch
        assert _autogroup_nice(parts["coordinator"]) == base
    # The coordinator and each agent stay where they were started.
    normal = [pid for name, pid in parts.items() if name == "coordinator" or name.startswith("agent-")]
    assert len(normal) == 3, parts
    for pid in normal:
        for t in _threads_of(pid):
            assert (t.nice, t.policy) == (base, "normal") and t.io_class in ("none", "best-effort"), (pid, t)
