"""Claims, leases and fencing on real SQLite (WAL) and real PostgreSQL, as the coordinator runs them."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from starlette.testclient import TestClient

from farm.coordinator import dispatch, heartbeats, moves, pipeline
from farm.coordinator.api import access, create_app
from farm.coordinator.db import make_async_engine, make_engine
from farm.coordinator.models import Job, JobSnapshot, Printer, Slice, Token, utcnow
from farm.core.settings import Settings
from farm.core.states import InvalidMove, JobState, PrinterState, SliceState, can_move, check_job_move
from tests.coordinator_fixtures import add_printer, create_build, fresh_database, ready_build


def test_state_machine_refuses_impossible_moves() -> None:
    assert can_move(JobState.READY, JobState.CLAIMED)
    assert not can_move(JobState.DONE, JobState.PRINTING)
    with pytest.raises(InvalidMove, match="done to printing"):
        check_job_move(JobState.DONE, JobState.PRINTING)


def test_claim_takes_priority_then_age_and_matches_the_model(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        mini = add_printer(s, "mini", "MINI")
        mk3 = add_printer(s, "mk3", "MK3S")
        old = ready_build(s, models=["MINI"], printer_model="MINI")[0]
        new_urgent = ready_build(s, models=["MINI"], printer_model="MINI", priority=5)[0]
        newer = ready_build(s, models=["MINI"], printer_model="MINI")[0]
        assert dispatch.claim(s, mk3, 60) is None  # only MINI G-code exists
        order = []
        for _ in range(3):
            job = dispatch.claim(s, mini, 60)
            assert job is not None
            order.append(job.id)
            dispatch.report(s, job, mini, fence=job.fence, state=JobState.FAILED, lease_s=60, error="x")
        assert order == [new_urgent.id, old.id, newer.id]


def test_a_batch_starts_longest_first_and_a_later_batch_waits_its_turn(engine) -> None:  # type: ignore[no-untyped-def]
    """Jobs of one priority queued within BATCH_S of each other start longest first (the batch
    ends on short prints); a job queued later waits behind the batch however long it is; a higher
    priority goes first however short. Both databases' claims, `queue_for` (what `farm jobs
    explain` shows) and the prefetch hint agree."""
    with Session(engine, expire_on_commit=False) as s:
        mini = add_printer(s, "mini", "MINI")

        def job(seconds: int, priority: int = 0) -> Job:
            made = ready_build(
                s, models=["MINI"], printer_model="MINI", priority=priority, print_time_s=seconds
            )
            return made[0]

        short, long, middle = job(100), job(300), job(200)
        later = job(900)
        later.created_at = short.created_at + timedelta(seconds=dispatch.BATCH_S + 1)
        s.add(later)
        urgent = job(10, priority=5)
        s.commit()
        expected = [urgent.id, long.id, middle.id, short.id, later.id]
        assert dispatch.queue_for(s, mini, 3600.0, limit=10) == expected
        urgent_slice = s.exec(select(Slice).where(Slice.build_id == urgent.build_id)).one()
        assert dispatch.next_gcode(s, mini, 3600.0) == urgent_slice.gcode_sha256
        order = []
        for _ in range(5):
            claimed = dispatch.claim(s, mini, 60)
            assert claimed is not None
            order.append(claimed.id)
            dispatch.report(
                s, claimed, mini, fence=claimed.fence, state=JobState.FAILED, lease_s=60, error="x"
            )
        assert order == expected
        assert dispatch.claim(s, mini, 60) is None


def test_racing_agents_never_share_a_job(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        printers = [add_printer(s, f"p{i}", "MINI") for i in range(8)]
        ready_build(s, models=["MINI"], copies=3)
    won: list[tuple[str, int]] = []

    def grab(p: Printer) -> None:
        with Session(engine, expire_on_commit=False) as s:
            job = dispatch.claim(s, s.get(Printer, p.name), 60)  # type: ignore[arg-type]
            if job is not None:
                won.append((p.name, job.id))  # type: ignore[arg-type]

    threads = [threading.Thread(target=grab, args=(p,)) for p in printers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job_ids = [j for _, j in won]
    assert len(job_ids) == 3 and len(set(job_ids)) == 3
    with Session(engine) as s:  # each winner's printer is bound to its job, and only the winners
        bound = {p.name: p.job_id for p in s.exec(select(Printer)).all() if p.job_id is not None}
        assert bound == dict(won)


def test_stale_fence_is_refused_and_lease_expiry_requeues(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a, b = add_printer(s, "a", "MINI"), add_printer(s, "b", "MINI")
        ready_build(s, models=["MINI"])
        job = dispatch.claim(s, a, lease_s=60)
        assert job is not None and job.state == JobState.CLAIMED
        first_fence = job.fence
        # The agent goes silent before uploading: its claim lapses and the job returns to the queue.
        job.lease_expires = utcnow() - timedelta(seconds=1)
        s.add(job)
        s.commit()
        dispatch.expire_leases(s, lease_s=60)
        s.refresh(job)
        assert job.state == JobState.READY and job.printer is None
        again = dispatch.claim(s, b, lease_s=60)
        assert again is not None and again.id == job.id and again.fence == first_fence + 1
        with pytest.raises(dispatch.StaleLease):
            dispatch.report(s, again, a, fence=first_fence, state=JobState.UPLOADING, lease_s=60)
        done = dispatch.report(s, again, b, fence=again.fence, state=JobState.UPLOADING, lease_s=60)
        assert done.state == JobState.UPLOADING


def test_heartbeat_notes_the_printer_and_extends_its_lease(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a = add_printer(s, "a", "MINI")
        ready_build(s, models=["MINI"])
    with Session(engine, expire_on_commit=False) as s:
        assert (
            heartbeats.heartbeat(s, "nobody", state="idle", message=None, progress=None, lease_s=60) is None
        )
    with Session(engine, expire_on_commit=False) as s:
        beat = heartbeats.heartbeat(s, "a", state="idle", message="ok", progress=None, lease_s=60)
        assert beat == heartbeats.Beat(None, None)
        # The claim endpoint heartbeats and claims in one session.
        job = dispatch.claim(s, s.get(Printer, "a"), lease_s=60)  # type: ignore[arg-type]
        assert job is not None and job.lease_expires is not None
        first_lease = job.lease_expires
    with Session(engine, expire_on_commit=False) as s:
        beat = heartbeats.heartbeat(s, "a", state="busy", message="heating", progress=5.0, lease_s=600)
        assert beat == heartbeats.Beat(job.id, job.fence)
    with Session(engine, expire_on_commit=False) as s:
        a = s.get(Printer, "a")  # type: ignore[assignment]
        held = s.get(Job, job.id)
        assert a.state == "busy" and a.message == "heating" and a.progress == 5.0
        assert held is not None and held.lease_expires is not None
        assert held.lease_expires.replace(tzinfo=None) > first_lease.replace(tzinfo=None) + timedelta(
            seconds=500
        )


def test_a_wanted_still_rides_on_heartbeats_and_claims(engine) -> None:  # type: ignore[no-untyped-def]
    """`farm printers snapshot` flags the printer; every way an agent calls in says so until the
    flag is cleared, with or without a job to hand out, on either database's path."""
    with Session(engine, expire_on_commit=False) as s:
        add_printer(s, "a", "MINI").snapshot_wanted = utcnow()
        s.commit()
        ready_build(s, models=["MINI"])
    status = {"state": "idle", "message": None, "progress": None, "lease_s": 60}
    with Session(engine, expire_on_commit=False) as s:
        assert heartbeats.heartbeat(s, "a", **status) == heartbeats.Beat(None, None, True)
    if engine.dialect.name == "postgresql":
        limits = {"starvation_s": 3600.0, "heatup_s": 300.0, "heating_per_group": 1}

        async def on_the_loop() -> tuple[Any, ...]:
            pool = make_async_engine(engine.url.render_as_string(hide_password=False), 2, durable=False)
            assert pool is not None
            try:
                beat = await heartbeats.heartbeat_pg(pool, "a", **status)
                claimed, wanted = await dispatch.claim_and_beat_pg(pool, "a", status, **limits)
                again, still_wanted = await dispatch.claim_and_beat_pg(pool, "a", status, **limits)
                return beat, claimed is not None, wanted, again.id == claimed.id, still_wanted
            finally:
                await pool.dispose()

        assert asyncio.run(on_the_loop()) == (heartbeats.Beat(None, None, True), True, True, True, True)
    with Session(engine, expire_on_commit=False) as s:
        a = s.get(Printer, "a")
        assert a is not None
        a.snapshot_wanted = None
        s.add(a)
        s.commit()
        beat = heartbeats.heartbeat(s, "a", **status)
        assert beat is not None and beat.snapshot is False


def test_a_kept_data_dir_takes_stills_without_a_job(engine) -> None:  # type: ignore[no-untyped-def]
    """JobSnapshot.job_id was NOT NULL before stills could be asked for on an idle printer: a
    database made then lets it be NULL once the coordinator starts on it, its rows kept."""
    url = engine.url.render_as_string(hide_password=False)
    key = "INTEGER" if engine.dialect.name == "sqlite" else "SERIAL"
    with engine.begin() as conn:
        conn.execute(sa.text('DROP TABLE "jobsnapshot"'))
        conn.execute(
            sa.text(
                f'CREATE TABLE "jobsnapshot" (id {key} PRIMARY KEY, job_id INTEGER NOT NULL, '
                "moment VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, media_type VARCHAR NOT NULL, "
                "taken_at TIMESTAMP NOT NULL)"
            )
        )
        conn.execute(sa.text('CREATE INDEX "ix_jobsnapshot_job_id" ON "jobsnapshot" (job_id)'))
        conn.execute(
            sa.text(
                "INSERT INTO jobsnapshot (job_id, moment, sha256, media_type, taken_at) "
                "VALUES (7, 'end', 'ab', 'image/png', '2026-12-01 10:00:00')"
            )
        )
    upgraded = make_engine(url)
    try:
        for again in (upgraded, make_engine(url)):  # once: the second start finds nothing to do
            columns = {c["name"]: c["nullable"] for c in sa.inspect(again).get_columns("jobsnapshot")}
            assert columns["job_id"] and columns["printer"]
        with Session(upgraded) as s:
            s.add(
                JobSnapshot(job_id=None, printer="a", moment="request", sha256="cd", media_type="image/jpeg")
            )
            s.commit()
            rows = s.exec(select(JobSnapshot).order_by(JobSnapshot.id)).all()  # type: ignore[arg-type]
            assert [(r.id, r.job_id, r.moment) for r in rows] == [(1, 7, "end"), (2, None, "request")]
        indexes = {i["name"] for i in sa.inspect(upgraded).get_indexes("jobsnapshot")}
        assert {"ix_jobsnapshot_job_id", "ix_jobsnapshot_printer"} <= indexes
    finally:
        upgraded.dispose()


def test_the_coordinators_event_loop_heartbeat_matches_the_session_one(engine) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL the coordinator heartbeats through an async engine with no session
    (heartbeats.heartbeat_pg), and a claim trusts what that heartbeat found. SQLite has no such path."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        assert make_async_engine(url, 2) is None
        return
    with Session(engine, expire_on_commit=False) as s:
        add_printer(s, "a", "MINI")
        ready_build(s, models=["MINI"], copies=2)

    async def beat(name: str, **status: Any) -> heartbeats.Beat | None:
        async_engine = make_async_engine(url, 2, durable=False)
        assert async_engine is not None
        try:
            return await heartbeats.heartbeat_pg(async_engine, name, lease_s=600, **status)
        finally:
            await async_engine.dispose()

    async def synchronous_commit(durable: bool) -> str:
        async_engine = make_async_engine(url, 2, durable=durable)
        assert async_engine is not None
        try:
            async with async_engine.connect() as conn:
                return str((await conn.exec_driver_sql("SHOW synchronous_commit")).scalar())
        finally:
            await async_engine.dispose()

    # The nowait pool (heartbeats, claims) does not wait for the disk; the other (reports) does.
    assert (asyncio.run(synchronous_commit(False)), asyncio.run(synchronous_commit(True))) == ("off", "on")
    assert asyncio.run(beat("nobody", state="idle", message=None, progress=None)) is None
    idle = asyncio.run(beat("a", state="idle", message="ok", progress=None, material="petg"))
    assert idle == heartbeats.Beat(None, None)
    with Session(engine, expire_on_commit=False) as s:
        a = s.get(Printer, "a")
        assert a is not None and a.state == "idle" and a.material == "PETG"
        a.material = "PLA"
        s.add(a)
        s.commit()
        job = dispatch.claim(s, a, lease_s=60, beat=idle)
        assert job is not None and job.state == JobState.CLAIMED and job.printer == "a"
    held = asyncio.run(beat("a", state="busy", message="heating", progress=5.0))
    assert held == heartbeats.Beat(job.id, job.fence)
    with Session(engine, expire_on_commit=False) as s:
        # A claim after a heartbeat that found a bound job hands back that job, not another.
        again = dispatch.claim(s, s.get(Printer, "a"), lease_s=60, beat=held)  # type: ignore[arg-type]
        assert again is not None and (again.id, again.fence) == (job.id, job.fence)
        stored = s.get(Job, job.id)
        assert stored is not None and stored.lease_expires is not None
        assert stored.lease_expires.replace(tzinfo=None) > utcnow().replace(tzinfo=None) + timedelta(
            seconds=500
        )
        assert s.get(Printer, "a").message == "heating"  # type: ignore[union-attr]


def test_the_coordinators_event_loop_claim_is_its_heartbeat_and_one_statement(postgres: str) -> None:
    """On PostgreSQL the coordinator claims with dispatch.claim_pg: each round trip is a wait on
    a busy coordinator, so the heartbeat also returns the printer row, and the claim picks (a
    starving job first), claims and binds in one statement. Its answers match `claim`'s."""
    engine = fresh_database(postgres)
    url = engine.url.render_as_string(hide_password=False)
    with Session(engine, expire_on_commit=False) as s:
        add_printer(s, "a", "MINI")
        first, second = ready_build(s, models=["MINI"], copies=2)
    status = {"state": "idle", "message": None, "progress": None, "lease_s": 60}
    limits = {"starvation_s": 3600.0, "heatup_s": 300.0, "heating_per_group": 1}

    async def claims() -> list[tuple[Any, int]]:
        async_engine = make_async_engine(url, 2, durable=False)
        assert async_engine is not None
        statements: list[str] = []
        sa.event.listen(async_engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        try:
            await dispatch.rehearse_pg(async_engine)
            got = []
            for _ in range(3):  # a claim, the same again (the printer holds it), nothing fits
                statements.clear()
                got.append((await dispatch.claim_pg(async_engine, "a", status, **limits), len(statements)))
                if got[-1][0] is not None and len(got) == 2:
                    with Session(engine) as s:  # the print ends; the next claim takes the next job
                        s.get(Job, got[-1][0].id).state = JobState.DONE  # type: ignore[union-attr]
                        s.get(Printer, "a").job_id = None  # type: ignore[union-attr]
                        s.commit()
            with pytest.raises(dispatch.NoSuchPrinter):
                await dispatch.claim_pg(async_engine, "nobody", status, **limits)
            return got
        finally:
            await async_engine.dispose()

    (one, n1), (again, n2), (two, n3) = asyncio.run(claims())
    assert (one.id, one.state, one.printer, n1) == (first.id, JobState.CLAIMED, "a", 2)
    assert (again.id, again.fence, n2) == (first.id, one.fence, 2)  # the heartbeat found it held
    assert (two.id, n3) == (second.id, 2)
    with Session(engine) as s:
        assert s.get(Printer, "a").job_id == second.id  # type: ignore[union-attr]
        assert s.get(Job, second.id).fence == two.fence  # type: ignore[union-attr]
    engine.dispose()


def test_the_event_loop_claim_keeps_the_bed_and_power_group_gates(postgres: str) -> None:
    """claim_pg and claim decide alike: not while the bed holds a part, and not while another
    printer of the power group heats up (at most `heating_per_group` at once)."""
    engine = fresh_database(postgres)
    url = engine.url.render_as_string(hide_password=False)
    with Session(engine, expire_on_commit=False) as s:
        a, b, c = (add_printer(s, n, "MINI") for n in ("a", "b", "c"))
        a.power_group = b.power_group = "breaker-1"
        c.bed_clear = False
        s.add_all([a, b, c])
        s.commit()
        ready_build(s, models=["MINI"], copies=3)
    status = {"state": "idle", "message": None, "progress": None, "lease_s": 60}

    async def claims(*asks: tuple[str, int]) -> list[Any]:
        async_engine = make_async_engine(url, 2, durable=False)
        assert async_engine is not None
        try:
            return [
                await dispatch.claim_pg(
                    async_engine, name, status, starvation_s=3600, heatup_s=300, heating_per_group=limit
                )
                for name, limit in asks
            ]
        finally:
            await async_engine.dispose()

    with Session(engine, expire_on_commit=False) as s:  # what `claim` says, for comparison
        assert dispatch.claim(s, s.get(Printer, "c"), 60) is None  # type: ignore[arg-type]
    on_c, on_a, on_b, on_b_two = asyncio.run(claims(("c", 1), ("a", 1), ("b", 1), ("b", 2)))
    assert on_c is None  # a part is still on c's bed
    assert on_a is not None and on_a.printer == "a"
    assert on_b is None  # a is heating up in the same power group
    assert on_b_two is not None and on_b_two.printer == "b"  # two may heat at once
    with Session(engine, expire_on_commit=False) as s:
        cleared = s.get(Printer, "c")
        assert cleared is not None
        cleared.bed_clear = True
        s.add(cleared)
        s.commit()
    (on_c,) = asyncio.run(claims(("c", 1)))
    assert on_c is not None and on_c.printer == "c"  # not in a power group
    engine.dispose()


def test_a_job_on_a_printer_is_never_requeued_by_lease_expiry(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a = add_printer(s, "a", "MINI")
        ready_build(s, models=["MINI"])
        job = dispatch.claim(s, a, lease_s=60)
        assert job is not None
        dispatch.report(s, job, a, fence=job.fence, state=JobState.UPLOADING, lease_s=60)
        dispatch.report(s, job, a, fence=job.fence, state=JobState.PRINTING, lease_s=60)
        job.lease_expires = utcnow() - timedelta(seconds=1)
        a.last_seen = utcnow() - timedelta(seconds=120)
        s.add_all([job, a])
        s.commit()
        dispatch.expire_leases(s, lease_s=60)
        s.refresh(job)
        s.refresh(a)
        assert job.state == JobState.PRINTING and job.printer == "a"
        assert a.state == "offline"
        # The restarted agent claims again and gets its own job back, not a new one.
        assert dispatch.claim(s, a, lease_s=60).id == job.id  # type: ignore[union-attr]


def test_failed_slices_fail_the_build_with_the_reason(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        build, jobs, _ = create_build(s, source_name="big.stl", printer_model="MINI")
        sl = s.exec(select(Slice).where(Slice.build_id == build.id)).one()
        pipeline.slice_finished(s, sl, error="too big for the bed", gcode_sha256=None, meta={}, seconds=1)
        s.commit()
        s.refresh(jobs[0])
        assert sl.state == SliceState.FAILED
        assert jobs[0].state == JobState.FAILED and "too big for the bed" in (jobs[0].error or "")


def test_material_and_colour_must_match(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        pla = add_printer(s, "pla", "MINI")
        petg = add_printer(s, "petg", "MINI")
        petg.material, petg.color = "PETG", "Black"
        s.add(petg)
        s.commit()
        build, jobs, _ = create_build(s, material="petg", color="black", printer_model="MINI")
        sl = s.exec(select(Slice).where(Slice.build_id == build.id)).one()
        pipeline.slice_finished(s, sl, error=None, gcode_sha256="1" * 64, meta={}, seconds=0.1)
        s.commit()
        assert dispatch.claim(s, pla, 60) is None  # a PETG job never reaches a PLA printer
        job = dispatch.claim(s, petg, 60)
        assert job is not None and job.id == jobs[0].id


def test_bed_must_be_cleared_unless_the_printer_ejects(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        manual = add_printer(s, "manual", "MINI")
        ready_build(s, models=["MINI"], copies=2)
        job = dispatch.claim(s, manual, 60)
        assert job is not None
        for state in (JobState.UPLOADING, JobState.PRINTING, JobState.DONE):
            dispatch.report(s, job, manual, fence=job.fence, state=state, lease_s=60)
        assert not manual.bed_clear
        assert dispatch.claim(s, manual, 60) is None  # the part is still on the bed
        manual.bed_clear = True
        assert dispatch.claim(s, manual, 60) is not None

        ejector = add_printer(s, "ejector", "MINI")
        ejector.auto_eject = True
        ready_build(s, models=["MINI"])
        job = dispatch.claim(s, ejector, 60)
        assert job is not None
        for state in (JobState.UPLOADING, JobState.PRINTING, JobState.DONE):
            dispatch.report(s, job, ejector, fence=job.fence, state=state, lease_s=60)
        assert ejector.bed_clear


def test_cancel_a_queued_job_and_not_an_ended_one(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a = add_printer(s, "a", "MINI")
        job = ready_build(s, models=["MINI"])[0]
        assert dispatch.cancel(s, job).state == JobState.CANCELLED
        assert dispatch.claim(s, a, 60) is None
        with pytest.raises(InvalidMove, match="already ended"):
            dispatch.cancel(s, job)


def test_the_agents_statements_stay_on_the_indexes_as_prepared_statements(postgres: str) -> None:
    """psycopg prepares a statement on its 5th use, and PostgreSQL may then run it with a generic
    plan, one that cannot see the parameters. The agents' statements must not read every job
    there: the job table keeps every job the farm ever ran. (The claim's check for starving jobs
    did, as an EXISTS: 1.4 ms a claim with 11,000 jobs, and growing.)"""
    engine = fresh_database(postgres)
    url = engine.url.render_as_string(hide_password=False)
    with Session(engine, expire_on_commit=False) as s:
        for name in ("a", "b"):
            p = add_printer(s, name, "MINI")
            p.power_group = "breaker-1"  # so that the heating check runs too
            s.add(p)
        s.commit()
        ready_build(s, models=["MINI"], copies=40)
    with engine.connect() as conn:  # twenty thousand jobs the farm printed before
        columns = [c.name for c in Job.__table__.columns if c.name not in ("id", "state")]  # type: ignore[attr-defined]
        listed = ", ".join(columns)
        conn.execute(
            sa.text(
                f"INSERT INTO job ({listed}, state) SELECT {listed}, 'DONE' FROM job, generate_series(1, 500)"
            )
        )
        conn.execute(sa.text("ANALYZE"))
        conn.commit()
    plans: list[str] = []

    async def claims() -> list[Any]:
        options = "-c timezone=UTC -c plan_cache_mode=force_generic_plan -c client_min_messages=log"
        explained = " -c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0"
        async_engine = sa.ext.asyncio.create_async_engine(
            url, pool_size=1, max_overflow=0, connect_args={"options": options + explained}
        )

        @sa.event.listens_for(async_engine.sync_engine, "connect")
        def _notices(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_notice_handler(lambda d: plans.append(d.message_primary))

        status = {"state": "idle", "message": None, "progress": None, "lease_s": 60}
        limits = {"starvation_s": 3600.0, "heatup_s": 300.0, "heating_per_group": 40}
        try:
            await dispatch.rehearse_pg(async_engine)  # the 5 uses that get each statement prepared
            got = []
            for _ in range(6):  # so is the heating check, which the rehearsal skips
                for name in ("a", "b"):
                    got.append(await dispatch.claim_pg(async_engine, name, status, **limits))
                    await heartbeats.heartbeat_pg(async_engine, name, **status)
            plans.clear()
            for name in ("a", "b"):  # each holds its job: hand it back, then free the printer
                await dispatch.claim_pg(async_engine, name, status, **limits)
                with Session(engine) as s:
                    s.get(Printer, name).job_id = None  # type: ignore[union-attr]
                    s.exec(sa.update(Job).where(Job.printer == name).values(state=JobState.DONE))  # type: ignore[call-overload]
                    s.commit()
                got.append(await dispatch.claim_pg(async_engine, name, status, **limits))
                await heartbeats.heartbeat_pg(async_engine, name, **status)
            return got
        finally:
            await async_engine.dispose()

    got = asyncio.run(claims())
    assert all(job is not None for job in got)
    explained = [p for p in plans if "Query Text" in p]
    generic = [p for p in explained if "$1" in p]  # a generic plan shows parameters, not values
    assert any("WITH queue_window AS" in p and "pick AS" in p for p in generic), explained  # the claim
    assert any("min(job.created_at)" in p for p in generic)  # its starving check
    assert any("count(*)" in p for p in generic)  # the heating check
    assert any("beat_printer" in p for p in generic)  # the heartbeat
    for plan in explained:
        assert "Seq Scan on job" not in plan, plan
    engine.dispose()


@pytest.mark.parametrize("path", ["event loop", "session"])
def test_a_power_group_claiming_at_once_starts_no_more_than_allowed(postgres: str, path: str) -> None:
    """Staggered start holds when a group's printers claim at the same moment, as a farm's agents
    do once a batch is sliced: each claim counts the others heating under the group's lock, so
    two cannot both see room."""
    engine = fresh_database(postgres)
    url = engine.url.render_as_string(hide_password=False)
    names = [f"p{i}" for i in range(6)]
    with Session(engine, expire_on_commit=False) as s:
        for name in names:
            p = add_printer(s, name, "MINI")
            p.power_group = "breaker-1"
            s.add(p)
        s.commit()
        ready_build(s, models=["MINI"], copies=6)
    status = {"state": "idle", "message": None, "progress": None, "lease_s": 60}
    limits = {"starvation_s": 3600.0, "heatup_s": 300.0, "heating_per_group": 2}

    async def on_the_event_loop() -> list[Any]:
        async_engine = make_async_engine(url, len(names), durable=False)
        assert async_engine is not None
        try:
            await dispatch.rehearse_pg(async_engine)
            claims = (dispatch.claim_pg(async_engine, n, status, **limits) for n in names)
            return await asyncio.gather(*claims)
        finally:
            await async_engine.dispose()

    def in_sessions() -> list[Any]:
        got: list[Any] = [None] * len(names)
        start = threading.Barrier(len(names))

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _dawdle(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if "count(*)" in statement:  # between counting and claiming: where racers overtake
                time.sleep(0.2)

        def grab(i: int) -> None:
            with Session(engine, expire_on_commit=False) as s:
                printer = s.get(Printer, names[i])
                start.wait()
                got[i] = dispatch.claim(s, printer, 60, **limits)  # type: ignore[arg-type]

        threads = [threading.Thread(target=grab, args=(i,)) for i in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got

    got = asyncio.run(on_the_event_loop()) if path == "event loop" else in_sessions()
    started = [job for job in got if job is not None]
    assert len(started) == 2, got  # heating_per_group, though six printers asked at once
    with Session(engine) as s:
        claimed = s.exec(select(Job).where(Job.state == JobState.CLAIMED)).all()
        assert sorted(j.printer or "" for j in claimed) == sorted(j.printer for j in started)
    engine.dispose()


def test_a_kept_database_gains_owners_and_token_expiry_and_the_artifact_rules_run_on_it(engine) -> None:  # type: ignore[no-untyped-def]
    """A data dir from before owners and revocation: make_engine adds the columns (nullable), and
    the artifact rules' queries (farm/coordinator/api/access.py) run on the upgraded database."""
    new = {"token": ("expires_at", "revoked_at"), "build": ("owner",), "job": ("owner",)}
    with engine.begin() as conn:
        for table, columns in new.items():
            for column in columns:
                conn.execute(sa.text(f'ALTER TABLE "{table}" DROP COLUMN "{column}"'))
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    upgraded = make_engine(url)
    try:
        have = {t: {c["name"] for c in sa.inspect(upgraded).get_columns(t)} for t in new}
        assert all(set(columns) <= have[t] for t, columns in new.items()), have
        with Session(upgraded) as session:
            printer = add_printer(session, "p1", "MINI")
            ready_build(session, models=["MINI"])  # made before owners: it has none
            assert dispatch.claim(session, printer, 60) is not None
            gcode = "1" * 64

            def reads(role: str, **fields: str) -> bool:
                token = Token(name=fields.pop("name", "t"), role=role, secret_sha256="x", **fields)
                return access.may_read_artifact(session, token, gcode, 3600)

            assert reads("agent", printer="p1") and not reads("agent", printer="p2")
            assert reads("viewer") and not reads("submitter", name="alice")  # nobody's build
            session.add(Token(name="old", role="viewer", secret_sha256="y", revoked_at=utcnow()))
            session.commit()
    finally:
        upgraded.dispose()


def _claimed_and_uploading(s: Session, printer: Printer, *, max_attempts: int = 1) -> Job:
    job = ready_build(s, models=["MINI"])[0]
    job.max_attempts = max_attempts
    s.add(job)
    s.commit()
    claimed = dispatch.claim(s, printer, lease_s=60)
    assert claimed is not None and claimed.id == job.id
    dispatch.report(s, job, printer, fence=job.fence, state=JobState.UPLOADING, lease_s=60, progress=40.0)
    return job


def _lapsed_claim(s: Session, a: Printer) -> Job:
    job = ready_build(s, models=["MINI"])[0]
    assert dispatch.claim(s, a, lease_s=60) is not None
    job.lease_expires = utcnow() - timedelta(seconds=1)
    s.add(job)
    s.commit()
    assert dispatch.expire_leases(s, lease_s=60) == 1
    return job


def _handed_back(s: Session, a: Printer) -> Job:
    job = _claimed_and_uploading(s, a)
    dispatch.report(s, job, a, fence=job.fence, state=JobState.READY, lease_s=60)
    return job


def _failed_attempt(s: Session, a: Printer) -> Job:
    job = _claimed_and_uploading(s, a, max_attempts=3)
    dispatch.report(s, job, a, fence=job.fence, state=JobState.PRINTING, lease_s=60, progress=50.0)
    dispatch.report(s, job, a, fence=job.fence, state=JobState.FAILED, lease_s=60, error="spaghetti")
    return job


def _operator_retry(s: Session, a: Printer) -> Job:
    job = _claimed_and_uploading(s, a)
    dispatch.report(s, job, a, fence=job.fence, state=JobState.PRINTING, lease_s=60, remaining_s=90)
    dispatch.report(s, job, a, fence=job.fence, state=JobState.FAILED, lease_s=60, error="spaghetti")
    assert job.state == JobState.FAILED
    dispatch.retry(s, job)
    return job


@pytest.mark.parametrize("back", [_lapsed_claim, _handed_back, _failed_attempt, _operator_retry])
def test_every_way_back_to_the_queue_forgets_the_same_fields(engine, back) -> None:  # type: ignore[no-untyped-def]
    """A lapsed claim, an agent handing its job back, a failed attempt with attempts left and an
    operator's retry all leave the job as if never claimed (farm/coordinator/moves.py `requeue`), and its
    printer no longer holding it. A lapsed claim used to leave Printer.job_id pointing at it."""
    with Session(engine, expire_on_commit=False) as s:
        a = add_printer(s, "a", "MINI")
        job = back(s, a)
        s.refresh(job)
        s.refresh(a)
        forgotten = (job.printer, job.slice_id, job.lease_expires, job.progress, job.remaining_s)
        forgotten += (job.finished_at,)
        assert (job.state, forgotten, a.job_id) == (JobState.READY, (None,) * 6, None)


def test_the_claim_statements_write_what_the_claim_move_says(engine) -> None:  # type: ignore[no-untyped-def]
    """Both databases' claims are UPDATEs made from farm/coordinator/moves.py CLAIM: the row they leave is the
    one CLAIM.apply makes of the ready row, and the printer is bound to it (moves.BIND)."""
    with Session(engine, expire_on_commit=False) as s:
        a = add_printer(s, "a", "MINI")
        job = ready_build(s, models=["MINI"])[0]
        s.refresh(job)
        expected = Job(**job.model_dump())
        sl = s.exec(select(Slice).where(Slice.build_id == job.build_id, Slice.printer_model == "MINI")).one()
        claimed = dispatch.claim(s, a, lease_s=60)
        assert claimed is not None
        moves.CLAIM.apply(
            expected, printer="a", slice_id=sl.id, lease_expires=claimed.lease_expires, now=claimed.started_at
        )
        assert claimed.model_dump() == expected.model_dump()
        assert (expected.state, expected.fence) == (JobState.CLAIMED, job.fence)
    with Session(engine) as s:
        assert s.get(Printer, "a").job_id == job.id  # type: ignore[union-attr]


def test_a_printer_state_is_one_of_the_known_ones(tmp_path: Path) -> None:
    """The heartbeat, the claim and the registration say the printer's state as a PrinterState:
    anything else is a 422 (it used to be stored as it came), and the stored state reads back as one."""
    app = create_app(Settings(data_dir=tmp_path))
    token = (tmp_path / "admin.token").read_text().strip()
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            reg = {"printer": "p", "model": "MINI", "protocol": "prusalink"}
            assert client.post("/api/agents/register", json=reg).status_code == 200
            for path, body in (
                ("/api/agents/heartbeat", {"printer": "p", "state": "on fire"}),
                ("/api/agents/claim", {"printer": "p", "state": "IDLE"}),
                ("/api/agents/register", {**reg, "state": "melted"}),
            ):
                assert client.post(path, json=body).status_code == 422, path
            busy = client.post("/api/agents/heartbeat", json={"printer": "p", "state": "busy"})
            assert busy.status_code == 200
        with Session(app.state.farm.engine) as s:
            stored = s.get(Printer, "p")
            assert stored is not None and stored.state is PrinterState.BUSY
    finally:
        app.state.farm.engine.dispose()
