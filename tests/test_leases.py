"""Every stage under a lease: a CAD build or a slice is its worker's only while the worker heartbeats.

A worker killed mid-build (SIGKILL, the OOM killer, a lost host) takes its Dramatiq message with it
(it sits in the dead worker's ack set); the coordinator sends the work again once the lease runs
out, without a restart. And a retried job whose build failed gets that build made again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from farm.coordinator import dispatch, pipeline
from farm.coordinator.models import Build, Job, Slice, utcnow
from farm.coordinator.ops_tables import MetricTally
from farm.core.queue import CAD_ACTOR, CAD_QUEUE, SLICE_ACTOR, SLICE_QUEUE
from farm.core.states import BuildStage, InvalidMove, JobState, SliceState
from tests.conftest import RunningFarm, running_farm, wait_until
from tests.coordinator_fixtures import create_build

LEASE_S, HEARTBEAT_S, RESEND_S = 4, 1, 8  # the farm below; the defaults are 45 s, 10 s and 90 s


def new_build(s: Session, name: str = "part.py", printer_model: str | None = "MK3S") -> tuple[Build, Job]:
    build, jobs, _out = create_build(s, source_name=name, source_sha256="1" * 64, printer_model=printer_model)
    s.commit()
    return build, jobs[0]


def lapse(s: Session, row: Build | Slice) -> None:
    """Let the lease run out, as when its worker stops heartbeating."""
    past = utcnow() - timedelta(seconds=1)
    if isinstance(row, Build):
        row.cad_lease_expires = past
    else:
        row.lease_expires = past
    s.add(row)
    s.commit()


def test_cad_lease_refuses_a_live_duplicate_and_passes_on_once_it_lapses(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        build, job = new_build(s)
        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)
        s.commit()
        assert not pipeline.cad_started(s, build, worker="b:2", lease_s=60)  # a concurrent duplicate
        assert not pipeline.cad_heartbeat(s, build, worker="b:2", lease_s=60)
        assert pipeline.cad_heartbeat(s, build, worker="a:1", lease_s=60)
        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)  # its own message, retried
        assert pipeline.expire_work_leases(s, attempts=3) == []  # live: nothing to send
        s.commit()

        lapse(s, build)  # worker a died
        out = pipeline.expire_work_leases(s, attempts=3)
        s.commit()
        assert out == [pipeline.Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,))]
        assert (build.stage, build.cad_worker) == (BuildStage.QUEUED, None)
        assert pipeline.cad_started(s, build, worker="b:2", lease_s=60)  # the re-sent message
        assert not pipeline.cad_heartbeat(s, build, worker="a:1", lease_s=60)  # a's is gone
        s.commit()

        lapse(s, build)
        assert len(pipeline.expire_work_leases(s, attempts=3)) == 1
        assert pipeline.cad_started(s, build, worker="c:3", lease_s=60)
        lapse(s, build)
        assert pipeline.expire_work_leases(s, attempts=3) == []  # a third worker lost: it gives up
        s.commit()
        assert build.stage == BuildStage.FAILED and "lost 3 times" in (build.error or "")
        s.refresh(job)
        assert job.state == JobState.FAILED


def test_a_late_result_from_a_lapsed_worker_still_counts(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        build, _job = new_build(s)
        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)
        lapse(s, build)
        assert len(pipeline.expire_work_leases(s, attempts=3)) == 1
        out = pipeline.cad_finished(
            s, build, error=None, stl_sha256="2" * 64, threemf_sha256=None, bbox=None, seconds=1.0
        )
        s.commit()
        assert build.stage == BuildStage.SLICING and [o.actor for o in out] == [SLICE_ACTOR]
        assert not pipeline.cad_started(s, build, worker="b:2", lease_s=60)  # the re-sent one: past CAD


def test_slice_lease(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        build, job = new_build(s, "part.stl")
        sl = s.exec(select(Slice).where(Slice.build_id == build.id)).one()
        assert pipeline.slice_started(s, sl, worker="a:1", lease_s=60)
        assert not pipeline.slice_started(s, sl, worker="b:2", lease_s=60)
        s.commit()
        assert pipeline.expire_work_leases(s, attempts=3) == []
        lapse(s, sl)
        assert pipeline.expire_work_leases(s, attempts=3) == [
            pipeline.Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,))
        ]
        s.commit()
        assert sl.worker is None and sl.state == SliceState.PENDING
        assert pipeline.slice_started(s, sl, worker="b:2", lease_s=60)
        assert not pipeline.slice_heartbeat(s, sl, worker="a:1", lease_s=60)
        pipeline.slice_finished(s, sl, error=None, gcode_sha256="3" * 64, meta={}, seconds=1.0)
        s.commit()
        s.refresh(job)
        assert (build.stage, job.state) == (BuildStage.READY, JobState.READY)
        assert not pipeline.slice_started(s, sl, worker="c:3", lease_s=60)  # done: a duplicate


def test_work_sent_but_never_begun_is_sent_again(engine: Engine) -> None:
    """A dead worker may hold messages it never began (Dramatiq prefetches): those are sent again."""
    with Session(engine, expire_on_commit=False) as s:
        queued, _ = new_build(s)
        meshed, _ = new_build(s, "part.stl")
        sl = s.exec(select(Slice).where(Slice.build_id == meshed.id)).one()
        assert pipeline.expire_work_leases(s, attempts=3, resend_s=60) == []  # just sent
        queued.updated_at = sl.created_at = utcnow() - timedelta(seconds=61)
        s.add_all([queued, sl])
        s.commit()
        assert pipeline.expire_work_leases(s, attempts=3, resend_s=60) == [
            pipeline.Outgoing(CAD_QUEUE, CAD_ACTOR, (queued.id,)),
            pipeline.Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,)),
        ]
        s.commit()
        assert pipeline.expire_work_leases(s, attempts=3, resend_s=60) == []  # once per period
        queued.updated_at = sl.sent_at = utcnow() - timedelta(seconds=61)
        assert pipeline.cad_started(s, queued, worker="a:1", lease_s=60)
        assert pipeline.slice_started(s, sl, worker="a:1", lease_s=60)
        s.commit()
        assert pipeline.expire_work_leases(s, attempts=3, resend_s=60) == []  # begun, under a lease


def ready_jobs(s: Session) -> int:
    return len(s.exec(select(Job).where(Job.state == JobState.READY)).all())


def test_retrying_a_job_whose_cad_failed_runs_the_cad_again(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        build, job = new_build(s)
        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)
        pipeline.cad_finished(
            s,
            build,
            error="a library was missing",
            stl_sha256=None,
            threemf_sha256=None,
            bbox=None,
            seconds=1,
        )
        s.commit()
        s.refresh(job)
        assert (build.stage, job.state) == (BuildStage.FAILED, JobState.FAILED)

        job, out = dispatch.retry(s, job)
        assert out == [pipeline.Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,))]
        s.refresh(build)
        assert (job.state, build.stage, build.error) == (JobState.WAITING, BuildStage.QUEUED, None)
        assert ready_jobs(s) == 0  # nothing printable yet: not counted as ready

        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)
        out = pipeline.cad_finished(
            s, build, error=None, stl_sha256="2" * 64, threemf_sha256=None, bbox=None, seconds=1
        )
        sl = s.exec(select(Slice).where(Slice.build_id == build.id)).one()
        pipeline.slice_finished(s, sl, error=None, gcode_sha256="3" * 64, meta={}, seconds=1.0)
        s.commit()
        s.refresh(job)
        assert (build.stage, job.state) == (BuildStage.READY, JobState.READY)


def test_retrying_a_job_whose_slicing_failed_slices_again(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        build, job = new_build(s, "part.stl")
        sl = s.exec(select(Slice).where(Slice.build_id == build.id)).one()
        pipeline.slice_finished(s, sl, error="the slicer crashed", gcode_sha256=None, meta={}, seconds=1.0)
        s.commit()
        s.refresh(job)
        assert (build.stage, job.state) == (BuildStage.FAILED, JobState.FAILED)

        job, out = dispatch.retry(s, job)
        assert out == [pipeline.Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,))]
        s.refresh(build)
        s.refresh(sl)
        assert (job.state, build.stage, sl.state) == (
            JobState.WAITING,
            BuildStage.SLICING,
            SliceState.PENDING,
        )
        assert ready_jobs(s) == 0
        pipeline.slice_finished(s, sl, error=None, gcode_sha256="3" * 64, meta={}, seconds=1.0)
        s.commit()
        s.refresh(job)
        assert (build.stage, job.state) == (BuildStage.READY, JobState.READY)


def test_a_job_whose_build_cannot_be_made_again_is_not_retried(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as s:
        _build, job = new_build(s, "part.stl", printer_model="NO-SUCH-PRINTER")
        s.refresh(job)
        assert job.state == JobState.FAILED
        with pytest.raises(InvalidMove, match="cannot be made again: unknown printer model"):
            dispatch.retry(s, job)


# -- a real farm: `farm up` with its worker, leases shortened ---------------------------------------


@pytest.fixture(scope="module")
def lease_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    env = {
        "FARM_WORK_LEASE_S": str(LEASE_S),
        "FARM_WORK_HEARTBEAT_S": str(HEARTBEAT_S),
        "FARM_WORK_RESEND_S": str(RESEND_S),
    }
    with running_farm(redis_url, tmp_path_factory.mktemp("leases"), "2", redis_db=6, env=env) as running:
        yield running


def api_client(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def children(farm: RunningFarm) -> dict[str, int]:
    return dict(json.loads((farm.data_dir / "farm-up.json").read_text())["children"])


def slicer_under(pid: int) -> bool:
    """Whether a PrusaSlicer process runs below this process: a slice is really being made."""
    parents: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        name_ends = text.rindex(")")
        parents[int(stat.parent.name)] = (
            int(text[name_ends + 2 :].split()[1]),
            text[text.index("(") + 1 : name_ends],
        )
    for ppid, name in parents.values():
        if name == "prusa-slicer":
            while ppid > 1:
                if ppid == pid:
                    return True
                ppid = parents.get(ppid, (0, ""))[0]
    return False


def kill_worker(farm: RunningFarm) -> int:
    """SIGKILL `farm up`'s worker (its supervisor starts a new one, with a new name)."""
    pid = children(farm)["worker"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_worker_killed_mid_cad_another_worker_finishes_the_builds(
    lease_farm: RunningFarm, tmp_path: Path
) -> None:
    """Three slow builds on a two-thread worker: two in `cad`, the third's message prefetched by the
    worker, unbegun. SIGKILL it: all three must be built by the next worker, the coordinator running on."""
    farm, api = lease_farm, api_client(lease_farm)
    build_ids = []
    for size in (20, 21, 22):
        design = tmp_path / f"slow_box_{size}.py"
        design.write_text(
            f"import time\n\nfrom build123d import Box\n\ntime.sleep(12)  # long enough to be killed in\n"
            f"result = Box({size}, 20, 10)\n"
        )
        code, build = farm.cli_json("submit", str(design), "--printer-model", "MK3S")
        assert code == 0, build
        build_ids.append(build["id"])
    coordinator = children(farm)["coordinator"]

    def builds() -> list[dict]:
        return [api.get(f"/api/builds/{i}").json() for i in build_ids]

    def building() -> list[dict]:
        return [b for b in builds() if b["stage"] == "cad" and b["cad_worker"]]

    first = wait_until(lambda: len(b := building()) == 2 and b, 120, "two builds in CAD")
    killed = kill_worker(farm)
    assert {b["cad_worker"].rsplit(":", 1)[1] for b in first} == {str(killed)}  # the killed one held them

    def ended() -> list[dict] | None:
        bs = builds()
        return bs if all(b["stage"] in ("ready", "failed") for b in bs) else None

    final = wait_until(ended, 120, "the builds to end")
    assert [b["stage"] for b in final] == ["ready"] * 3, final
    assert children(farm)["worker"] != killed and children(farm)["coordinator"] == coordinator


def test_worker_killed_mid_slice_another_worker_slices_it(lease_farm: RunningFarm) -> None:
    farm, api = lease_farm, api_client(lease_farm)
    sphere = farm.data_dir / "sphere.py"  # a big, round part: seconds to slice
    sphere.write_text("from build123d import Sphere\n\nresult = Sphere(90)\n")
    code, build = farm.cli_json("submit", str(sphere), "--printer-model", "MK3S")
    assert code == 0, build
    coordinator = children(farm)["coordinator"]

    def current() -> dict:
        return api.get(f"/api/builds/{build['id']}").json()

    def slicing() -> bool:
        b = current()
        held = b["stage"] == "slicing" and any(s["state"] == "pending" and s["worker"] for s in b["slices"])
        return held and slicer_under(children(farm)["worker"])

    wait_until(slicing, 120, "a worker to slice it", interval=0.05)
    killed = kill_worker(farm)
    time.sleep(0.5)
    assert current()["stage"] == "slicing"  # killed mid-slice, not after
    ready = wait_until(
        lambda: (b := current())["stage"] in ("ready", "failed") and b, 120, "the build to end"
    )
    assert ready["stage"] == "ready" and ready["slices"][0]["state"] == "done", ready
    assert children(farm)["worker"] != killed and children(farm)["coordinator"] == coordinator


def test_retrying_a_job_whose_cad_failed_builds_and_prints_it(
    lease_farm: RunningFarm, tmp_path: Path
) -> None:
    """A design that fails until some time has passed (say, a part library that was not there yet)."""
    farm, api = lease_farm, api_client(lease_farm)
    fixed_at = time.time() + 25
    design = tmp_path / "flaky.py"
    design.write_text(
        "import time\n\nfrom build123d import Box\n\n"
        f"if time.time() < {fixed_at}:\n    raise RuntimeError('the part library is not there yet')\n"
        "result = Box(10, 10, 10)\n"
    )
    code, build = farm.cli_json("submit", str(design))
    assert code == 0, build
    job_id = build["jobs"][0]["id"]

    def job() -> dict:
        return api.get(f"/api/jobs/{job_id}").json()

    failed = wait_until(lambda: (j := job())["state"] in ("failed", "done") and j, 60, "the build to fail")
    assert failed["state"] == "failed" and "not there yet" in failed["error"], failed
    time.sleep(max(0.0, fixed_at - time.time()) + 1)

    retried = farm.cli("jobs", "retry", str(job_id))
    assert retried.returncode == 0, retried.stderr
    assert "waiting while its build is made again" in retried.stdout, retried.stdout
    code, ready = farm.cli_json("jobs", "--state", "ready")
    assert job_id not in [j["id"] for j in ready]  # type: ignore[index]
    done = wait_until(lambda: (j := job())["state"] in ("done", "failed") and j, 180, "the job to print")
    assert done["state"] == "done", done
    assert api.get(f"/api/builds/{build['id']}").json()["stage"] == "ready"


def test_lapsed_work_leases_are_counted_for_metrics(engine: Engine) -> None:
    from farm.coordinator import metrics

    def expiries() -> dict[str, float]:
        with Session(engine) as fresh:
            rows = fresh.exec(select(MetricTally).where(MetricTally.name == metrics.LEASE_EXPIRIES)).all()
            return {r.labels: r.value for r in rows}

    with Session(engine, expire_on_commit=False) as s:
        build, _job = new_build(s)
        assert pipeline.cad_started(s, build, worker="a:1", lease_s=60)
        s.commit()
        lapse(s, build)
        pipeline.expire_work_leases(s, attempts=3)
        s.commit()
        assert expiries() == {"kind=cad": 1.0}
        mesh, _job = new_build(s, "part.stl")
        sl = s.exec(select(Slice).where(Slice.build_id == mesh.id)).one()
        assert pipeline.slice_started(s, sl, worker="a:1", lease_s=60)
        s.commit()
        lapse(s, sl)
        pipeline.expire_work_leases(s, attempts=3)
        s.commit()
        assert pipeline.slice_started(s, sl, worker="b:2", lease_s=60)
        pipeline.slice_finished(s, sl, error=None, gcode_sha256="3" * 64, meta={}, seconds=1.0)
        s.commit()  # a finished slice keeps its worker: no expiry
        assert expiries() == {"kind=cad": 1.0, "kind=slice": 1.0}
