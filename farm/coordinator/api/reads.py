"""What people look at: jobs, printers and the farm's overall status."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import func
from sqlmodel import Session, col, select

from farm.coordinator.api.deps import RowId, SessionDep, found, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.api.paging import MAX_LIMIT, Cursor, Limit, after_id, after_name, page, paged
from farm.coordinator.api.views import job_view, printer_state, printer_view
from farm.coordinator.api.workers import recent_workers
from farm.coordinator.models import Build, Job, Printer, Slice, stored_id
from farm.core.states import BuildStage, JobState
from farm.core.wire import FarmStatus, JobView, PrinterView

router = APIRouter(
    prefix="/api", tags=["status"], dependencies=[Depends(require("submitter", "viewer"))], responses=AUTH
)


def job_rows(session: Session, jobs: list[Job], *, pictures: bool = False) -> list[dict]:
    """Each job as the API shows it; `pictures`: with its part's small preview and its STL (artifact
    ids), for the dashboard's rows and 3D view."""
    builds = {
        b.id: b for b in session.exec(select(Build).where(col(Build.id).in_({j.build_id for j in jobs})))
    }
    slice_ids = {j.slice_id for j in jobs if j.slice_id}
    slices = {s.id: s for s in session.exec(select(Slice).where(col(Slice.id).in_(slice_ids)))}
    rows = []
    for j in jobs:
        build = builds[j.build_id]
        row = job_view(j, slices.get(j.slice_id), build.source_name)
        if pictures:
            row["preview"] = build.preview_small_sha256 or build.preview_sha256
            row["stl"] = build.stl_sha256
        rows.append(row)
    return rows


@router.get(
    "/jobs",
    response_model=list[JobView],
    response_model_exclude_unset=True,
    responses=paged("jobs, newest first"),
)
def list_jobs(
    session: SessionDep,
    request: Request,
    response: Response,
    state: JobState | None = None,
    limit: Limit = 200,
    cursor: Cursor = None,
) -> list[dict]:
    query = select(Job).order_by(col(Job.id).desc()).limit(limit + 1)
    if state:
        query = query.where(Job.state == state)
    if (before := after_id(cursor)) is not None:
        query = query.where(col(Job.id) < before)
    jobs = page(session.exec(query).all(), limit, stored_id, request, response)
    return job_rows(session, jobs)


@router.get(
    "/jobs/{job_id}", response_model=JobView, response_model_exclude_unset=True, responses=errors(404)
)
def get_job(job_id: RowId, session: SessionDep) -> dict:
    job = found(session, Job, job_id, "job")
    return job_rows(session, [job])[0]


@router.get(
    "/printers",
    response_model=list[PrinterView],
    response_model_exclude_unset=True,
    responses=paged("printers by name"),
)
def list_printers(
    session: SessionDep, request: Request, response: Response, limit: Limit = MAX_LIMIT, cursor: Cursor = None
) -> list[dict]:
    query = select(Printer).order_by(col(Printer.name)).limit(limit + 1)
    if (after := after_name(cursor)) is not None:
        query = query.where(col(Printer.name) > after)
    printers = page(session.exec(query).all(), limit, lambda p: p.name, request, response)
    return [printer_view(p) for p in printers]


@router.get("/status", response_model=FarmStatus, response_model_exclude_unset=True)
def status(session: SessionDep) -> dict:
    return farm_status(session)


def farm_status(session: Session) -> dict[str, Any]:
    """Builds by stage and jobs by state (counted by the database), printers by state, workers."""
    builds = dict(session.exec(select(Build.stage, func.count()).group_by(Build.stage)).all())
    jobs = dict(session.exec(select(Job.state, func.count()).group_by(Job.state)).all())
    printers = Counter(printer_state(p) for p in session.exec(select(Printer)).all())
    return {
        "builds": {str(s): builds.get(s, 0) for s in BuildStage},
        "jobs": {str(s): jobs.get(s, 0) for s in JobState},
        "printers": dict(sorted(printers.items())),
        "printer_count": sum(printers.values()),
        "workers": recent_workers(session),
    }
