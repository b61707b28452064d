"""Handing ready jobs to printers: claims under a lease with a fencing token, and agents' reports.

A claim bumps the job's `fence`. Every later report must carry that number, so an agent that
lost its lease (it was restarted, or the job was handed elsewhere) cannot move the job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from farm.models import Job, Printer, Slice, utcnow
from farm.pipeline import move_job
from farm.states import LEASED_JOB_STATES, TERMINAL_JOB_STATES, InvalidMove, JobState, SliceState, can_move

assert can_move(JobState.READY, JobState.CLAIMED)  # the claim's UPDATE encodes this move


class StaleLease(Exception):
    """The report comes from an agent that no longer holds the job."""


def lease_deadline(lease_s: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_s)


def bound_job(session: Session, printer: Printer) -> Job | None:
    """The job this printer is already responsible for, if any (an agent restarted mid-job)."""
    return session.exec(
        select(Job).where(Job.printer == printer.name, col(Job.state).in_(list(LEASED_JOB_STATES)))
    ).first()


def claim(session: Session, printer: Printer, lease_s: float) -> Job | None:
    """Bind the best ready job this printer can print to it; None when nothing fits."""
    if (existing := bound_job(session, printer)) is not None:
        existing.lease_expires = lease_deadline(lease_s)
        session.add(existing)
        session.commit()
        return existing
    if not printer.bed_clear:
        return None  # a finished part (or a failed one) is still on the bed
    candidates = session.exec(
        select(Job.id, Slice.id)
        .join(
            Slice,
            (col(Slice.build_id) == col(Job.build_id))
            & (col(Slice.printer_model) == printer.model)
            & (col(Slice.state) == SliceState.DONE),
        )
        .where(
            Job.state == JobState.READY,
            or_(col(Job.printer_model).is_(None), col(Job.printer_model) == printer.model),
            func.upper(Job.material) == (printer.material or "").upper(),
            or_(col(Job.color).is_(None), func.lower(Job.color) == (printer.color or "").lower()),
        )
        .order_by(col(Job.priority).desc(), col(Job.created_at), col(Job.id))
        .limit(20)
    ).all()
    now = utcnow()
    for job_id, slice_id in candidates:
        # Conditional UPDATE: of two agents racing for one job, exactly one sees rowcount 1.
        result = session.exec(  # type: ignore[call-overload]
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.READY)
            .values(
                state=JobState.CLAIMED,
                printer=printer.name,
                slice_id=slice_id,
                fence=Job.fence + 1,
                lease_expires=lease_deadline(lease_s),
                started_at=now,
                updated_at=now,
                progress=None,
                error=None,
            )
        )
        if result.rowcount == 1:
            printer.job_id = job_id
            session.add(printer)
            session.commit()
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            return job
    session.rollback()
    return None


def report(
    session: Session,
    job: Job,
    printer: Printer,
    *,
    fence: int,
    state: JobState,
    lease_s: float,
    progress: float | None = None,
    remaining_s: int | None = None,
    error: str | None = None,
) -> Job:
    """An agent says where its job is. Idempotent: repeating the last report changes nothing."""
    if job.printer != printer.name or job.fence != fence:
        raise StaleLease(f"job {job.id} is no longer held by {printer.name} under lease {fence}")
    if job.state in TERMINAL_JOB_STATES and state == job.state:
        return job
    reached_printer = job.state == JobState.PRINTING  # an upload that failed left nothing on the bed
    move_job(session, job, state)
    if state in TERMINAL_JOB_STATES and reached_printer:
        end_on_bed(printer)
    job.progress = 100.0 if state == JobState.DONE else (progress if progress is not None else job.progress)
    job.remaining_s = 0 if state == JobState.DONE else remaining_s
    if error:
        job.error = error
    if state in LEASED_JOB_STATES:
        job.lease_expires = lease_deadline(lease_s)
    else:
        job.lease_expires = None
        printer.job_id = None
        if state == JobState.READY:  # released before it reached the printer: anyone may take it
            job.printer = None
    session.add_all([job, printer])
    session.commit()
    return job


def end_on_bed(printer: Printer) -> None:
    """A print ended on this printer: until someone clears the bed, it takes no new job."""
    if not printer.auto_eject:
        printer.bed_clear = False


def cancel(session: Session, job: Job) -> Job:
    """Cancel a job wherever it is. Its agent learns it from its next heartbeat and stops the print."""
    if job.state in TERMINAL_JOB_STATES:
        raise InvalidMove(f"job {job.id} has already ended ({job.state})")
    printer = session.get(Printer, job.printer) if job.printer else None
    if printer is not None:
        if job.state in (JobState.UPLOADING, JobState.PRINTING):
            end_on_bed(printer)
        if printer.job_id == job.id:
            printer.job_id = None
        session.add(printer)
    move_job(session, job, JobState.CANCELLED)
    job.lease_expires = None
    job.error = "cancelled by an operator"
    session.commit()
    return job


def heartbeat(
    session: Session,
    printer: Printer,
    *,
    state: str,
    message: str | None,
    progress: float | None,
    lease_s: float,
) -> Job | None:
    printer.state = state
    printer.message = message
    printer.progress = progress
    printer.last_seen = utcnow()
    job = bound_job(session, printer)
    if job is not None:
        job.lease_expires = lease_deadline(lease_s)
        session.add(job)
    session.add(printer)
    session.commit()
    return job


def expire_leases(session: Session, lease_s: float) -> None:
    """Requeue claims whose agent went silent before upload; mark silent printers offline.

    A job that may already be on a printer (uploading, printing) stays bound to it: sending it
    elsewhere could print it twice. The agent reconciles when it returns.
    """
    now = utcnow()
    for job in session.exec(
        select(Job).where(Job.state == JobState.CLAIMED, col(Job.lease_expires) < now)
    ).all():
        move_job(session, job, JobState.READY)
        job.printer = None
        job.lease_expires = None
    silent_since = now - timedelta(seconds=lease_s)
    for printer in session.exec(
        select(Printer).where(Printer.state != "offline", col(Printer.last_seen) < silent_since)
    ).all():
        printer.state = "offline"
        printer.message = f"no word from its agent for {int(lease_s)} s"
        session.add(printer)
    session.commit()
