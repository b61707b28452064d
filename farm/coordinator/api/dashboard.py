"""The dashboard: its page and assets (../web/static, shipped in the package: no CDN) and the one
JSON snapshot it draws from (GET /api/dashboard; the event stream sends the same: events.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path as PathParam
from fastapi.responses import FileResponse, Response
from sqlmodel import Session, col, func, select

from farm.coordinator.api.deps import FarmDep, SessionDep, require
from farm.coordinator.api.errors import AUTH
from farm.coordinator.api.reads import farm_status, job_rows
from farm.coordinator.api.views import printer_view
from farm.coordinator.models import Build, Job, Printer, utcnow
from farm.core.settings import Settings
from farm.core.states import BuildStage, JobState

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from this origin; nothing inline, nothing framed.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
QUEUE_SHOWN = 50  # the page lists this many ready jobs (and says how many more there are)
WAITING_SHOWN = 50
FAILED_SHOWN = 20
ACTIVE = (JobState.CLAIMED, JobState.UPLOADING, JobState.PRINTING)

router = APIRouter(tags=["dashboard"], responses=AUTH)


@router.get("/", include_in_schema=False)
def page() -> Response:
    return FileResponse(STATIC / "index.html", media_type=_TYPES[".html"], headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def asset(name: Annotated[str, PathParam(pattern=r"^[a-z0-9][a-z0-9._-]*$")]) -> Response:
    path = STATIC / name
    kind = _TYPES.get(path.suffix)
    if kind is None or not path.is_file():
        raise HTTPException(404, f"no dashboard asset '{name}'")
    return FileResponse(path, media_type=kind, headers=PAGE_HEADERS)


@router.get("/api/dashboard", dependencies=[Depends(require("submitter", "viewer"))])
def dashboard(session: SessionDep, farm: FarmDep) -> dict:
    """Everything the dashboard's first screen shows, in one answer: printers, each with the job it
    holds (`current`), the ready queue in dispatch order, builds still being made, recent failures, counts."""
    return snapshot(session, farm.settings)


def snapshot(session: Session, settings: Settings) -> dict[str, Any]:
    active = list(session.exec(select(Job).where(col(Job.state).in_(ACTIVE)).order_by(col(Job.id))))
    queue, starving = _queue(session, settings.starvation_s)
    failed = list(
        session.exec(
            select(Job).where(Job.state == JobState.FAILED).order_by(col(Job.id).desc()).limit(FAILED_SHOWN)
        )
    )
    rows = job_rows(session, [*active, *queue, *failed], pictures=True)
    for row in rows[len(active) : len(active) + len(queue)]:
        row["starving"] = row["id"] in starving
    by_printer = {row["printer"]: row for row in rows[: len(active)]}
    printers = [
        {**printer_view(p), "current": by_printer.get(p.name)}
        for p in session.exec(select(Printer).order_by(col(Printer.name)))
    ]
    ready_total = session.exec(select(func.count()).where(Job.state == JobState.READY)).one()
    return {
        "printers": printers,  # each with its `current` job: the jobs on printers
        "queue": rows[len(active) : len(active) + len(queue)],
        "queue_total": ready_total,
        "waiting": _waiting(session),
        "failed": rows[len(active) + len(queue) :],
        "status": farm_status(session),
    }


_ORDER = (col(Job.priority).desc(), col(Job.created_at), col(Job.id))


def _queue(session: Session, starvation_s: float) -> tuple[list[Job], set[int]]:
    """Ready jobs in the order the dispatcher hands them out (dispatch.py): those waiting past
    the starvation limit first, then by priority and age. Each printer takes the first that fits
    it (`farm jobs explain` says which printers fit a job, and why not)."""
    cutoff = utcnow() - timedelta(seconds=starvation_s)
    ready = select(Job).where(Job.state == JobState.READY)
    old = ready.where(col(Job.created_at) < cutoff)
    starving = list(session.exec(old.order_by(*_ORDER).limit(QUEUE_SHOWN)))
    seen = {j.id for j in starving}
    rest = [j for j in session.exec(ready.order_by(*_ORDER).limit(QUEUE_SHOWN)) if j.id not in seen]
    return [*starving, *rest][:QUEUE_SHOWN], {j.id for j in starving if j.id is not None}


def _waiting(session: Session) -> list[dict[str, Any]]:
    """Builds still on their way to G-code, oldest first, with how long they have been in their stage."""
    making = (BuildStage.QUEUED, BuildStage.CAD, BuildStage.SLICING)
    builds = session.exec(
        select(Build).where(col(Build.stage).in_(making)).order_by(col(Build.id)).limit(WAITING_SHOWN)
    )
    return [
        {
            "id": b.id,
            "source": b.source_name,
            "owner": b.owner,
            "stage": b.stage,
            "since": b.updated_at.isoformat(),
            "created_at": b.created_at.isoformat(),
            "preview": b.preview_small_sha256,
            "stl": b.stl_sha256,
        }
        for b in builds
    ]
