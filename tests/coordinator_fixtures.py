"""What the coordinator's database tests share besides the `engine` and `postgres` fixtures
(tests/conftest.py): a fresh PostgreSQL database, a registered printer, and builds made as a
submission makes them (one copy of a mesh in PLA unless a test says otherwise)."""

from __future__ import annotations

import itertools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from farm.coordinator import pipeline
from farm.coordinator.db import make_engine
from farm.coordinator.models import Build, Job, Printer, Slice, utcnow

_databases = itertools.count()

BUILD_DEFAULTS: dict[str, Any] = {
    "source_name": "part.stl",
    "source_sha256": "0" * 64,
    "entry": None,
    "params": {},
    "copies": 1,
    "material": "PLA",
    "quality": "standard",
    "color": None,
    "printer_model": None,
    "priority": 0,
}


def fresh_database(server: str) -> Engine:
    name = f"t{next(_databases)}"
    with sa.create_engine(server, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    return make_engine(server.rsplit("/", 1)[0] + "/" + name)


def add_printer(session: Session, name: str, model: str) -> Printer:
    p = Printer(name=name, model=model, protocol="prusalink", state="idle", last_seen=utcnow())
    session.add(p)
    session.commit()
    return p


def create_build(session: Session, **fields: Any) -> tuple[Build, list[Job], list[pipeline.Outgoing]]:
    """pipeline.create_build with BUILD_DEFAULTS for what `fields` does not say; not committed."""
    return pipeline.create_build(session, **{**BUILD_DEFAULTS, **fields})


def ready_build(
    session: Session,
    *,
    models: list[str] | None,
    copies: int = 1,
    priority: int = 0,
    printer_model: str | None = None,
    gcode_sha256: str = "1" * 64,
    print_time_s: int = 60,
) -> list[Job]:
    """A mesh build whose slices for `models` (None: every one) are done: its jobs are ready."""
    build, jobs, _out = create_build(session, copies=copies, printer_model=printer_model, priority=priority)
    session.flush()
    for sl in session.exec(select(Slice).where(Slice.build_id == build.id)).all():
        if models is None or sl.printer_model in models:
            pipeline.slice_finished(
                session,
                sl,
                error=None,
                gcode_sha256=gcode_sha256,
                meta={"print_time_s": print_time_s},
                seconds=0.1,
            )
    session.commit()
    return jobs
