"""Handing ready jobs to printers: claims under a lease with a fencing token, and agents' reports.

A claim binds the job to a printer and bumps its `fence`. Every later report must come for that
printer and carry that number, so an agent that lost its lease (it was restarted, or the job was
handed elsewhere) cannot move the job. Both checks matter: a claim lost in a PostgreSQL crash
(claims do not wait for the disk, db.make_async_engine) leaves the fence where it was, and the
job's next claim, by another printer, is given the same number again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, bindparam, exists, func, or_, select as sa_select, union_all, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from farm.coordinator import metrics, moves
from farm.coordinator.heartbeats import (
    BEAT_ONE_STATEMENT,
    BEAT_WITH_PRINTER,
    Beat,
    BeatFields,
    beat_params,
)
from farm.coordinator.models import Job, Printer, Slice, table_of, utcnow
from farm.coordinator.moves import BIND, CLAIM, EXTEND_LEASE
from farm.coordinator.pipeline import Outgoing, rebuild_for
from farm.core import tags
from farm.core.states import (
    LEASED_JOB_STATES,
    TERMINAL_JOB_STATES,
    InvalidMove,
    JobState,
    PrinterState,
    SliceState,
)

CLAIM_ROUNDS = 5
_PRINTERS, _JOBS = table_of(Printer), table_of(Job)


class StaleLease(Exception):
    """The report comes from an agent that no longer holds the job."""


def lease_deadline(lease_s: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_s)


def bound_job(session: Session, printer: Printer) -> Job | None:
    """The job this printer is already responsible for, if any (an agent restarted mid-job)."""
    return session.exec(
        select(Job).where(Job.printer == printer.name, col(Job.state).in_(list(LEASED_JOB_STATES)))
    ).first()


def queue_for(session: Session, printer: Printer, starvation_s: float, limit: int) -> list[int]:
    """The ids of the ready jobs this printer would take, in the order it would take them."""
    return [job_id for job_id, _ in _candidates(session, printer, starvation_s, limit)]


def next_gcode(session: Session, printer: Printer, starvation_s: float) -> str | None:
    """The G-code of the job this printer would take next (bed or power group permitting), so its
    agent can download it while the bed waits to be cleared. A hint: the claim decides."""
    for _job_id, slice_id in _candidates(session, printer, starvation_s, limit=1):
        sl = session.get(Slice, slice_id)
        return sl.gcode_sha256 if sl else None
    return None


def _fits() -> Select:
    """Ready jobs that a printer (the p_* parameters) can print, with the slice for its model (and
    what `longest_first` orders them by)."""
    return (
        sa_select(  # sqlmodel's select is typed for up to four columns
            col(Job.id).label("job_id"),
            col(Slice.id).label("slice_id"),
            col(Job.priority),
            col(Job.created_at),
            col(Slice.print_time_s),
        )
        .join(
            Slice,
            (col(Slice.build_id) == col(Job.build_id))
            & (col(Slice.printer_model) == bindparam("p_model"))
            & (col(Slice.copies) == col(Job.copies))  # a plate of 4 needs the 4-copy G-code
            & (col(Slice.state) == SliceState.DONE),
        )
        .where(
            col(Job.state) == JobState.READY,
            or_(col(Job.printer_model).is_(None), col(Job.printer_model) == bindparam("p_model")),
            func.upper(Job.material) == bindparam("p_material"),
            or_(col(Job.color).is_(None), func.lower(Job.color) == bindparam("p_color")),
            or_(col(Job.nozzle).is_(None), col(Job.nozzle) == bindparam("p_nozzle")),
            or_(col(Job.pinned_printer).is_(None), col(Job.pinned_printer) == bindparam("p_name")),
            or_(col(Job.retry_at).is_(None), col(Job.retry_at) <= bindparam("p_now")),
            ~col(Job.failed_on).contains(bindparam("p_failed_on")),
            col(Job.tags).in_(bindparam("p_tags", expanding=True)),
        )
    )


# Priority, then age; but a job that waited past the starvation limit goes first. One ORDER BY with
# the starvation test in it would sort the whole queue on every claim, so: the starving first
# (looked for only when the ix_job_waiting index says there are any), then the rest, straight off
# ix_job_queue. Built once with bound parameters: building this select costs more than running it.
_ORDER = (col(Job.priority).desc(), col(Job.created_at), col(Job.id))
# The oldest ready job's age, as min() so that PostgreSQL reads it off ix_job_waiting's first entry
# whatever the plan. An EXISTS over `created_at < cutoff` was a sequential scan of every job ever
# made once psycopg's prepared claim switched to a generic plan (the planner cannot see the cutoff
# there and guesses a third of the table matches): 1.4 ms per claim with 11,000 jobs, growing.
_OLDEST_READY = select(func.min(Job.created_at)).where(Job.state == JobState.READY).scalar_subquery()
_ANY_STARVING = bindparam("p_cutoff") > _OLDEST_READY
# coalesce() hides created_at from the planner: walking ix_job_queue in order stops after `limit`
# rows, where a range scan of ix_job_waiting would sort every starving job.
_STARVING = (
    _fits().where(func.coalesce(Job.created_at, Job.created_at) < bindparam("p_cutoff")).order_by(*_ORDER)
)
_QUEUE = _fits().order_by(*_ORDER)
# Within a priority, a batch of jobs submitted together starts longest first: it then ends on its
# short prints, which even out the printers' last hours, not on one long print started last
# (bench/farm.py: the batch's makespan against its lower bound). A batch: the jobs queued within
# BATCH_S after the oldest this printer could take, among the first WINDOW of its queue. So a job
# is passed only by longer ones submitted up to BATCH_S after it, and first come, first served
# holds between batches (and the starvation limit above all).
BATCH_S = 600.0
WINDOW = 20


def _candidates(
    session: Session, printer: Printer, starvation_s: float, limit: int = WINDOW
) -> list[tuple[int, int]]:
    """The first ready jobs this printer can print, best first, with the slice for its model.

    farm/coordinator/explain.py says the same in words, one printer at a time: keep the two in step."""
    params = _candidate_params(printer, starvation_s)
    conn = session.connection()
    starving: list[Row[Any]] = []
    if conn.execute(select(_ANY_STARVING), params).scalar():
        starving = list(conn.execute(_STARVING.limit(limit), params))
    rest = conn.execute(_QUEUE.limit(max(limit, WINDOW)), params).all()  # holds the starving it passes
    seen = {row.job_id for row in starving}
    queue = longest_first([row for row in rest if row.job_id not in seen])
    return [(row.job_id, row.slice_id) for row in [*starving, *queue]][:limit]


def longest_first(queue: list[Row[Any]]) -> list[Row[Any]]:
    """Ready jobs in queue order (priority, then age) -> the order claims take them: each time the
    longest print of the batch at the head of the first WINDOW (see BATCH_S). The PostgreSQL
    claim (`_longest_in_window`) makes the same first pick in SQL."""
    left, order = list(queue), []
    while left:
        head = left[0]
        latest = head.created_at + timedelta(seconds=BATCH_S)
        batch = [r for r in left[:WINDOW] if r.priority == head.priority and r.created_at <= latest]
        pick = max(batch, key=lambda r: r.print_time_s or 0)  # the first of equals: queue order
        order.append(pick)
        left.remove(pick)
    return order


def _candidate_params(printer: Any, starvation_s: float) -> dict[str, Any]:
    """`printer`: a Printer, or a row of the printer table."""
    now = utcnow()
    return {
        "p_model": printer.model,
        "p_material": (printer.material or "").upper(),
        "p_color": (printer.color or "").lower(),
        "p_nozzle": printer.nozzle,
        "p_name": printer.name,
        "p_now": now,
        "p_failed_on": f",{printer.name},",
        "p_tags": tags.subsets(printer.tags),
        "p_cutoff": now - timedelta(seconds=starvation_s),
    }


_HEATING = (
    select(func.count())
    .select_from(_JOBS.join(_PRINTERS, _PRINTERS.c.name == _JOBS.c.printer))
    .where(
        _PRINTERS.c.power_group == bindparam("h_group"),
        _PRINTERS.c.name != bindparam("h_name"),
        _JOBS.c.state.in_(list(LEASED_JOB_STATES)),
        _JOBS.c.started_at > bindparam("h_since"),
    )
)


def _heating_params(printer: Any, heatup_s: float) -> dict[str, Any]:
    since = utcnow() - timedelta(seconds=heatup_s)
    return {"h_group": printer.power_group, "h_name": printer.name, "h_since": since}


# Claims in one power group take turns (PostgreSQL): else two could each count the others heating,
# both see room, and both start. A transaction-scoped advisory lock: released at commit or rollback,
# whatever happens to the caller. 0x6661726d ("farm") keeps it apart from other users' locks.
_LOCK_GROUP = select(func.pg_advisory_xact_lock(0x6661726D, func.hashtext(bindparam("h_group"))))


def heating_in_group(session: Session, printer: Printer, heatup_s: float) -> int:
    """Other printers of this printer's power group that took a job within the heat-up time."""
    if not printer.power_group:
        return 0
    return int(session.connection().execute(_HEATING, _heating_params(printer, heatup_s)).scalar_one())


def _claim_values(slice_id: Any) -> dict[str, Any]:
    """The claim's SET clause (farm/coordinator/moves.py CLAIM), the job's slice given by `slice_id`."""
    return CLAIM.values(
        _JOBS,
        printer=bindparam("c_printer"),
        slice_id=slice_id,
        lease_expires=bindparam("c_lease"),
        now=bindparam("c_now"),
    )


_CLAIM = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("c_id"), CLAIM.where(_JOBS))
    .values(_claim_values(bindparam("c_slice")))
    .returning(*_JOBS.c)
)
_CLAIM_ORM = select(Job).from_statement(_CLAIM)  # the claimed job, without a round trip to read it back


def _longest_in_window() -> Select:
    """`longest_first`'s first pick: the longest print of the batch at the head of the first
    WINDOW ready jobs, locking it (skipping those racing claims hold; when they hold the whole
    batch, the plain queue's first pick follows in `_claim_in_one`)."""
    window = _QUEUE.limit(WINDOW).cte("queue_window")
    head = select(window.c.priority, window.c.created_at)
    head = head.order_by(window.c.priority.desc(), window.c.created_at, window.c.job_id).limit(1)
    head_priority = head.with_only_columns(window.c.priority).scalar_subquery()
    head_created = head.with_only_columns(window.c.created_at).scalar_subquery()
    return (
        select(window.c.job_id, window.c.slice_id)
        .join_from(_JOBS, window, _JOBS.c.id == window.c.job_id)
        .where(
            window.c.priority == head_priority,
            window.c.created_at <= head_created + timedelta(seconds=BATCH_S),
        )
        .order_by(func.coalesce(window.c.print_time_s, 0).desc(), window.c.created_at, window.c.job_id)
        .limit(1)
        .with_for_update(of=_JOBS, skip_locked=True)
    )


def _claim_in_one() -> Any:
    """PostgreSQL: pick (locking, skipping what other claims hold), claim and bind the printer
    in one statement: one round trip where SQLite's path takes a read and a write per candidate.

    The pick: the first starving job that fits, else the first of the queue. PostgreSQL runs the
    starving branch only when the oldest ready job (a one-time filter, off ix_job_waiting) waited
    past the limit, and the queue branch only when the first yields no row. Each locks the row
    it picks and skips those that racing claims hold: they take different jobs instead of
    queueing on one row's lock."""
    starving = _STARVING.where(_ANY_STARVING).limit(1).with_for_update(of=_JOBS, skip_locked=True)
    queue = _QUEUE.limit(1).with_for_update(of=_JOBS, skip_locked=True)
    branches = [s.subquery() for s in (starving, _longest_in_window(), queue)]
    first = union_all(*(select(b.c.job_id, b.c.slice_id) for b in branches))
    pick = first.limit(1).cte("pick")
    pick_job, pick_slice = list(pick.c)
    claimed = (
        update(_JOBS)
        .where(_JOBS.c.id == pick_job, CLAIM.where(_JOBS))
        .values(_claim_values(pick_slice))
        .returning(*_JOBS.c)
        .cte("claimed")
    )
    bind_printer = (
        update(_PRINTERS)
        .where(_PRINTERS.c.name == bindparam("c_printer"), exists(select(claimed.c.id)))
        .values(BIND.values(_PRINTERS, job_id=select(claimed.c.id).scalar_subquery()))
        .cte("bind_printer")
    )
    return select(*claimed.c).add_cte(bind_printer)


_CLAIM_IN_ONE = _claim_in_one()
_CLAIM_IN_ONE_ORM = select(Job).from_statement(_CLAIM_IN_ONE)


def _claim_in_one_params(printer: Any, lease_s: float, starvation_s: float) -> dict[str, Any]:
    now = utcnow()
    return {
        **_candidate_params(printer, starvation_s),
        "c_printer": printer.name,
        "c_now": now,
        "c_lease": now + timedelta(seconds=lease_s),
    }


def _claim_postgresql(session: Session, printer: Printer, lease_s: float, starvation_s: float) -> Job | None:
    params = _claim_in_one_params(printer, lease_s, starvation_s)
    options = {"populate_existing": True}
    job = session.scalars(_CLAIM_IN_ONE_ORM, params, execution_options=options).first()
    if job is None:
        session.rollback()
        return None
    set_committed_value(printer, "job_id", job.id)  # the statement stored it
    session.commit()
    return job


def may_start(printer: Any, heating: int, heating_per_group: int) -> bool:
    """Whether a printer may take a job now, `heating` others of its power group heating up."""
    if not printer.bed_clear:
        return False  # a finished part (or a failed one) is still on the bed
    return heating < heating_per_group  # else the next start could trip the group's breaker


def claim(
    session: Session,
    printer: Printer,
    lease_s: float,
    *,
    starvation_s: float = 4 * 3600.0,
    heatup_s: float = 300.0,
    heating_per_group: int = 1,
    beat: Beat | None = None,
) -> Job | None:
    """Bind the best ready job this printer can print to it; None when nothing fits.

    `beat`: what this printer's heartbeat just found (its bound job, whose lease it extended), so
    that the claim need not look again.
    Staggered start: in a power group, at most `heating_per_group` printers heat up at once."""
    if beat is not None:
        if beat.job is not None:
            return session.get(Job, beat.job)
    elif (existing := bound_job(session, printer)) is not None:
        EXTEND_LEASE.apply(existing, lease_expires=lease_deadline(lease_s))
        session.add(existing)
        session.commit()
        return existing
    if printer.power_group and session.get_bind().dialect.name == "postgresql":
        session.connection().execute(_LOCK_GROUP, {"h_group": printer.power_group})  # until commit
    if not may_start(printer, heating_in_group(session, printer, heatup_s), heating_per_group):
        return None
    if session.get_bind().dialect.name == "postgresql":
        return _claim_postgresql(session, printer, lease_s, starvation_s)
    # SQLite (one writer at a time, no row locks): read 20 candidates, and look again should racing
    # claimers take every one between our SELECT and our UPDATEs, so that a deep queue never
    # answers "nothing to print".
    for _round in range(CLAIM_ROUNDS):
        candidates = _candidates(session, printer, starvation_s)
        if not candidates:
            break
        now = utcnow()
        params = {"c_printer": printer.name, "c_now": now, "c_lease": now + timedelta(seconds=lease_s)}
        for job_id, slice_id in candidates:
            # Conditional UPDATE: of two agents racing for one job, exactly one gets the row back.
            job = session.scalars(
                _CLAIM_ORM,
                {**params, "c_id": job_id, "c_slice": slice_id},
                execution_options={"populate_existing": True},
            ).first()
            if job is not None:
                BIND.apply(printer, job_id=job_id)
                session.add(printer)
                session.commit()
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
    backoff_s: float = 30.0,
) -> Job:
    """An agent says where its job is. Idempotent: repeating the last report changes nothing.

    A failed print with attempts left goes back to the queue (the retry policy): after a back-off
    that doubles per attempt, and never again to a printer it failed on."""
    if job.printer != printer.name or job.fence != fence:  # both: see the module's docstring
        raise StaleLease(f"job {job.id} is no longer held by {printer.name} under lease {fence}")
    if job.state in TERMINAL_JOB_STATES and state == job.state:
        return job
    if state == JobState.READY and error and job.state == JobState.UPLOADING:
        state = JobState.FAILED  # how older agents hand back a failed upload: an attempt all the same
    if state in LEASED_JOB_STATES:
        lease = lease_deadline(lease_s)
        moves.hold(
            session, job, state, lease_expires=lease, progress=progress, remaining_s=remaining_s, error=error
        )
    elif state == JobState.READY:  # released before it reached the printer: anyone may take it
        moves.requeue(session, job, printer, error=error)
    elif state == JobState.DONE:
        moves.finish(session, job, printer, error=error)
    elif state == JobState.FAILED:
        moves.fail(
            session,
            job,
            printer,
            error=error,
            progress=progress,
            remaining_s=remaining_s,
            backoff_s=backoff_s,
        )
    elif state == JobState.CANCELLED:
        moves.cancel(session, job, printer, error=error, on_bed=job.state == JobState.PRINTING)
        moves.note_progress(job, progress, remaining_s)
    else:
        raise InvalidMove(f"an agent cannot move a job to {state}")
    session.commit()
    return job


def cancel(session: Session, job: Job) -> Job:
    """Cancel a job wherever it is. Its agent learns it from its next heartbeat and stops the print."""
    if job.state in TERMINAL_JOB_STATES:
        raise InvalidMove(f"job {job.id} has already ended ({job.state})")
    printer = session.get(Printer, job.printer) if job.printer else None
    on_bed = job.state in (JobState.UPLOADING, JobState.PRINTING)
    moves.cancel(session, job, printer, error="cancelled by an operator", on_bed=on_bed)
    session.commit()
    return job


def retry(session: Session, job: Job) -> tuple[Job, list[Outgoing]]:
    """An operator sends a failed job back: one more attempt, any printer again. A job whose build
    failed (at CAD or slicing) waits while that is made again; the caller sends the work returned."""
    if job.state != JobState.FAILED:
        raise InvalidMove(f"job {job.id} is {job.state}; only a failed job can be retried")
    out = rebuild_for(session, job)
    moves.retry(session, job, waiting=out is not None)
    session.commit()
    return job, out or []


class NoSuchPrinter(LookupError):
    """A claim for a printer that is not registered."""


async def claim_pg(engine: AsyncEngine, name: str, beat: BeatFields, **limits: Any) -> Row[Any] | None:
    """`claim_and_beat_pg` without whether a still is wanted (`limits`: its keyword arguments)."""
    found, _wanted = await claim_and_beat_pg(engine, name, beat, **limits)
    return found


async def claim_and_beat_pg(
    engine: AsyncEngine,
    name: str,
    beat: BeatFields,
    *,
    starvation_s: float,
    heatup_s: float,
    heating_per_group: int,
) -> tuple[Row[Any] | None, bool]:
    """`heartbeat` then `claim` on PostgreSQL, for the event loop: one statement each, in
    autocommit on one connection (a printer in a power group claims in a transaction that holds
    the group's lock), with no session or ORM
    (on a busy coordinator each await and each loaded object is time a claim waits). `beat`:
    heartbeat's keyword arguments. tests/test_dispatch.py checks it against `claim`.

    The job row bound to the printer (the one it held, or the one just claimed), or None when
    nothing fits or the bed or power group says wait; and whether a still is wanted."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        printer = (await conn.execute(BEAT_WITH_PRINTER, beat_params(name, **beat))).first()
        if printer is None:
            raise NoSuchPrinter(name)
        wanted = printer.snapshot_wanted is not None
        if printer.held_job is not None:
            held = (await conn.execute(_JOBS.select().where(_JOBS.c.id == printer.held_job))).first()
            return held, wanted
        params = _claim_in_one_params(printer, beat["lease_s"], starvation_s)
        if not printer.power_group:
            if not may_start(printer, 0, heating_per_group):  # the bed
                return None, wanted
            return (await conn.execute(_CLAIM_IN_ONE, params)).first(), wanted
    # A power group: count those heating and claim while holding the group's lock (_LOCK_GROUP),
    # in a transaction, on a connection checked out after the first went back (no pool deadlock).
    async with engine.begin() as conn:
        await conn.execute(_LOCK_GROUP, {"h_group": printer.power_group})
        heating = (await conn.execute(_HEATING, _heating_params(printer, heatup_s))).scalar_one()
        if not may_start(printer, heating, heating_per_group):
            return None, wanted
        return (await conn.execute(_CLAIM_IN_ONE, params)).first(), wanted


async def rehearse_pg(engine: AsyncEngine) -> None:
    """The agents' statements for a printer that does not exist, on each connection of `engine`:
    they change nothing, and leave the statements compiled, planned and prepared (psycopg
    prepares a statement on its 5th use). A restarted coordinator meets a thousand agents at once;
    unrehearsed, its first claims took up to 10 times as long (bench/coordinator.py)."""
    nobody = Printer(name="", model="", protocol="")  # no printer has an empty name (agents.Register)
    beat = beat_params("", PrinterState.OFFLINE, None, None, 60)
    for _ in range(6 * engine.pool.size()):  # type: ignore[attr-defined]  # QueuePool has size(); Pool does not
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement, params in (
                (BEAT_ONE_STATEMENT, beat),
                (BEAT_WITH_PRINTER, beat),
                (_CLAIM_IN_ONE, _claim_in_one_params(nobody, 0, 0)),
            ):
                await conn.execute(statement, params)


def expire_leases(session: Session, lease_s: float) -> int:
    """Requeue claims whose agent went silent before upload; mark silent printers offline.
    Returns how many claims went back to the queue.

    A job that may already be on a printer (uploading, printing) stays bound to it: sending it
    elsewhere could print it twice. The agent reconciles when it returns.
    """
    now = utcnow()
    claimed = select(Job).where(Job.state == JobState.CLAIMED, col(Job.lease_expires) < now)
    expired = session.exec(claimed).all()
    for job in expired:
        moves.requeue(session, job)
    if expired:
        metrics.count(session, metrics.LEASE_EXPIRIES, len(expired), kind="claim")
    silent_since = now - timedelta(seconds=lease_s)
    for printer in session.exec(
        select(Printer).where(Printer.state != PrinterState.OFFLINE, col(Printer.last_seen) < silent_since)
    ).all():
        printer.state = PrinterState.OFFLINE
        printer.message = f"no word from its agent for {int(lease_s)} s"
        session.add(printer)
    session.commit()
    return len(expired)
