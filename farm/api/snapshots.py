"""Camera stills of a job: its agent uploads them (print start, end, failure), people fetch them.

The image bytes are stored as an artifact; JobSnapshot says which job and moment they show.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from sqlmodel import col, select

from farm.api.deps import FarmDep, RowId, SessionDep, as_utc, require
from farm.api.errors import AUTH, errors
from farm.models import Artifact, Job, JobSnapshot, Token
from farm.store import TooLarge

router = APIRouter(prefix="/api", tags=["snapshots"], responses=AUTH)
Moment = Literal["start", "end", "failure", "request"]
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_SNAPSHOT = 16 << 20  # a 4K JPEG is a few MB


def _view(snap: JobSnapshot) -> dict:
    return {
        "job": snap.job_id,
        "moment": snap.moment,
        "sha256": snap.sha256,
        "media_type": snap.media_type,
        "taken_at": as_utc(snap.taken_at).isoformat(),
    }


def _media_type(head: bytes) -> str | None:
    return next((kind for magic, kind in IMAGE_TYPES.items() if head.startswith(magic)), None)


@router.post(
    "/agents/jobs/{job_id}/snapshots",
    status_code=201,
    responses=errors(403, 404, 413, 415),
    openapi_extra={"requestBody": {"content": {"image/png": {"schema": {}}, "image/jpeg": {"schema": {}}}}},
)
async def upload_snapshot(
    job_id: RowId,
    request: Request,
    session: SessionDep,
    farm: FarmDep,
    token: Annotated[Token, Depends(require("agent"))],
    moment: Moment = "request",
) -> dict:
    """A still from the camera of the job's printer; an agent only for its own printer's jobs."""
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if token.role == "agent" and (job.printer is None or job.printer != token.printer):
        raise HTTPException(403, f"job {job_id} is not on printer '{token.printer}', this agent's")
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
        session.add(Artifact(sha256=sha, size=size, name=f"job{job_id}-{moment}.{ext}"))
    snap = JobSnapshot(job_id=job_id, moment=moment, sha256=sha, media_type=kind)
    session.add(snap)
    session.commit()
    return _view(snap)


Reader = Depends(require("submitter", "viewer"))


@router.get("/jobs/{job_id}/snapshots", dependencies=[Reader], responses=errors(404))
def list_snapshots(job_id: RowId, session: SessionDep) -> list[dict]:
    """The stills of a job, oldest first."""
    if session.get(Job, job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    found = session.exec(
        select(JobSnapshot).where(JobSnapshot.job_id == job_id).order_by(col(JobSnapshot.id))
    ).all()
    return [_view(s) for s in found]


@router.get(
    "/jobs/{job_id}/snapshot",
    dependencies=[Reader],
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **errors(404)},
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
    ext = "png" if snap.media_type == "image/png" else "jpg"
    return FileResponse(
        farm.store.path(snap.sha256),
        media_type=snap.media_type,
        filename=f"job{job_id}-{snap.moment}.{ext}",
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff"},
    )
