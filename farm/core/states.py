"""Every state a build, a job and a printer can be in, and the only moves allowed between them.

The API, the dispatcher, the workers' reports and the tests all go through `check_job_move`, so
a job can never, say, go from `done` back to `printing` because a late report arrived. What each
job move writes besides the state is in farm/coordinator/moves.py.

Imports nothing of the project: the printer agent, the drivers and the coordinator share it.
"""

from __future__ import annotations

from enum import StrEnum


class BuildStage(StrEnum):
    """Where a submitted design is on its way to G-code."""

    QUEUED = "queued"  # waiting for a CAD worker (meshes and G-code skip ahead)
    CAD = "cad"  # a CAD worker is running the code
    SLICING = "slicing"  # meshes exist; G-code is being made for each target printer model
    READY = "ready"  # at least one printer model has G-code; its jobs can be printed
    FAILED = "failed"  # nothing printable came out; `error` says why


class SliceState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class PrinterState(StrEnum):
    """What the farm needs to know about a printer, whatever its protocol calls it: what its
    driver reads, its agent's heartbeat says and the coordinator stores."""

    OFFLINE = "offline"  # not reachable: network down, powered off, wrong address
    IDLE = "idle"  # ready to accept and start a new job
    BUSY = "busy"  # reachable but doing something that is not our print (homing, a transfer, a menu)
    PRINTING = "printing"  # a print is running
    PAUSED = "paused"  # a print is paused and can be resumed
    FINISHED = "finished"  # the last print completed; the bed holds a part
    FAILED = "failed"  # the last print stopped early (cancelled or errored); see error_code/message
    ATTENTION = "attention"  # the printer waits for a person (a dialog, filament runout, a model mismatch)


# A print ended on the printer: its part (or what is left of it) is on the bed.
PRINT_ENDED = frozenset({PrinterState.FINISHED, PrinterState.FAILED})
# What an agent claims from. The coordinator decides whether the bed is clear (Printer.bed_clear),
# so a printer showing a stopped print can take the next job.
READY_FOR_WORK = frozenset({PrinterState.IDLE, *PRINT_ENDED})


class JobState(StrEnum):
    """One physical print of one copy."""

    WAITING = "waiting"  # its build is still being made
    READY = "ready"  # G-code exists; waiting for a matching idle printer
    CLAIMED = "claimed"  # an agent holds a lease on it and is fetching the G-code
    UPLOADING = "uploading"  # the agent is sending it to the printer
    PRINTING = "printing"
    DONE = "done"
    FAILED = "failed"  # `error` says why
    CANCELLED = "cancelled"


TERMINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
LEASED_JOB_STATES = frozenset({JobState.CLAIMED, JobState.UPLOADING, JobState.PRINTING})

_JOB_MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({JobState.READY, JobState.FAILED, JobState.CANCELLED}),
    JobState.READY: frozenset({JobState.CLAIMED, JobState.FAILED, JobState.CANCELLED}),
    # A claim that never reached the printer may go back to the queue. Straight to printing: an agent
    # that crashed after uploading finds, on restart, that the printer is already printing it.
    JobState.CLAIMED: frozenset(
        {JobState.UPLOADING, JobState.PRINTING, JobState.READY, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.UPLOADING: frozenset({JobState.PRINTING, JobState.READY, JobState.FAILED, JobState.CANCELLED}),
    JobState.PRINTING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED}),
    JobState.DONE: frozenset(),
    # An operator's retry: straight back to the queue when its G-code exists; else it waits while
    # what failed (the CAD run or its slices) is made again.
    JobState.FAILED: frozenset({JobState.READY, JobState.WAITING}),
    JobState.CANCELLED: frozenset(),
}


_BUILD_MOVES: dict[BuildStage, frozenset[BuildStage]] = {
    BuildStage.QUEUED: frozenset({BuildStage.CAD, BuildStage.SLICING, BuildStage.FAILED}),
    # Back to queued: its CAD worker's lease ran out (the worker died); the build is sent again.
    # Ready straight from CAD: a preview (no jobs) has nothing to slice.
    BuildStage.CAD: frozenset({BuildStage.QUEUED, BuildStage.SLICING, BuildStage.READY, BuildStage.FAILED}),
    BuildStage.SLICING: frozenset({BuildStage.READY, BuildStage.FAILED}),
    BuildStage.READY: frozenset(),  # a retried plate's slices are made again; the build stays ready
    # An operator retried one of its jobs: the CAD run again (no mesh came out), or its slices.
    BuildStage.FAILED: frozenset({BuildStage.QUEUED, BuildStage.SLICING}),
}


class InvalidMove(ValueError):
    pass


def check_build_move(current: BuildStage | str, new: BuildStage | str) -> BuildStage:
    """Return the new stage, or raise InvalidMove."""
    current, new = BuildStage(current), BuildStage(new)
    if current != new and new not in _BUILD_MOVES[current]:
        raise InvalidMove(f"a build cannot go from {current} to {new}")
    return new


def can_move(current: JobState | str, new: JobState | str) -> bool:
    current, new = JobState(current), JobState(new)
    return current == new or new in _JOB_MOVES[current]


def check_job_move(current: JobState | str, new: JobState | str) -> JobState:
    """Return the new state, or raise InvalidMove with a message fit for an API error."""
    if not can_move(current, new):
        raise InvalidMove(f"a job cannot go from {JobState(current)} to {JobState(new)}")
    return JobState(new)


def moves_into(new: JobState) -> frozenset[JobState]:
    """The states a job may reach `new` from (other than `new` itself)."""
    return frozenset(s for s, targets in _JOB_MOVES.items() if new in targets)
