"""The database engine: SQLite in WAL mode by default, PostgreSQL when given a URL."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.schema import ColumnDefault
from sqlmodel import Session, SQLModel, create_engine

from farm.coordinator import models, observe, ops_tables  # noqa: F401 - registers the tables and the move hooks


def make_engine(url: str, *, background_checkpoints: bool = False) -> Engine:
    """`background_checkpoints`: SQLite commits never copy the WAL back into the database file
    (a checkpoint, with an fsync, every ~1000 pages, inside whichever commit crosses the line):
    the caller runs `checkpoint` on its own schedule, off the request path."""
    if url.startswith("sqlite"):
        # A connection for each thread that may hold one (40 route threads, 4 writers), kept; and
        # overflow so that no burst makes anyone wait: the event loop, waiting for a connection
        # (an async route's session), stops the very responses whose sessions would give one
        # back, and the server hung (bench/farm.py, 100 agents at once). 10 + 200 churned
        # connections and slowed bench/coordinator.py's p99 to ~1 s; 40 kept do not.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=40, max_overflow=200
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            # WAL lets readers (status, watch) run while a claim writes.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            if background_checkpoints:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        _write_locks[engine] = threading.Lock()
    else:
        # Timestamps are stored without a zone: read and write them as UTC, as SQLite does.
        connect_args = {"options": "-c timezone=UTC"} if url.startswith("postgresql") else {}
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, connect_args=connect_args)
    SQLModel.metadata.create_all(engine)
    _add_new_columns(engine)
    _allow_new_nulls(engine)
    _add_new_indexes(engine)
    return engine


def make_async_engine(url: str, connections: int, *, durable: bool = True) -> AsyncEngine | None:
    """PostgreSQL: a pool for the agents' calls served on the event loop (api.deps.write,
    heartbeats.heartbeat_pg and claim_pg).
    The schema is the sync engine's business (make_engine runs first). SQLite: None.

    `durable=False`: commits return before the WAL reaches the disk (synchronous_commit=off), for
    heartbeats and claims. Waiting on the disk made each of them stall as long as a slow fsync
    took (heartbeat p99 602 ms against 12 ms without the wait, bench/coordinator.py). Safe:
    - a heartbeat lost in a database crash is repeated seconds later;
    - a claim lost in a crash hands nothing to a printer. Its agent reports "uploading" before it
      sends anything to the printer, and that report waits for the disk: WAL is flushed in order,
      so once the report is on disk, so is the claim before it. Had the crash taken the claim, the
      report finds the job no longer held under that printer and fence, is refused (409), and the
      agent drops the job (tests/test_crash_db.py).
    Reports, cancels and everything else keep waiting for the disk.
    """
    if not url.startswith("postgresql"):
        return None
    # Explicit both ways: that reports wait for the disk is what makes claims safe not to.
    options = "-c timezone=UTC -c synchronous_commit=" + ("on" if durable else "off")
    # Few connections: more requests in flight at once only queue inside PostgreSQL, and its
    # per-backend overhead takes CPU from the coordinator on a small machine (bench/coordinator.py:
    # 4 per server process gave p50 4 ms where 10 + 10 overflow gave 144 ms).
    return create_async_engine(url, pool_size=connections, max_overflow=0, connect_args={"options": options})


async def warm_up(engine: AsyncEngine) -> None:
    """Open a pool's connections before the agents call: each first use would otherwise pay for a
    connection and a PostgreSQL backend's start (the bench's first second: 184 answers over 50 ms)."""
    size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 0
    connections = [await engine.connect() for _ in range(size)]
    for connection in connections:
        await connection.close()


def _add_new_columns(engine: Engine) -> None:
    """Add columns that newer code declares to tables an older version created (a data dir kept
    across upgrades). Only additions: each new column is nullable or has a plain default."""
    existing = inspect(engine)
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = column.default.arg if isinstance(column.default, ColumnDefault) else None
                clause = f" DEFAULT {int(default) if isinstance(default, bool) else default!r}"
                if not isinstance(default, bool | int | float | str):
                    clause = ""
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}{clause}'))


def _allow_new_nulls(engine: Engine) -> None:
    """Let a column take NULL where newer code allows it (JobSnapshot.job_id: a still asked for
    while the printer held no job). PostgreSQL drops the constraint; SQLite cannot, so the table is
    made anew from the models and its rows copied over, in one transaction."""
    existing = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        strict = {c["name"] for c in existing.get_columns(table.name) if not c["nullable"]}  # cached
        loosened = [c.name for c in table.columns if c.nullable and not c.primary_key and c.name in strict]
        if not loosened:
            continue
        kept = ", ".join(
            f'"{c["name"]}"' for c in existing.get_columns(table.name) if c["name"] in table.columns
        )
        indexes = [index["name"] for index in existing.get_indexes(table.name)]
        with engine.begin() as conn:
            if engine.dialect.name != "sqlite":
                for name in loosened:
                    conn.execute(text(f'ALTER TABLE "{table.name}" ALTER COLUMN "{name}" DROP NOT NULL'))
                continue
            old = f"{table.name}_before_upgrade"
            conn.execute(text(f'ALTER TABLE "{table.name}" RENAME TO "{old}"'))
            for index in indexes:  # their names are the new table's
                conn.execute(text(f'DROP INDEX "{index}"'))
            table.create(conn)
            conn.execute(text(f'INSERT INTO "{table.name}" ({kept}) SELECT {kept} FROM "{old}"'))
            conn.execute(text(f'DROP TABLE "{old}"'))


def checkpoint(engine: Engine) -> None:
    """Copy what the SQLite WAL holds into the database file, without waiting on anyone (PASSIVE)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def _add_new_indexes(engine: Engine) -> None:
    """create_all skips tables that exist: give a kept data dir the indexes newer code declares."""
    for table in SQLModel.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


# SQLite has one writer at a time and makes the others wait by sleeping and retrying (1, 2, 5,
# 10, ... ms), which turns a busy moment into tens of ms of latency. Writers in this process
# queue on a lock instead. PostgreSQL locks rows itself: no lock there.
_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session for a short read-modify-write on a hot path (agents' calls, lease expiry)."""
    with _write_locks.get(engine) or nullcontext(), Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session_now(engine: Engine) -> Iterator[Session | None]:
    """A write_session if one starts without waiting (SQLite, no other writer); else None."""
    lock = _write_locks.get(engine)
    if lock is None or not _connection_free(engine) or not lock.acquire(blocking=False):
        yield None
        return
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        lock.release()


def _connection_free(engine: Engine) -> bool:
    """Whether the pool hands out a connection without waiting. The caller is the event loop: had
    it waited, it would wait for connections held by responses it has yet to send, and the server
    hung (bench/farm.py, 100 agents fetching G-code at once while the 15 were out)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return True
    return pool.checkedin() > 0 or pool.overflow() < pool._max_overflow


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session
