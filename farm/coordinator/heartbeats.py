"""Heartbeats: every few seconds each agent says what its printer is doing, and the lease of the
job it holds is extended. Thousands of agents send them, so each is one or two UPDATEs built once,
with no rows loaded (one statement in autocommit on PostgreSQL). A claim on PostgreSQL starts with
the same heartbeat (`BEAT_WITH_PRINTER`, farm/coordinator/dispatch.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NamedTuple, NotRequired, TypedDict, Unpack

from sqlalchemy import Row, bindparam, func, or_, true, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, select

from farm.coordinator.models import Job, Printer, table_of, utcnow
from farm.coordinator.moves import EXTEND_LEASE
from farm.core.states import LEASED_JOB_STATES, PrinterState

_PRINTERS, _JOBS = table_of(Printer), table_of(Job)


class Beat(NamedTuple):
    """What a heartbeat tells its agent: the job it holds (None: none) under which fence, and
    whether an operator wants a still from its camera."""

    job: int | None
    fence: int | None
    snapshot: bool = False


# Built once: every agent sends a heartbeat every few seconds, so statement building would show.
_BEAT_PRINTER = (
    update(_PRINTERS)
    .where(_PRINTERS.c.name == bindparam("b_name"))
    .values(
        state=bindparam("b_state"),
        message=bindparam("b_message"),
        progress=bindparam("b_progress"),
        last_seen=bindparam("b_now"),
        # What the printer itself says is loaded (Bambu AMS / spool) wins; else the operator's word.
        material=func.coalesce(bindparam("b_material"), _PRINTERS.c.material),
        color=func.coalesce(bindparam("b_color"), _PRINTERS.c.color),
    )
)


def _extend_lease(printer: Any) -> Any:
    """The UPDATE that extends the lease of the job held by the printer `printer` matches."""
    return (
        update(_JOBS)
        .where(printer, or_(*(_JOBS.c.state == s for s in LEASED_JOB_STATES)))
        .values(EXTEND_LEASE.values(_JOBS, lease_expires=bindparam("b_lease")))
        .returning(_JOBS.c.id, _JOBS.c.fence)
    )


_BEAT_JOB = _extend_lease(_JOBS.c.printer == bindparam("b_name"))
# PostgreSQL does both in one statement (UPDATEs in a WITH), sent in autocommit: one round trip
# instead of four (BEGIN, two UPDATEs, COMMIT). One row when the printer exists, none otherwise.
_BEAT_PRINTER_CTE = _BEAT_PRINTER.returning(*_PRINTERS.c).cte("beat_printer")
_BEAT_JOB_CTE = _extend_lease(_JOBS.c.printer.in_(select(_BEAT_PRINTER_CTE.c.name))).cte("beat_job")
BEAT_ONE_STATEMENT = select(
    _BEAT_JOB_CTE.c.id, _BEAT_JOB_CTE.c.fence, _BEAT_PRINTER_CTE.c.snapshot_wanted
).select_from(_BEAT_PRINTER_CTE.outerjoin(_BEAT_JOB_CTE, true()))
_BEAT_PRINTER_WANTS = _BEAT_PRINTER.returning(_PRINTERS.c.snapshot_wanted)  # SQLite's, in two statements
# A claim's heartbeat: also the printer row as updated, which the claim matches jobs against.
BEAT_WITH_PRINTER = (
    select(*_BEAT_PRINTER_CTE.c)
    .add_columns(_BEAT_JOB_CTE.c.id.label("held_job"), _BEAT_JOB_CTE.c.fence.label("held_fence"))
    .select_from(_BEAT_PRINTER_CTE.outerjoin(_BEAT_JOB_CTE, true()))
)


def beat_params(
    name: str,
    state: PrinterState,
    message: str | None,
    progress: float | None,
    lease_s: float,
    material: str | None = None,
    color: str | None = None,
) -> dict[str, Any]:
    now = utcnow()
    return {
        "b_name": name,
        "b_state": state,
        "b_message": message,
        "b_progress": progress,
        "b_material": material.upper() if material else None,
        "b_color": color.lower() if color else None,
        "b_now": now,
        "b_lease": now + timedelta(seconds=lease_s),
    }


class BeatFields(TypedDict):
    """What an agent's heartbeat says besides its printer's name (heartbeat's keyword arguments)."""

    state: PrinterState
    message: str | None
    progress: float | None
    lease_s: float
    material: NotRequired[str | None]
    color: NotRequired[str | None]


def _beat_of(row: Row[Any, Any, Any] | None) -> Beat | None:
    """A BEAT_ONE_STATEMENT row as a Beat; None: no such printer."""
    return None if row is None else Beat(row[0], row[1], row[2] is not None)


async def heartbeat_pg(engine: AsyncEngine, name: str, **beat: Unpack[BeatFields]) -> Beat | None:
    """`heartbeat` on PostgreSQL, for the event loop: one statement in autocommit, no session."""
    params = beat_params(name, **beat)
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await conn.execute(BEAT_ONE_STATEMENT, params)).first()
    return _beat_of(row)


def heartbeat(session: Session, name: str, **beat: Unpack[BeatFields]) -> Beat | None:
    """Note what the agent says about its printer and extend its job's lease; None: no such printer.

    Every agent sends this every few seconds: two UPDATEs and one commit (one statement on
    PostgreSQL), with no rows loaded. Commits on its own, so it must come first in its session.
    """
    params = beat_params(name, **beat)
    if session.get_bind().dialect.name == "postgresql":
        conn = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        row = conn.execute(BEAT_ONE_STATEMENT, params).first()
        session.commit()
        return _beat_of(row)
    conn = session.connection()
    printer = conn.execute(_BEAT_PRINTER_WANTS, params).first()
    if printer is None:
        session.rollback()
        return None
    held = conn.execute(_BEAT_JOB, params).first()
    session.commit()
    wanted = printer[0] is not None
    return Beat(held[0], held[1], wanted) if held else Beat(None, None, wanted)
