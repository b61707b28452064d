"""Blobs by content hash: sources, meshes, G-code. Workers and agents move files only through here."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse

from farm.coordinator.api.access import may_read_artifact
from farm.coordinator.api.deps import FarmDep, SessionDep, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.models import Artifact, Token
from farm.coordinator.store import TooLarge
from farm.core.names import safe_name

router = APIRouter(prefix="/api/artifacts", tags=["artifacts"], responses=AUTH)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
PNG = b"\x89PNG\r\n\x1a\n"  # a PNG file's first bytes: served as image/png whatever its name


@router.put(
    "",
    dependencies=[Depends(require("worker", "submitter"))],
    responses=errors(413),
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {}}}}},
)
async def upload(
    request: Request, farm: FarmDep, session: SessionDep, name: Annotated[str, Query(max_length=255)] = ""
) -> dict[str, object]:
    try:
        sha, size = await farm.store.put_stream(request.stream(), farm.settings.max_upload_mb << 20)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    if session.get(Artifact, sha) is None:
        session.add(Artifact(sha256=sha, size=size, name=safe_name(name) if name else ""))
        session.commit()
    return {"sha256": sha, "size": size}


@router.get(
    "/{sha256}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}, "image/png": {}}}, **errors(400, 404)},
)
def download(
    sha256: str,
    farm: FarmDep,
    session: SessionDep,
    token: Annotated[Token, Depends(require("worker", "agent", "submitter", "viewer"))],
) -> FileResponse:
    """An artifact, to whoever needs it and no one else (a 403 says so):

    - admin: any; worker: any (it builds and slices every build's sources and meshes);
    - agent: only G-code, of a job its printer holds (claimed, uploading, printing) or of the job
      it would take next (`/api/agents/next`, fetched while the bed waits);
    - submitter: what its own builds were submitted as or made (source, meshes, STEP, previews,
      G-code);
    - viewer: what any build made (meshes, STEP, previews, G-code), never a source: a submitted
      design or project may be private code.
    """
    if not SHA_RE.match(sha256):
        raise HTTPException(400, "an artifact id is a 64-character lowercase sha256")
    art = session.get(Artifact, sha256)
    if art is None or not farm.store.has(sha256):
        raise HTTPException(404, f"no artifact {sha256}")
    if not may_read_artifact(session, token, sha256, farm.settings.starvation_s):
        raise HTTPException(403, _refusal(token, sha256))
    path = farm.store.path(sha256)
    name = art.name or sha256
    session.close()  # its connection back to the pool now, not after the file is sent
    with path.open("rb") as f:
        png = f.read(len(PNG)) == PNG
    # A preview is shown in a page (an <img>); anything else is a download, never rendered by a
    # browser: with the dashboard's cookie, an uploaded .html or .svg would run as the dashboard.
    return FileResponse(
        path,
        filename=name,
        media_type="image/png" if png else "application/octet-stream",
        content_disposition_type="inline" if png else "attachment",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _refusal(token: Token, sha256: str) -> str:
    if token.role == "agent":
        return (
            f"an agent token reads only the G-code of a job its printer ('{token.printer}') holds "
            f"or takes next; artifact {sha256} is not one"
        )
    if token.role == "viewer":
        return f"a viewer token reads only what builds made, not sources; artifact {sha256} is not one"
    return f"artifact {sha256} is not from a build of '{token.name}'s; a submitter reads only its own"
