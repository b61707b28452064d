"""Which printer may take which job, retries, the starvation guard, and `jobs explain` agreeing with
the dispatcher; on SQLite and PostgreSQL like tests/test_dispatch.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from farm.coordinator import dispatch, explain, pipeline
from farm.coordinator.models import Job, Printer, Slice, utcnow
from farm.core import tags
from farm.core.states import InvalidMove, JobState, SliceState
from tests.coordinator_fixtures import add_printer, create_build, ready_build


def take(s: Session, printer: Printer) -> Job | None:
    return dispatch.claim(s, printer, 60)


def fail_print(s: Session, job: Job, printer: Printer) -> Job:
    dispatch.report(s, job, printer, fence=job.fence, state=JobState.PRINTING, lease_s=60)
    return dispatch.report(
        s, job, printer, fence=job.fence, state=JobState.FAILED, lease_s=60, error="nozzle clog", backoff_s=30
    )


def test_nozzle_and_pinned_printer(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        small, other = add_printer(s, "small-nozzle", "MINI"), add_printer(s, "other", "MINI")
        job = ready_build(s, models=["MINI"])[0]
        job.nozzle = 0.6
        s.add(job)
        s.commit()
        assert take(s, small) is None and take(s, other) is None  # both have 0.4 mm
        assert "needs 0.6 mm" in " ".join(_reasons(s, job, "small-nozzle"))
        small.nozzle = 0.6
        s.add(small)
        s.commit()
        assert take(s, small).id == job.id  # type: ignore[union-attr]

        pinned = ready_build(s, models=["MINI"])[0]
        pinned.pinned_printer = "small-nozzle"
        s.add(pinned)
        s.commit()
        assert take(s, other) is None  # pinned elsewhere
        assert "pinned to small-nozzle" in " ".join(_reasons(s, pinned, "other"))


def test_a_part_too_big_for_a_bed_never_reaches_that_printer(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        mini, mk4 = add_printer(s, "mini", "MINI"), add_printer(s, "mk4", "MK4")
        job = ready_build(s, models=["MK4"])[0]  # MK4 sliced; the MINI slice is still pending
        mini_slice = s.exec(
            select(Slice).where(Slice.build_id == job.build_id, Slice.printer_model == "MINI")
        ).one()
        pipeline.slice_finished(
            s, mini_slice, error="the part (200 x 200 mm) does not fit the MINI's 180 x 180 mm bed",
            gcode_sha256=None, meta={}, seconds=0.1,
        )  # fmt: skip
        s.commit()
        assert mini_slice.state == SliceState.FAILED
        assert take(s, mini) is None
        assert "does not fit the MINI" in " ".join(_reasons(s, job, "mini"))
        assert take(s, mk4).id == job.id  # type: ignore[union-attr]


def test_a_failed_print_retries_on_another_printer_after_a_back_off(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a, b = add_printer(s, "a", "MINI"), add_printer(s, "b", "MINI")
        job = ready_build(s, models=["MINI"])[0]
        job.max_attempts = 2
        s.add(job)
        s.commit()

        job = take(s, a)
        assert job is not None
        job = fail_print(s, job, a)
        assert (job.state, job.attempts, job.printer) == (JobState.READY, 1, None)
        assert job.error == "attempt 1 of 2 failed on a: nozzle clog"
        for p in (a, b):  # a had it fail, and a's bed needs clearing; b must wait out the back-off
            p.bed_clear = True
            s.add(p)
        s.commit()
        assert take(s, a) is None and take(s, b) is None
        assert any("back-off" in r for r in _reasons(s, job, "b"))
        assert any("failed on it before" in r for r in _reasons(s, job, "a"))

        job.retry_at = utcnow() - timedelta(seconds=1)  # the back-off has passed
        s.add(job)
        s.commit()
        assert take(s, a) is None
        job = take(s, b)
        assert job is not None and job.printer == "b"
        job = fail_print(s, job, b)
        assert (job.state, job.attempts) == (JobState.FAILED, 2)  # the last attempt: it stays failed

        b.bed_clear = True
        s.add(b)
        s.commit()
        job, rebuild = dispatch.retry(s, job)  # `farm jobs retry`: one more attempt, on any printer
        assert (job.state, job.max_attempts, job.failed_on, rebuild) == (JobState.READY, 3, "", [])
        assert take(s, a).id == job.id  # type: ignore[union-attr]
        with pytest.raises(InvalidMove, match="only a failed job can be retried"):
            dispatch.retry(s, job)


def test_a_job_waiting_past_the_starvation_limit_goes_first(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        p = add_printer(s, "p", "MINI")
        old_low = ready_build(s, models=["MINI"], priority=-5)[0]
        urgent = ready_build(s, models=["MINI"], priority=10)[0]
        assert dispatch.queue_for(s, p, starvation_s=3600, limit=10) == [urgent.id, old_low.id]
        old_low.created_at = utcnow() - timedelta(hours=2)
        s.add(old_low)
        s.commit()
        assert dispatch.queue_for(s, p, starvation_s=3600, limit=10) == [old_low.id, urgent.id]
        # A printer that cannot take the starving job still gets the queue's first that fits.
        other = add_printer(s, "other", "MK4S")
        mk4s_job = ready_build(s, models=["MK4S"])[0]
        assert dispatch.claim(s, other, 60, starvation_s=3600).id == mk4s_job.id  # type: ignore[union-attr]
        assert dispatch.claim(s, p, 60, starvation_s=3600).id == old_low.id  # type: ignore[union-attr]
        assert dispatch.claim(s, add_printer(s, "p2", "MINI"), 60, starvation_s=3600).id == urgent.id  # type: ignore[union-attr]


def test_explain_agrees_with_the_dispatcher(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        printers = [
            add_printer(s, "good", "MINI"),
            add_printer(s, "petg", "MINI"),
            add_printer(s, "other-model", "MK3S"),
            add_printer(s, "dirty-bed", "MINI"),
        ]
        printers[1].material = "PETG"
        printers[3].bed_clear = False
        s.add_all(printers)
        s.commit()
        job = ready_build(s, models=["MINI"], printer_model="MINI")[0]
        verdicts = {e["printer"]: e for e in explain.explain(s, job, starvation_s=3600)}
        assert verdicts["good"] == {"printer": "good", "eligible": True, "reasons": [], "position": 1}
        assert "PETG loaded, the job needs PLA" in verdicts["petg"]["reasons"][0]
        assert "for the MINI; this is the MK3S" in verdicts["other-model"]["reasons"][0]
        assert "not cleared" in verdicts["dirty-bed"]["reasons"][0]
        for p in printers:  # the dispatcher takes the job exactly where explain says it may
            s.refresh(job)
            claimed = take(s, p)
            assert (claimed is not None) == verdicts[p.name]["eligible"], p.name


def _reasons(s: Session, job: Job, printer: str) -> list[str]:
    s.refresh(job)
    return next(e["reasons"] for e in explain.explain(s, job, starvation_s=3600) if e["printer"] == printer)


def test_tags_a_job_needs_must_all_be_on_the_printer(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        plain, enclosed = add_printer(s, "plain", "MINI"), add_printer(s, "enclosed", "MINI")
        enclosed.tags = tags.canonical(["Enclosed", "hardened", "shelf-2"])
        plain.tags = tags.canonical(["hardened"])
        s.add_all([plain, enclosed])
        job = ready_build(s, models=["MINI"])[0]
        job.tags = tags.canonical(["hardened", "enclosed"])
        s.add(job)
        s.commit()
        assert "lacks the tag(s) enclosed" in " ".join(_reasons(s, job, "plain"))
        assert take(s, plain) is None
        assert take(s, enclosed).id == job.id  # type: ignore[union-attr]
        untagged = ready_build(s, models=["MINI"])[0]
        assert take(s, plain).id == untagged.id  # type: ignore[union-attr]  # no tags: any printer
    with pytest.raises(tags.BadTag, match="bad tag"):
        tags.canonical(["no spaces please"])


def test_a_power_group_heats_one_printer_at_a_time(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine, expire_on_commit=False) as s:
        a, b, c = add_printer(s, "a", "MINI"), add_printer(s, "b", "MINI"), add_printer(s, "c", "MINI")
        a.power_group = b.power_group = "circuit-1"
        s.add_all([a, b])
        s.commit()
        ready_build(s, models=["MINI"], copies=3)
        first = dispatch.claim(s, a, 60, heatup_s=300, heating_per_group=1)
        assert first is not None
        assert dispatch.claim(s, b, 60, heatup_s=300, heating_per_group=1) is None  # a is heating
        verdict = next(e for e in explain.explain(s, first, 3600) if e["printer"] == "b")
        assert verdict["printer"] == "b"  # explained for a ready job below
        waiting = s.exec(select(Job).where(Job.state == JobState.READY)).first()
        assert waiting is not None
        reasons = next(e for e in explain.explain(s, waiting, 3600) if e["printer"] == "b")["reasons"]
        assert "power group circuit-1 already has 1 printer(s) heating up" in reasons
        assert dispatch.claim(s, c, 60, heatup_s=300, heating_per_group=1) is not None  # no group
        first.started_at = utcnow() - timedelta(seconds=301)  # a has heated up
        s.add(first)
        s.commit()
        assert dispatch.claim(s, b, 60, heatup_s=300, heating_per_group=1) is not None


def test_copies_per_plate_make_one_job_per_plate_and_a_full_plate_that_does_not_fit_fails_alone(
    engine,  # type: ignore[no-untyped-def]
) -> None:
    assert pipeline.plates(10, 4) == [4, 4, 2] and pipeline.plates(3, 1) == [1, 1, 1]
    with Session(engine, expire_on_commit=False) as s:
        mini = add_printer(s, "mini", "MINI")
        build, jobs, _out = create_build(s, copies=10, printer_model="MINI", per_plate=4)
        s.commit()
        assert [j.copies for j in jobs] == [4, 4, 2]
        slices = {sl.copies: sl for sl in s.exec(select(Slice).where(Slice.build_id == build.id))}
        assert sorted(slices) == [2, 4]  # one G-code per plate size, shared by every printer of the model
        pipeline.slice_finished(
            s, slices[4], error="4 copies do not fit the MINI's bed; 3 fit per plate",
            gcode_sha256=None, meta={}, seconds=0.1,
        )  # fmt: skip
        pipeline.slice_finished(s, slices[2], error=None, gcode_sha256="2" * 64, meta={}, seconds=0.1)
        s.commit()
        states = [(j.copies, s.get(Job, j.id).state) for j in jobs]  # type: ignore[union-attr]
        assert states == [(4, JobState.FAILED), (4, JobState.FAILED), (2, JobState.READY)]
        assert "3 fit per plate" in (s.get(Job, jobs[0].id).error or "")  # type: ignore[union-attr]
        claimed = take(s, mini)
        assert claimed is not None and (claimed.id, claimed.slice_id) == (jobs[2].id, slices[2].id)
