"""One hook on every ORM flush: the moves of jobs, builds, slices and printers it carries become
metric tallies (metrics.py) and notification events (notify.py), written in the same
transaction as the move. Whichever code path moves a row (dispatch, pipeline, the agents' and
operators' routes), the hook sees the net change since the last flush: a failed print that goes
back to the queue in the same transaction (the retry policy) is no failure to tell anyone of.

Heartbeats and PostgreSQL claims are single statements with no ORM: printer states come from the
notifier's watcher instead (notify.watch), claims from jobs' fence counters (metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, func, inspect
from sqlalchemy.orm import Session
from sqlmodel import col, select

from farm.coordinator import metrics, notify
from farm.coordinator.models import Build, Job, Printer, Slice, utcnow
from farm.core.states import BuildStage, JobState


def _moved(obj: Any, attr: str) -> tuple[Any, Any] | None:
    """(old, new) when `attr` changed since the last flush and its old value was loaded."""
    history = inspect(obj).attrs[attr].history
    if not history.added or not history.deleted:
        return None
    old, new = history.deleted[0], history.added[0]
    return None if old == new else (old, new)


def _job(session: Session, job: Job) -> None:
    moved = _moved(job, "state")
    if moved is None:
        return
    old, new = JobState(moved[0]), JobState(moved[1])
    now = utcnow()
    if new == JobState.PRINTING:
        job.printing_at = now
        if (upload := metrics.seconds_between(job.started_at, now)) is not None:
            metrics.observe(session, metrics.STAGE_SECONDS, upload, stage="upload")
    if old == JobState.PRINTING and (took := metrics.seconds_between(job.printing_at, now)) is not None:
        metrics.observe(session, metrics.STAGE_SECONDS, took, stage="print")
    if new == JobState.DONE:
        notify.raise_event(session, "job.done", notify.job_data(session, job))
    elif new == JobState.FAILED:
        notify.raise_event(session, "job.failed", notify.job_data(session, job))


def _build(session: Session, build: Build) -> None:
    moved = _moved(build, "stage")
    if moved is not None and (BuildStage(moved[0]), BuildStage(moved[1])) == (
        BuildStage.CAD,
        BuildStage.QUEUED,
    ):
        metrics.count(session, metrics.LEASE_EXPIRIES, kind="cad")  # its worker went silent: sent again
    if moved is not None and BuildStage(moved[1]) == BuildStage.FAILED:
        notify.raise_event(
            session, "build.failed", {"build": build.id, "source": build.source_name, "error": build.error}
        )
    history = inspect(build).attrs["cad_seconds"].history
    if history.added and history.added[0] is not None:
        metrics.observe(session, metrics.STAGE_SECONDS, float(history.added[0]), stage="cad")


def _slice(session: Session, sl: Slice) -> None:
    if (moved := _moved(sl, "worker")) is not None and moved[1] is None:  # only a lapsed lease drops it
        metrics.count(session, metrics.LEASE_EXPIRIES, kind="slice")
    history = inspect(sl).attrs["slice_seconds"].history
    if history.added and history.added[0] is not None:
        metrics.observe(session, metrics.STAGE_SECONDS, float(history.added[0]), stage="slicing")


def _printer(session: Session, printer: Printer) -> None:
    if (moved := _moved(printer, "bed_clear")) is None:
        return
    if moved[1]:  # cleared: how long since the print on it ended
        ended = session.execute(
            select(func.max(Job.finished_at)).where(
                Job.printer == printer.name, col(Job.finished_at).is_not(None)
            )
        ).scalar()
        if (waited := metrics.seconds_between(ended, utcnow())) is not None:
            metrics.observe(session, metrics.STAGE_SECONDS, waited, stage="bed_clear")
    else:
        notify.raise_event(
            session,
            "printer.bed",
            {"printer": printer.name, "model": printer.model, "message": "the bed needs clearing"},
        )


_HOOKS: dict[type, Callable[[Session, Any], None]] = {
    Job: _job,
    Build: _build,
    Slice: _slice,
    Printer: _printer,
}


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    dirty = [obj for obj in session.dirty if type(obj) in _HOOKS]
    if not dirty:
        return
    with session.no_autoflush:
        for obj in dirty:
            _HOOKS[type(obj)](session, obj)
