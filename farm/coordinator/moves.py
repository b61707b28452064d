"""What each move of a job writes, written once.

farm/core/states.py says which moves are allowed; this module says what each one changes besides the
state. From the claim on, it is the only code that writes a job's state, printer, slice, fence,
lease, progress, attempts and timestamps, or a printer's binding to its job (the moves into and
out of `waiting`, before any claim, are farm/coordinator/pipeline.py's). A claim is an UPDATE on both
databases' paths (farm/coordinator/dispatch.py): its SET clause is made from the same `Move` that
`Move.apply` writes on a loaded row, and tests/test_dispatch.py checks the two against each other.

Every way a job goes back to the queue (a lapsed claim, an agent handing it back, a failed attempt
with attempts left, an operator's retry) is `requeue`: it forgets the same fields each time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from farm.coordinator.models import Job, Printer, utcnow
from farm.core.states import TERMINAL_JOB_STATES, JobState, check_job_move, moves_into


class Arg(NamedTuple):
    """A value the caller of a move gives: a Python value on a row, a SQL expression in an UPDATE."""

    name: str


class _Bump:
    """One more than the field holds."""


BUMP = _Bump()


@dataclass(frozen=True)
class Move:
    """A move as data: the job state it goes to (None: the state stays) and what else it sets,
    each field to a constant, an `Arg`, or `BUMP`."""

    to: JobState | None
    sets: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, row: Any, **args: Any) -> None:
        """Write the move on a loaded row (a Job, or a Printer for moves without a state)."""
        if self.to is not None:
            row.state = check_job_move(row.state, self.to)
        for name, value in self.sets.items():
            if isinstance(value, Arg):
                value = args[value.name]
            elif value is BUMP:
                value = getattr(row, name) + 1
            setattr(row, name, value)

    def values(self, table: Table, **args: Any) -> dict[str, Any]:
        """The same move as an UPDATE's SET clause on `table`: `args` are SQL expressions or values."""
        out: dict[str, Any] = {} if self.to is None else {"state": self.to}
        for name, value in self.sets.items():
            if isinstance(value, Arg):
                value = args[value.name]
            elif value is BUMP:
                value = table.c[name] + 1
            out[name] = value
        return out

    def where(self, table: Table) -> ColumnElement[bool]:
        """The UPDATE's guard: the row is in the one state this move may start from."""
        assert self.to is not None
        (start,) = moves_into(self.to)  # `=`, not IN: PostgreSQL's prepared claim keeps its plan
        return table.c.state == start


# READY -> CLAIMED: bound to a printer under a new fence, for `lease_expires`.
CLAIM = Move(
    JobState.CLAIMED,
    {
        "printer": Arg("printer"),
        "slice_id": Arg("slice_id"),
        "fence": BUMP,
        "lease_expires": Arg("lease_expires"),
        "started_at": Arg("now"),
        "updated_at": Arg("now"),
        "progress": None,
        "error": None,
    },
)
# The job's agent called in (a heartbeat, a claim while it holds the job): its lease goes on.
EXTEND_LEASE = Move(None, {"lease_expires": Arg("lease_expires")})
# The printer side of a claim: which job it holds.
BIND = Move(None, {"job_id": Arg("job_id")})


def enter(session: Session, job: Job, new: JobState) -> None:
    """The state move itself, checked against farm/core/states.py: what every move below starts with."""
    job.state = check_job_move(job.state, new)
    job.updated_at = utcnow()
    if new in TERMINAL_JOB_STATES:
        job.finished_at = job.updated_at
    session.add(job)


def release(session: Session, printer: Printer | None, job: Job) -> None:
    """The printer no longer holds the job."""
    if printer is not None and printer.job_id == job.id:
        printer.job_id = None
        session.add(printer)


def end_on_bed(printer: Printer) -> None:
    """A print ended on this printer: until someone clears the bed, it takes no new job."""
    if not printer.auto_eject:
        printer.bed_clear = False


def hold(
    session: Session,
    job: Job,
    to: JobState,
    *,
    lease_expires: datetime,
    progress: float | None,
    remaining_s: int | None,
    error: str | None,
) -> None:
    """An agent's report that keeps its lease: uploading, printing, or the same state again with
    news of its progress (a progress left out keeps the last one)."""
    enter(session, job, to)
    note_progress(job, progress, remaining_s)
    if error:
        job.error = error
    job.lease_expires = lease_expires


def requeue(
    session: Session,
    job: Job,
    printer: Printer | None = None,
    *,
    retry_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """Back to the queue, as if never claimed: any matching printer may take it from `retry_at`.
    `printer`: the one it was bound to, if the caller has it loaded. `error`: why, kept for the
    operator (None: the last one stays)."""
    enter(session, job, JobState.READY)
    _forget_printer(session, job, printer)
    job.retry_at = retry_at
    if error:
        job.error = error


def _forget_printer(session: Session, job: Job, printer: Printer | None) -> None:
    if printer is None and job.printer is not None:
        printer = session.get(Printer, job.printer)
    release(session, printer, job)
    job.printer, job.slice_id, job.lease_expires = None, None, None
    job.progress, job.remaining_s, job.finished_at = None, None, None


def finish(session: Session, job: Job, printer: Printer, *, error: str | None = None) -> None:
    """The print is done; its part is on the bed."""
    _end(session, job, printer, JobState.DONE, on_bed=True, error=error)
    job.progress, job.remaining_s = 100.0, 0


def fail(
    session: Session,
    job: Job,
    printer: Printer,
    *,
    error: str | None,
    progress: float | None,
    remaining_s: int | None,
    backoff_s: float,
) -> None:
    """The agent says it failed. A failed upload or print is an attempt (a printer refusing a file
    must not get it back forever); with attempts left the job goes back to the queue after a
    back-off that doubles per attempt, and never again to a printer it failed on."""
    attempted = job.state in (JobState.UPLOADING, JobState.PRINTING)
    on_bed = job.state == JobState.PRINTING  # an upload that failed left nothing on the bed
    _end(session, job, printer, JobState.FAILED, on_bed=on_bed, error=error)
    note_progress(job, progress, remaining_s)
    if not attempted:
        return
    job.attempts += 1
    if not job.pinned_printer:  # a pinned job's retry has nowhere else to go
        job.failed_on = f"{job.failed_on or ','}{printer.name},"
    if job.attempts < job.max_attempts:
        why = f"attempt {job.attempts} of {job.max_attempts} failed on {printer.name}: {error or 'failed'}"
        backoff = timedelta(seconds=backoff_s * 2 ** (job.attempts - 1))
        requeue(session, job, printer, retry_at=utcnow() + backoff, error=why)


def cancel(
    session: Session,
    job: Job,
    printer: Printer | None,
    *,
    error: str | None,
    on_bed: bool,
) -> None:
    """Cancelled, wherever it is. `on_bed`: it reached the printer, which now holds what is left.
    An agent still printing it learns it from its next heartbeat and stops the print."""
    _end(session, job, printer, JobState.CANCELLED, on_bed=on_bed, error=error)


def note_progress(job: Job, progress: float | None, remaining_s: int | None) -> None:
    """What an agent's report says of the print's progress (a progress left out keeps the last)."""
    if progress is not None:
        job.progress = progress
    job.remaining_s = remaining_s


def _end(
    session: Session, job: Job, printer: Printer | None, state: JobState, *, on_bed: bool, error: str | None
) -> None:
    """A terminal state: the job keeps the name of its printer, which no longer holds it."""
    enter(session, job, state)
    if printer is not None:
        if on_bed:
            end_on_bed(printer)
        session.add(printer)
    if error:
        job.error = error
    job.lease_expires = None
    release(session, printer, job)


def retry(session: Session, job: Job, *, waiting: bool) -> None:
    """An operator sends a failed job back for one more attempt, on any printer again. `waiting`:
    what failed (its CAD run or slices) is being made again, and the job waits for it."""
    if waiting:
        _forget_printer(session, job, None)
        job.retry_at = None
    else:
        requeue(session, job)
    job.max_attempts = job.attempts + 1
    job.failed_on = ""
    job.error = f"retried by an operator after: {job.error}" if job.error else None
