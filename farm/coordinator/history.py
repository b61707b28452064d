"""The farm's history: finished, failed and cancelled jobs, and what they add up to.

Totals are per printer and per material: prints that finished, prints that failed or were
cancelled, hours on the printer (start to end of each finished print) and filament (the slicer's
estimate for each finished print's plate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import Session, col, select

from farm.coordinator.models import Job, Slice
from farm.core.states import TERMINAL_JOB_STATES, JobState


@dataclass
class Totals:
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    hours: float = 0.0
    filament_g: float = 0.0

    def add(
        self, state: JobState, started: datetime | None, finished: datetime | None, grams: float | None
    ) -> None:
        if state == JobState.DONE:
            self.done += 1
            if started and finished and finished > started:
                self.hours += (finished - started).total_seconds() / 3600
            self.filament_g += grams or 0.0
        elif state == JobState.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1

    def view(self) -> dict[str, Any]:
        out = asdict(self)
        out["hours"] = round(self.hours, 2)
        out["filament_g"] = round(self.filament_g, 1)
        return out


@dataclass(frozen=True)
class Filters:
    printer: str | None = None
    material: str | None = None
    owner: str | None = None
    since: datetime | None = None  # finished at or after
    until: datetime | None = None  # finished before
    state: JobState | None = None  # one of the final states; None: all three


def as_utc(ts: datetime | None) -> datetime | None:
    """A time as the database compares it, in UTC; a time given without a zone is UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


_Query = TypeVar("_Query", bound=sa.Select[*tuple[Any, ...]])


def _where(query: _Query, f: Filters) -> _Query:
    ended = func.coalesce(col(Job.finished_at), col(Job.updated_at))
    states = [f.state] if f.state else sorted(TERMINAL_JOB_STATES)
    query = query.where(col(Job.state).in_(states))
    if f.printer:
        query = query.where(col(Job.printer) == f.printer)
    if f.material:
        query = query.where(func.upper(col(Job.material)) == f.material.strip().upper())
    if f.owner:
        query = query.where(col(Job.owner) == f.owner)
    if (since := as_utc(f.since)) is not None:
        query = query.where(ended >= since)
    if (until := as_utc(f.until)) is not None:
        query = query.where(ended < until)
    return query


def totals(session: Session, f: Filters) -> dict[str, Any]:
    """{"all": …, "by_printer": [{printer, …}], "by_material": [{material, …}]}, largest first."""
    # sqlmodel's select() is typed for up to four columns, SQLAlchemy's for these six.
    rows = session.execute(
        _where(
            sa.select(
                col(Job.printer),
                col(Job.material),
                col(Job.state),
                col(Job.started_at),
                col(Job.finished_at),
                col(Slice.filament_g),
            )
            .select_from(Job)
            .outerjoin(Slice, col(Slice.id) == col(Job.slice_id)),
            f,
        )
    ).all()
    everything = Totals()
    by_printer: dict[str, Totals] = {}
    by_material: dict[str, Totals] = {}
    for printer, material, state, started, finished, grams in rows:
        everything.add(state, started, finished, grams)
        by_printer.setdefault(printer or "(none)", Totals()).add(state, started, finished, grams)
        by_material.setdefault(material, Totals()).add(state, started, finished, grams)

    def ranked(groups: dict[str, Totals], key: str) -> list[dict[str, Any]]:
        order = sorted(groups.items(), key=lambda kv: (-(kv[1].done + kv[1].failed + kv[1].cancelled), kv[0]))
        return [{key: name, **t.view()} for name, t in order]

    return {
        "all": everything.view(),
        "by_printer": ranked(by_printer, "printer"),
        "by_material": ranked(by_material, "material"),
    }


def recent(session: Session, f: Filters, limit: int, before_id: int | None = None) -> list[Job]:
    """The matching jobs, newest first (by id: the order they were submitted in)."""
    query = _where(select(Job), f).order_by(col(Job.id).desc()).limit(limit)
    if before_id is not None:
        query = query.where(col(Job.id) < before_id)
    return list(session.exec(query).all())
