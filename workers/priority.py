"""Batch priority: CAD builds and slicing yield the CPU and the disk to the coordinator and agents.

`farm worker` lowers every thread of its own process once, at start; what it starts afterwards (the
CAD fork server, every build forked from it, PrusaSlicer) inherits the nice value, the scheduling
policy and the I/O priority, so nothing inside the sandbox has to make a call. Linux only; elsewhere
the nice value alone. A process may always lower itself without privileges; raising itself back
needs RLIMIT_NICE (nice, policy) or nothing at all (the I/O class), so the sandbox's seccomp filter
refuses ioprio_set to builds.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("farm.worker")

IoPriority = Literal["idle", "low", "normal"]
CpuPolicy = Literal["normal", "batch", "idle"]

# <linux/ioprio.h>
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 2, 3
IOPRIO_WHO_PROCESS = 1
IO_CLASSES = {0: "none", 1: "realtime", 2: "best-effort", 3: "idle"}
_SYS_IOPRIO = {"x86_64": (251, 252), "aarch64": (30, 31)}  # (ioprio_set, ioprio_get)
_IOPRIO_OF: dict[str, int | None] = {
    "idle": IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
    "low": (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7,  # best effort, lowest of its 8 levels
    "normal": None,
}
POLICIES = {os.SCHED_OTHER: "normal", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}
_POLICY_OF = {name: number for number, name in POLICIES.items()}


@dataclass(frozen=True)
class BatchPriority:
    nice: int = 10  # added to the nice value the worker was started with (as `nice -n`); 0: unchanged
    io: IoPriority = "idle"
    cpu: CpuPolicy = "normal"

    @property
    def off(self) -> bool:
        return self.nice == 0 and self.io == "normal" and self.cpu == "normal"


@dataclass(frozen=True)
class Observed:
    """One thread's priority as the kernel keeps it."""

    nice: int
    policy: str
    io_class: str
    io_level: int

    @property
    def io(self) -> str:
        return f"{self.io_class}/{self.io_level}" if self.io_class == "best-effort" else self.io_class


@functools.cache
def _syscall() -> Any:
    try:  # the C library this interpreter already runs on (find_library would start ldconfig)
        return ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None


def _ioprio_set(tid: int, value: int) -> None:
    numbers, call = _SYS_IOPRIO.get(platform.machine()), _syscall()
    if numbers is None or call is None:
        raise OSError(f"no ioprio_set on {platform.machine()}")
    if call(ctypes.c_long(numbers[0]), IOPRIO_WHO_PROCESS, tid, value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ioprio_get(tid: int = 0) -> tuple[str, int]:
    """(class, level) of a thread; a thread never set is "none" (best effort, from its nice value)."""
    numbers, call = _SYS_IOPRIO.get(platform.machine()), _syscall()
    if numbers is None or call is None:
        return "none", 0
    value = call(ctypes.c_long(numbers[1]), IOPRIO_WHO_PROCESS, tid)
    if value < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return IO_CLASSES.get(value >> IOPRIO_CLASS_SHIFT, "unknown"), value & 0xFF


def observe(pid: int, tid: int | None = None) -> Observed:
    """A process's (or one of its threads') priority, from /proc and ioprio_get; any user's process."""
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on
    io_class, io_level = ioprio_get(tid or pid)
    return Observed(int(fields[16]), POLICIES.get(int(fields[38]), fields[38]), io_class, io_level)


def _threads() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:  # no /proc: the calling thread only
        return [0]


def apply(priority: BatchPriority) -> list[str]:
    """Lower every thread of this process as asked; returns what could not be done (logged)."""
    if priority.off:
        return []
    steps: list[tuple[str, Callable[[int], None]]] = []
    if priority.nice:
        # Per thread on Linux (PRIO_PROCESS with a thread id); new threads inherit their creator's.
        steps.append((f"nice +{priority.nice}", lambda tid: _renice(tid, priority.nice)))
    if priority.cpu != "normal":
        policy = _POLICY_OF[priority.cpu]
        steps.append(
            (f"scheduling {priority.cpu}", lambda tid: os.sched_setscheduler(tid, policy, os.sched_param(0)))
        )
    value = _IOPRIO_OF[priority.io]
    if value is not None:
        steps.append((f"I/O priority {priority.io}", lambda tid: _ioprio_set(tid, value)))
    failed: set[str] = set()
    for tid in _threads():
        for what, step in steps:
            try:
                step(tid)
            except OSError as error:
                if error.errno != errno.ESRCH:  # ESRCH: the thread ended meanwhile
                    failed.add(f"{what}: {error.strerror or error}")
    if priority.nice:
        try:
            _renice_autogroup(priority.nice)
        except OSError as error:
            failed.add(f"autogroup nice +{priority.nice}: {error.strerror or error}")
    for what in sorted(failed):
        log.warning("could not lower this worker's priority (%s); builds run at the worker's", what)
    return sorted(failed)


def _renice_autogroup(increment: int) -> None:
    """With autogroup scheduling (sched_autogroup_enabled, most desktop and many server kernels)
    CPU is shared between sessions first and nice counts only within one: `farm up` starts each part
    in a session of its own, so the worker's nice alone would not put it below the coordinator. The
    session's autogroup gets the same nice, if this process leads that session (from a shell, the
    group holds the shell and whatever else it started, which must not be lowered with it)."""
    group = Path("/proc/self/autogroup")
    if os.getsid(0) != os.getpid() or not group.exists():
        return
    current = int(group.read_text().split()[-1])  # "/autogroup-42 nice 0"
    for _ in range(20):
        try:
            group.write_text(str(min(19, current + increment)))
            return
        except OSError as error:  # EAGAIN: the kernel takes one such change per 100 ms, system-wide
            if error.errno != errno.EAGAIN:
                raise
            time.sleep(0.1)


def _renice(tid: int, increment: int) -> None:
    # Relative, so the worker stays below a coordinator started at any nice value beside it.
    os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
