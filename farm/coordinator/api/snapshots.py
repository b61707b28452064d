"""Camera stills: a printer's agent uploads them (print start, end, failure, and when an operator
asks), people fetch them by job or by printer.

The image bytes are stored as an artifact; JobSnapshot says which printer, job and moment they
show. Asking for a still (`POST /api/printers/NAME/snapshot`) sets a flag on the printer that the
answer to its agent's next heartbeat or claim carries (agents.SNAPSHOT_WANTED); the agent answers
by uploading one, or by saying why it cannot.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from farm.coordinator.api.deps import (
    FarmDep,
    PrinterPath,
    RowId,
    SessionDep,
    as_utc,
    found,
    found_printer,
    require,
)
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.models import Artifact, Job, JobSnapshot, Printer, Token, utcnow
from farm.coordinator.store import TooLarge
from farm.core.names import safe_name
from farm.core.wire import PrinterSnapshots, SnapshotAsked, SnapshotView

router = APIRouter(prefix="/api", tags=["snapshots"], responses=AUTH)
Moment = Literal["start", "end", "failure", "request"]
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_SNAPSHOT = 16 << 20  # a 4K JPEG is a few MB
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {"content": {"image/png": {"schema": {}}, "image/jpeg": {"schema": {}}}}
}
IMAGES: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}, "image/jpeg": {}}}}
AgentToken = Annotated[Token, Depends(require("agent"))]


def _view(snap: JobSnapshot) -> dict:
    return {
        "id": snap.id,
        "job": snap.job_id,
        "printer": snap.printer,
        "moment": snap.moment,
        "sha256": snap.sha256,
        "media_type": snap.media_type,
        "taken_at": as_utc(snap.taken_at).isoformat(),
    }


def _media_type(head: bytes) -> str | None:
    return next((kind for magic, kind in IMAGE_TYPES.items() if head.startswith(magic)), None)


async def _store(
    request: Request,
    session: Session,
    farm: FarmDep,
    printer: Printer | None,
    job_id: int | None,
    moment: str,
) -> JobSnapshot:
    try:
        sha, size = await farm.store.put_stream(request.stream(), MAX_SNAPSHOT)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    with farm.store.path(sha).open("rb") as f:
        kind = _media_type(f.read(8))
    if kind is None:  # served to browsers later: only what is surely an image
        raise HTTPException(415, "a snapshot is a PNG or JPEG image")
    if session.get(Artifact, sha) is None:
        ext = "png" if kind == "image/png" else "jpg"
        what = f"job{job_id}" if job_id is not None else (printer.name if printer else "printer")
        session.add(Artifact(sha256=sha, size=size, name=safe_name(f"{what}-{moment}.{ext}")))
    snap = JobSnapshot(
        job_id=job_id, printer=printer.name if printer else None, moment=moment, sha256=sha, media_type=kind
    )
    session.add(snap)
    session.flush()
    if printer is not None:
        printer.snapshot_id = snap.id
        session.add(printer)
    session.commit()
    return snap


@router.post(
    "/agents/jobs/{job_id}/snapshots",
    status_code=201,
    response_model=SnapshotView,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 413, 415),
    openapi_extra=IMAGE_BODY,
)
async def upload_snapshot(
    job_id: RowId,
    request: Request,
    session: SessionDep,
    farm: FarmDep,
    token: AgentToken,
    moment: Moment = "request",
) -> dict:
    """A still from the camera of the job's printer; an agent only for its own printer's jobs."""
    job = found(session, Job, job_id, "job")
    if token.role == "agent" and not _printed_on(job, token.printer):
        raise HTTPException(403, f"job {job_id} is not on printer '{token.printer}', this agent's")
    name = token.printer if token.role == "agent" else job.printer
    printer = session.get(Printer, name) if name else None
    return _view(await _store(request, session, farm, printer, job_id, moment))


def _printed_on(job: Job, printer: str | None) -> bool:
    """Whether `printer` holds the job, or held it when a print of it failed: a failed print with
    attempts left goes back to the queue (no printer) before its agent sends the failure's still."""
    if printer is None:
        return False
    return printer in (job.printer, job.pinned_printer) or f",{printer}," in job.failed_on


def _agents_printer(session: Session, token: Token, name: str) -> Printer:
    if token.role == "agent" and token.printer != name:
        raise HTTPException(403, f"this agent token is bound to printer '{token.printer}', not '{name}'")
    printer = session.get(Printer, name)
    if printer is None:
        raise HTTPException(404, f"printer '{name}' is not registered; its agent registers it on start")
    return printer


@router.post(
    "/agents/printers/{name}/snapshots",
    status_code=201,
    response_model=SnapshotView,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 413, 415),
    openapi_extra=IMAGE_BODY,
)
async def upload_requested_snapshot(
    name: PrinterPath, request: Request, session: SessionDep, farm: FarmDep, token: AgentToken
) -> dict:
    """The still an operator asked for: kept with the job the printer holds, if it holds one."""
    printer = _agents_printer(session, token, name)
    snap = await _store(request, session, farm, printer, printer.job_id, "request")
    printer.snapshot_wanted, printer.snapshot_error = None, None
    session.add(printer)
    session.commit()
    return _view(snap)


class NoSnapshot(BaseModel):
    error: Annotated[str, Field(min_length=1, max_length=1000)]


@router.post("/agents/printers/{name}/snapshot-error", responses=errors(403, 404))
def no_snapshot(name: PrinterPath, body: NoSnapshot, session: SessionDep, token: AgentToken) -> dict:
    """The agent could not take the still asked for (no camera, the camera failed): why."""
    printer = _agents_printer(session, token, name)
    printer.snapshot_wanted, printer.snapshot_error = None, body.error
    session.add(printer)
    session.commit()
    return {"printer": name, "error": body.error}


@router.post(
    "/printers/{name}/snapshot",
    status_code=202,
    dependencies=[Depends(require("submitter"))],
    response_model=SnapshotAsked,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def request_snapshot(name: PrinterPath, farm: FarmDep, session: SessionDep) -> dict:
    """Ask the printer's agent for a still now. It answers on its next call (a few seconds): the
    still is then the printer's latest (`GET /api/printers/NAME/snapshots`), newer than `after`."""
    printer = found_printer(session, name)
    printer.snapshot_wanted, printer.snapshot_error = utcnow(), None
    session.add(printer)
    session.commit()
    farm.work.wake(printer=name)  # an idle agent's claim waiting at the coordinator answers now
    return {
        "printer": name,
        "requested_at": as_utc(printer.snapshot_wanted).isoformat(),
        "after": printer.snapshot_id or 0,
    }


Reader = Depends(require("submitter", "viewer"))


@router.get(
    "/jobs/{job_id}/snapshots",
    dependencies=[Reader],
    response_model=list[SnapshotView],
    response_model_exclude_unset=True,
    responses=errors(404),
)
def list_snapshots(job_id: RowId, session: SessionDep) -> list[dict]:
    """The stills of a job, oldest first."""
    found(session, Job, job_id, "job")
    snaps = session.exec(
        select(JobSnapshot).where(JobSnapshot.job_id == job_id).order_by(col(JobSnapshot.id))
    ).all()
    return [_view(s) for s in snaps]


@router.get(
    "/jobs/{job_id}/snapshot",
    dependencies=[Reader],
    response_class=FileResponse,
    responses={**IMAGES, **errors(404)},
)
def get_snapshot(
    job_id: RowId,
    session: SessionDep,
    farm: FarmDep,
    moment: Annotated[Moment | Literal["latest"], Query()] = "latest",
) -> FileResponse:
    """One still of the job: the latest, or the latest taken at `moment`."""
    query = select(JobSnapshot).where(JobSnapshot.job_id == job_id)
    if moment != "latest":
        query = query.where(JobSnapshot.moment == moment)
    snap = session.exec(query.order_by(col(JobSnapshot.id).desc()).limit(1)).first()
    if snap is None or not farm.store.has(snap.sha256):
        raise HTTPException(
            404, f"job {job_id} has no snapshot" + ("" if moment == "latest" else f" at {moment}")
        )
    return _serve(snap, farm, f"job{job_id}-{snap.moment}")


def _serve(snap: JobSnapshot, farm: FarmDep, stem: str) -> FileResponse:
    ext = "png" if snap.media_type == "image/png" else "jpg"
    return FileResponse(
        farm.store.path(snap.sha256),
        media_type=snap.media_type,
        filename=f"{stem}.{ext}",
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )


@router.get(
    "/printers/{name}/snapshots",
    dependencies=[Reader],
    response_model=PrinterSnapshots,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def printer_snapshots(
    name: PrinterPath,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    """The printer's latest stills, newest first, and where a request for one stands."""
    printer = found_printer(session, name)
    snaps = session.exec(
        select(JobSnapshot)
        .where(JobSnapshot.printer == name)
        .order_by(col(JobSnapshot.id).desc())
        .limit(limit)
    ).all()
    wanted = printer.snapshot_wanted
    return {
        "printer": name,
        "wanted_since": as_utc(wanted).isoformat() if wanted else None,
        "error": printer.snapshot_error,
        "agent_last_seen": as_utc(printer.last_seen).isoformat() if printer.last_seen else None,
        "snapshots": [_view(s) for s in snaps],
    }


@router.get(
    "/printers/{name}/snapshot",
    dependencies=[Reader],
    response_class=FileResponse,
    responses={**IMAGES, **errors(404)},
)
def printer_snapshot(
    name: PrinterPath,
    session: SessionDep,
    farm: FarmDep,
    id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> FileResponse:
    """One still of the printer's camera: the latest, or the one with `id`."""
    printer = found_printer(session, name)
    snap = session.get(JobSnapshot, id if id is not None else printer.snapshot_id or 0)
    if snap is None or snap.printer != name or not farm.store.has(snap.sha256):
        raise HTTPException(404, f"printer '{name}' has no snapshot" + ("" if id is None else f" {id}"))
    return _serve(snap, farm, safe_name(f"{name}-{snap.id}"))
