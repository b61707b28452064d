"""Which moves raise which notification events, and that each is written in the move's own
transaction (#18). The database is real (SQLite, and PostgreSQL where it runs); the moves are
the coordinator's own functions."""

from __future__ import annotations

import json
import threading

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from farm.coordinator import db, dispatch, notify, pipeline
from farm.coordinator.ops_tables import NotifyDelivery, NotifyEvent, NotifyTarget, NotifyWatch
from farm.core.states import JobState
from tests.coordinator_fixtures import add_printer, create_build, ready_build


def raised(session: Session) -> list[tuple[str, dict]]:
    """Events not yet fanned out, oldest first; then forget them."""
    events = session.exec(select(NotifyEvent).where(col(NotifyEvent.fanned_out).is_(False))).all()
    out = [(e.kind, json.loads(e.data_json)) for e in sorted(events, key=lambda e: e.id or 0)]
    for e in events:
        session.delete(e)
    session.commit()
    return out


def watched(session: Session) -> list[str]:
    notify.watch(session)
    session.commit()
    return [kind for kind, _ in raised(session)]


def test_printer_states_the_bed_and_the_queue(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        printer = add_printer(session, "p1", "MINI")
        assert watched(session) == []  # first seen: nothing to compare with
        for state, expected in (
            ("printing", []),
            ("attention", ["printer.attention"]),
            ("offline", ["printer.offline"]),
            ("idle", ["printer.back"]),
        ):
            printer.state = state
            session.add(printer)
            session.commit()
            assert watched(session) == expected, state

        [job] = ready_build(session, models=["MINI"])
        assert raised(session) == [] and watched(session) == []  # the queue is busy now
        claimed = dispatch.claim(session, printer, 60)
        assert claimed is not None and claimed.id == job.id
        for state in (JobState.UPLOADING, JobState.PRINTING, JobState.DONE):
            dispatch.report(session, job, printer, fence=job.fence, state=state, lease_s=60)
        # The print's end, the bed to clear: written with the report that moved the job.
        assert sorted(k for k, _ in raised(session)) == ["job.done", "printer.bed"]
        assert watched(session) == ["queue.empty"]
        assert watched(session) == []  # said once


def test_a_failure_with_attempts_left_is_no_failure_yet(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        printer = add_printer(session, "p1", "MINI")
        printer.auto_eject = True
        [job] = ready_build(session, models=["MINI"])
        job.max_attempts = 2
        session.add_all([printer, job])
        session.commit()
        raised(session)
        for attempt in (1, 2):
            job.retry_at, job.failed_on = None, ""  # no back-off, and the same printer may try again
            session.add(job)
            session.commit()
            claimed = dispatch.claim(session, printer, 60)
            assert claimed is not None and claimed.id == job.id
            for state in (JobState.UPLOADING, JobState.PRINTING):
                dispatch.report(session, job, printer, fence=job.fence, state=state, lease_s=60)
            dispatch.report(
                session, job, printer, fence=job.fence, state=JobState.FAILED, lease_s=60, error="spaghetti"
            )
            events = raised(session)
            if attempt == 1:
                assert job.state == JobState.READY and events == []
            else:
                assert job.state == JobState.FAILED and [k for k, _ in events] == ["job.failed"]
                assert "spaghetti" in events[0][1]["error"] and events[0][1]["printer"] == "p1"


def test_a_failed_build_fails_its_jobs(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        build, _jobs, _out = create_build(session, source_name="part.py", copies=2)
        session.commit()
        pipeline.cad_finished(
            session,
            build,
            error="SyntaxError: line 1",
            stl_sha256=None,
            threemf_sha256=None,
            bbox=None,
            seconds=1.5,
        )
        session.commit()
        events = raised(session)
        assert sorted(k for k, _ in events) == ["build.failed", "job.failed", "job.failed"]
        assert all("SyntaxError" in d["error"] for _, d in events)


def test_fan_out_only_to_targets_that_want_the_event(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        wants_done = NotifyTarget(url="http://127.0.0.1:9/a", events=",job.done,")
        wants_all = NotifyTarget(url="http://127.0.0.1:9/b")
        session.add_all([wants_done, wants_all])
        session.commit()
        notify.raise_event(session, "job.done", {"job": 1})
        notify.raise_event(session, "queue.empty", {})
        session.commit()
        assert notify.fan_out(session) == 3
        session.commit()
        deliveries = session.exec(select(NotifyDelivery)).all()
        assert sorted(d.target_id for d in deliveries) == sorted([wants_done.id, wants_all.id, wants_all.id])
        notify.raise_event(session, "printer.back", {})  # nobody here wants it... but wants_all does
        session.delete(wants_all)
        session.commit()
        assert notify.fan_out(session) == 0
        session.commit()
        assert session.exec(select(NotifyEvent).where(NotifyEvent.kind == "printer.back")).all() == []


def test_deliveries_go_out_from_either_database(engine: Engine) -> None:
    """deliver_due's claim (FOR UPDATE SKIP LOCKED on PostgreSQL) and outcome, against a receiver."""
    from farm.core.settings import Settings
    from tests.test_notify import SECRET, Receiver

    receiver = Receiver()
    receiver.up()
    try:
        with Session(engine, expire_on_commit=False) as session:
            session.add(NotifyTarget(url=f"http://127.0.0.1:{receiver.port}/", secret=SECRET))
            session.commit()
            notify.raise_event(session, "queue.empty", {"message": "nothing left to print"})
            session.commit()
        assert notify.one_round(engine, Settings()) == 1
        assert [json.loads(d["body"])["event"] for d in receiver.got] == ["queue.empty"]
        with Session(engine) as session:
            [delivery] = session.exec(select(NotifyDelivery)).all()
            assert (delivery.state, delivery.attempts, delivery.last_status) == ("sent", 1, 204)
        assert notify.one_round(engine, Settings()) == 0  # sent once
    finally:
        receiver.down()


def test_a_round_with_nothing_new_leaves_the_writers_lock_to_the_agents(engine: Engine) -> None:
    """The agents' heartbeats and claims queue on one lock (SQLite): a notifier round that only
    looks must not take it (it held it 30-110 ms every 2 s at 1,000 agents)."""
    from farm.core.settings import Settings

    with Session(engine, expire_on_commit=False) as session:
        printer = add_printer(session, "p1", "MINI")
    notify.one_round(engine, Settings())  # first sight: remembered
    lock = db._write_locks.get(engine) or threading.Lock()  # PostgreSQL has none: the same test
    with lock:
        quiet = threading.Thread(target=notify.one_round, args=(engine, Settings()))
        quiet.start()
        quiet.join(10)
        assert not quiet.is_alive(), "a round with nothing to write waited for the writers' lock"
    with Session(engine, expire_on_commit=False) as session:
        printer.state = "offline"
        session.add(printer)
        session.commit()
        notify.one_round(engine, Settings())  # something to write: it does, in its turn
        kinds = [e.kind for e in session.exec(select(NotifyEvent)).all()]
    assert kinds == []  # no target wants it: fanned out to nobody, dropped
    with Session(engine) as session:
        watched = session.exec(select(NotifyWatch).where(NotifyWatch.key == "printer:p1")).one()
        assert watched.value == "offline"
