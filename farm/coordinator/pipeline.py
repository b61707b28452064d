"""How a build moves from source to G-code: created, CAD result, slice results.

Functions here change rows and return the queue messages to send; the caller sends them only
after the commit, so a worker never receives work the database does not know about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from farm.coordinator.models import Build, Job, Printer, Slice, stored_id, utcnow
from farm.core.printer_models import DEFAULT_MODEL, MODELS, PrinterModel, get_model
from farm.core.queue import CAD_ACTOR, CAD_QUEUE, SLICE_ACTOR, SLICE_QUEUE
from farm.core.states import BuildStage, InvalidMove, JobState, SliceState, check_build_move, check_job_move

CAD_SUFFIXES = {".py"}
MESH_SUFFIXES = {".stl", ".3mf"}
GCODE_SUFFIXES = (".gcode", ".bgcode", ".gcode.3mf")  # pre-sliced: printed as they are
FROM_FILE = ""  # a pre-sliced file's slice learns its printer model from the file itself


@dataclass(frozen=True)
class Outgoing:
    queue: str
    actor: str
    args: tuple[Any, ...]


class BadRequest(ValueError):
    """The submission itself is wrong; the API answers 4xx with this message."""


def source_kind(filename: str) -> str:
    if filename.lower().endswith(GCODE_SUFFIXES):
        return "gcode"
    suffix = PurePath(filename).suffix.lower()
    if suffix in CAD_SUFFIXES:
        return "cad"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    raise BadRequest(f"cannot build '{filename}': submit a build123d .py file or an .stl / .3mf mesh")


def target_models(session: Session, requested: str | None) -> list[str]:
    """The printer models to slice for: the one asked for, else every model in the farm."""
    if requested:
        model = get_model(requested)
        return [model.name] if model else []
    models = sorted({p.model for p in session.exec(select(Printer)).all() if p.model in MODELS})
    return models or [DEFAULT_MODEL]


def create_build(
    session: Session,
    *,
    source_name: str,
    source_sha256: str,
    entry: str | None,
    params: dict[str, Any],
    copies: int,
    material: str,
    quality: str,
    color: str | None,
    printer_model: str | None,
    priority: int,
    printer: str | None = None,
    nozzle: float | None = None,
    attempts: int = 1,
    tags: str = "",
    per_plate: int = 1,
    overrides: dict[str, str] | None = None,
    project: bool = False,
    git: dict[str, Any] | None = None,
    use_cache: bool = True,
    step: bool = False,
    owner: str | None = None,
    preview: bool = False,
) -> tuple[Build, list[Job], list[Outgoing]]:
    """`preview`: a CAD build with no jobs; it stops, ready, once its mesh is made."""
    kind = source_kind(source_name)
    material = material.upper()
    build = Build(
        source_name=source_name, source_sha256=source_sha256, source_kind=kind, project=project,
        git_url=git["url"] if git else None, git_ref=git.get("ref") if git else None,
        git_commit=git["commit"] if git else None, use_cache=use_cache, want_step=step and kind == "cad",
        entry=entry, params_json=json.dumps(params), material=material, quality=quality,
        overrides_json=json.dumps(overrides or {}, sort_keys=True), owner=owner,
    )  # fmt: skip
    session.add(build)
    session.flush()
    model = get_model(printer_model) if printer_model else None
    jobs = [] if preview else _new_jobs(
        session, build, model.name if model else printer_model, plates(copies, per_plate),
        color=color, priority=priority, printer=printer, nozzle=nozzle, tags=tags, attempts=attempts,
    )  # fmt: skip
    return build, jobs, _first_work(session, build, model, printer_model)


def _new_jobs(
    session: Session,
    build: Build,
    printer_model: str | None,
    on_plates: list[int],
    *,
    color: str | None,
    priority: int,
    printer: str | None,
    nozzle: float | None,
    tags: str,
    attempts: int,
) -> list[Job]:
    """One job per plate; `on_plates[i]` copies are arranged on plate i."""
    build_id = stored_id(build)
    jobs = [
        Job(
            build_id=build_id,
            copy_index=i + 1,
            copies=on_plate,
            printer_model=printer_model,
            material=build.material,
            color=color,
            priority=priority,
            pinned_printer=printer,
            nozzle=nozzle,
            tags=tags,
            max_attempts=attempts,
            owner=build.owner,
        )
        for i, on_plate in enumerate(on_plates)
    ]
    session.add_all(jobs)
    session.flush()
    return jobs


def _first_work(
    session: Session, build: Build, model: PrinterModel | None, printer_model: str | None
) -> list[Outgoing]:
    """What a new build needs done first: its CAD run, or the slicing of its mesh or G-code; a
    model the farm does not know fails it at once."""
    out: list[Outgoing] = []
    if printer_model and model is None:
        known = ", ".join(sorted(MODELS))
        _fail_build(session, build, f"unknown printer model '{printer_model}'; known models: {known}")
    elif build.source_kind == "cad":
        out.append(Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,)))
    elif build.source_kind == "gcode":
        out += _start_slicing(session, build, [model.name if model else FROM_FILE])
    else:
        build.stl_sha256 = build.source_sha256
        out += _start_slicing(session, build, target_models(session, printer_model))
    return out


def _live(expires: datetime | None, now: datetime) -> bool:
    if expires is None:
        return False
    return (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) > now  # SQLite drops the zone


def cad_started(session: Session, build: Build, *, worker: str, lease_s: float) -> bool:
    """A CAD worker takes the build under a lease. False: it is past CAD (a duplicate message), or
    another worker holds a live lease on it. A re-delivery after the lease ran out takes it over."""
    now = utcnow()
    if build.stage not in (BuildStage.QUEUED, BuildStage.CAD):
        return False
    if build.stage == BuildStage.CAD and build.cad_worker != worker and _live(build.cad_lease_expires, now):
        return False
    if build.stage == BuildStage.QUEUED or build.cad_worker != worker:  # not its own message again
        build.cad_attempts += 1
    build.stage = check_build_move(build.stage, BuildStage.CAD)
    build.cad_worker = worker
    build.cad_lease_expires = now + timedelta(seconds=lease_s)
    build.updated_at = now
    session.add(build)
    return True


def cad_heartbeat(session: Session, build: Build, *, worker: str, lease_s: float) -> bool:
    """The worker still builds it: extend its lease. False: the build is no longer this worker's."""
    if build.stage != BuildStage.CAD or build.cad_worker != worker:
        return False
    build.cad_lease_expires = utcnow() + timedelta(seconds=lease_s)
    session.add(build)
    return True


def slice_started(session: Session, sl: Slice, *, worker: str, lease_s: float) -> bool:
    """A slicing worker takes a pending slice under a lease; as cad_started."""
    now = utcnow()
    if sl.state != SliceState.PENDING:
        return False
    if sl.worker is not None and sl.worker != worker and _live(sl.lease_expires, now):
        return False
    if sl.worker != worker:
        sl.attempts += 1
    sl.worker = worker
    sl.lease_expires = now + timedelta(seconds=lease_s)
    session.add(sl)
    return True


def slice_heartbeat(session: Session, sl: Slice, *, worker: str, lease_s: float) -> bool:
    if sl.state != SliceState.PENDING or sl.worker != worker:
        return False
    sl.lease_expires = utcnow() + timedelta(seconds=lease_s)
    session.add(sl)
    return True


def expire_work_leases(session: Session, *, attempts: int, resend_s: float | None = None) -> list[Outgoing]:
    """CAD builds and slices whose worker stopped heartbeating (killed, out of memory, host lost):
    send them again, whatever became of the broker's message; after `attempts` lost workers, fail
    them (a design that kills its worker every time must not loop forever). `resend_s`: also send
    again work sent that long ago and not begun (a dead worker may hold its message unstarted)."""
    now = utcnow()
    out: list[Outgoing] = []
    if resend_s is not None:
        out += _resend_unbegun(session, now - timedelta(seconds=resend_s), now)
    lapsed = col(Build.cad_lease_expires).is_(None) | (col(Build.cad_lease_expires) < now)
    for build in session.exec(select(Build).where(Build.stage == BuildStage.CAD, lapsed)).all():
        build.cad_worker, build.cad_lease_expires = None, None
        if build.cad_attempts >= attempts:
            _fail_build(
                session,
                build,
                f"the CAD worker was lost {build.cad_attempts} times building it "
                "(killed, out of memory, or its host went down)",
            )
            continue
        build.stage = check_build_move(build.stage, BuildStage.QUEUED)
        build.updated_at = now
        session.add(build)
        out.append(Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,)))
    for sl in session.exec(
        select(Slice).where(
            Slice.state == SliceState.PENDING,
            col(Slice.worker).is_not(None),
            col(Slice.lease_expires) < now,
        )
    ).all():
        sl.worker, sl.lease_expires = None, None
        if sl.attempts >= attempts:
            slice_finished(
                session,
                sl,
                error=f"the slicing worker was lost {sl.attempts} times slicing it",
                gcode_sha256=None,
                meta={},
                seconds=None,
            )
            continue
        sl.sent_at = now
        session.add(sl)
        out.append(Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,)))
    return out


def _resend_unbegun(session: Session, sent_before: datetime, now: datetime) -> list[Outgoing]:
    out = []
    for build in session.exec(
        select(Build).where(Build.stage == BuildStage.QUEUED, col(Build.updated_at) < sent_before)
    ).all():
        build.updated_at = now
        session.add(build)
        out.append(Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,)))
    sent = func.coalesce(col(Slice.sent_at), col(Slice.created_at))
    for sl in session.exec(
        select(Slice).where(
            Slice.state == SliceState.PENDING, col(Slice.worker).is_(None), sent < sent_before
        )
    ).all():
        sl.sent_at = now
        session.add(sl)
        out.append(Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,)))
    return out


def rebuild_for(session: Session, job: Job) -> list[Outgoing] | None:
    """A failed job is retried: make again what it lacks. None: its G-code exists (it may go straight
    back to the queue); else the job waits for the work returned (possibly none: already under way)."""
    build = session.get(Build, job.build_id)
    assert build is not None
    slices = session.exec(select(Slice).where(Slice.build_id == build.id).order_by(col(Slice.id))).all()
    mine = [s for s in slices if s.copies == job.copies and job.printer_model in (None, s.printer_model)]
    if any(s.state == SliceState.DONE for s in mine):
        return None
    if build.stage in (BuildStage.QUEUED, BuildStage.CAD) or any(s.state == SliceState.PENDING for s in mine):
        move_job(session, job, JobState.WAITING)
        return []  # already being made
    if build.source_kind == "cad" and not build.stl_sha256:  # the CAD run failed: run it again
        move_job(session, job, JobState.WAITING)
        build.stage = check_build_move(build.stage, BuildStage.QUEUED)
        build.error, build.cad_attempts = None, 0
        build.updated_at = utcnow()
        session.add(build)
        return [Outgoing(CAD_QUEUE, CAD_ACTOR, (build.id,))]
    failed = [s for s in mine if s.state == SliceState.FAILED]
    if not failed:  # it failed before anything was made (say, an unknown printer model): as it was
        raise InvalidMove(f"job {job.id} cannot be made again: {build.error or job.error}")
    move_job(session, job, JobState.WAITING)
    if build.stage == BuildStage.FAILED:
        build.stage = check_build_move(build.stage, BuildStage.SLICING)
        build.error = None
        build.updated_at = utcnow()
        session.add(build)
    for sl in failed:
        sl.state, sl.error, sl.attempts, sl.sent_at = SliceState.PENDING, None, 0, utcnow()
        session.add(sl)
    return [Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,)) for sl in failed]


def cad_finished(
    session: Session,
    build: Build,
    *,
    error: str | None,
    stl_sha256: str | None,
    threemf_sha256: str | None,
    bbox: list[list[float]] | None,
    seconds: float | None,
    extras: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """`extras`: the other outputs, by Build column (step/preview/preview_small sha256, objects)."""
    if build.stage not in (BuildStage.QUEUED, BuildStage.CAD):
        return []  # a late duplicate: the first result stands
    # Queued: a worker whose lease ran out finished after all; its result is as good as a new run's.
    build.stage = check_build_move(build.stage, BuildStage.CAD)
    build.cad_worker, build.cad_lease_expires = None, None
    build.cad_seconds = seconds
    if error or not stl_sha256:
        _fail_build(session, build, error or "the CAD worker returned no mesh")
        return []
    build.stl_sha256 = stl_sha256
    build.threemf_sha256 = threemf_sha256
    build.bbox_json = json.dumps(bbox) if bbox else None
    for column, value in (extras or {}).items():
        setattr(build, column, value)
    jobs = _jobs(session, build)
    if not jobs:  # a preview: its mesh was all it asked for
        build.stage = check_build_move(build.stage, BuildStage.READY)
        build.updated_at = utcnow()
        session.add(build)
        return []
    requested = next((j.printer_model for j in jobs if j.printer_model), None)
    return _start_slicing(session, build, target_models(session, requested))


def slice_finished(
    session: Session,
    sl: Slice,
    *,
    error: str | None,
    gcode_sha256: str | None,
    meta: dict[str, Any],
    seconds: float | None,
) -> None:
    if sl.state != SliceState.PENDING:
        return
    build = session.get(Build, sl.build_id)
    assert build is not None
    sl.slice_seconds = seconds
    if error or not gcode_sha256:
        sl.state = SliceState.FAILED
        sl.error = error or "the slicer produced no G-code"
    else:
        sl.state = SliceState.DONE
        sl.gcode_sha256 = gcode_sha256
        if sl.printer_model == FROM_FILE:
            sl.printer_model = meta.get("printer_model") or FROM_FILE
        sl.print_time_s = meta.get("print_time_s")
        sl.filament_g = meta.get("filament_g")
        sl.filament_mm = meta.get("filament_mm")
    session.add(sl)
    session.flush()

    slices = session.exec(select(Slice).where(Slice.build_id == build.id)).all()
    if any(s.state == SliceState.DONE for s in slices):
        build.stage = check_build_move(build.stage, BuildStage.READY)
        for job in _jobs(session, build):
            mine = [s for s in slices if s.copies == job.copies]
            if job.state == JobState.WAITING and any(s.state == SliceState.DONE for s in mine):
                move_job(session, job, JobState.READY)
            elif job.state == JobState.WAITING and all(s.state == SliceState.FAILED for s in mine):
                job.error = "; ".join(f"{s.printer_model}: {s.error}" for s in mine)  # e.g. a full plate
                move_job(session, job, JobState.FAILED)  # does not fit: its smaller sibling may
    elif all(s.state == SliceState.FAILED for s in slices):
        _fail_build(session, build, "; ".join(f"{s.printer_model}: {s.error}" for s in slices))
    build.updated_at = utcnow()
    session.add(build)


def plates(copies: int, per_plate: int) -> list[int]:
    """How many parts go on each plate: 10 copies, 4 per plate -> [4, 4, 2]."""
    full, rest = divmod(copies, max(per_plate, 1))
    return [per_plate] * full + ([rest] if rest else [])


def _start_slicing(session: Session, build: Build, models: list[str]) -> list[Outgoing]:
    """One slice per printer model and plate size: every printer of a model shares it."""
    build.stage = check_build_move(build.stage, BuildStage.SLICING)
    build.updated_at = utcnow()
    session.add(build)
    sizes = sorted({j.copies for j in _jobs(session, build)}, reverse=True) or [1]
    return _add_slices(session, build, models, sizes)


def _add_slices(session: Session, build: Build, models: list[str], sizes: list[int]) -> list[Outgoing]:
    build_id = stored_id(build)
    out = []
    for name in models:
        for copies in sizes:
            sl = Slice(build_id=build_id, printer_model=name, copies=copies)
            session.add(sl)
            session.flush()
            out.append(Outgoing(SLICE_QUEUE, SLICE_ACTOR, (sl.id,)))
    return out


def fail_build(session: Session, build: Build, error: str) -> None:
    """Fail a build that cannot be made (hook_runner.py: a manifest part the farm refuses)."""
    _fail_build(session, build, error)


def _fail_build(session: Session, build: Build, error: str) -> None:
    build.stage = check_build_move(build.stage, BuildStage.FAILED)
    build.error = error
    build.updated_at = utcnow()
    session.add(build)
    for job in _jobs(session, build):
        if job.state in (JobState.WAITING, JobState.READY):
            job.error = error
            move_job(session, job, JobState.FAILED)


def _jobs(session: Session, build: Build) -> list[Job]:
    return list(session.exec(select(Job).where(Job.build_id == build.id).order_by(col(Job.id))).all())


def move_job(session: Session, job: Job, new: JobState) -> None:
    job.state = check_job_move(job.state, new)
    job.updated_at = utcnow()
    if new in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
        job.finished_at = job.updated_at
    session.add(job)
