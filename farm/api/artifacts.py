"""Blobs by content hash: sources, meshes, G-code. Workers and agents move files only through here."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse

from farm.api.deps import FarmDep, SessionDep, require
from farm.models import Artifact
from farm.store import TooLarge

router = APIRouter(prefix="/api/artifacts", tags=["artifacts"])
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@router.put("", dependencies=[Depends(require("worker", "submitter"))])
async def upload(request: Request, farm: FarmDep, session: SessionDep, name: str = "") -> dict[str, object]:
    try:
        sha, size = await farm.store.put_stream(request.stream(), farm.settings.max_upload_mb << 20)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    if session.get(Artifact, sha) is None:
        session.add(Artifact(sha256=sha, size=size, name=name))
        session.commit()
    return {"sha256": sha, "size": size}


@router.get("/{sha256}", dependencies=[Depends(require("worker", "agent", "submitter"))])
def download(sha256: str, farm: FarmDep, session: SessionDep) -> FileResponse:
    if not SHA_RE.match(sha256):
        raise HTTPException(400, "an artifact id is a 64-character lowercase sha256")
    art = session.get(Artifact, sha256)
    if art is None or not farm.store.has(sha256):
        raise HTTPException(404, f"no artifact {sha256}")
    return FileResponse(
        farm.store.path(sha256), filename=art.name or sha256, media_type="application/octet-stream"
    )
