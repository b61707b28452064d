"""A project's part through its revisions, and two builds side by side (`farm revisions`, `farm diff`)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from sqlmodel import Session, col, select

from farm.coordinator import diffimage
from farm.coordinator.api.access import check_owner
from farm.coordinator.api.deps import MAX_NAME, NAME_PATTERN, FarmDep, RowId, SessionDep, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.api.paging import Cursor, Limit, after_id, page, paged
from farm.coordinator.models import Build, Slice, Token, stored_id
from farm.coordinator.revisions import build_diff, revision_view
from farm.core.mesh import read_stl
from farm.core.printer_models import did_you_mean
from farm.core.wire import BuildDiff, Revision

router = APIRouter(prefix="/api", tags=["revisions"], responses=AUTH)
Reader = Annotated[Token, Depends(require("submitter", "viewer"))]
NamePath = Annotated[str, Path(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
# Drawing reads each mesh whole and costs about a second per 100k triangles on a busy 2-core
# machine (bench/diff_image.py): a larger part is refused, one picture is drawn at a time per
# process, and the last few are kept (artifacts never change: a pair's picture is the same forever).
MAX_TRIANGLES = 1_000_000
_drawing = threading.Lock()
_drawn: OrderedDict[tuple[str, str, str, str], tuple[bytes, int]] = OrderedDict()
KEEP_DRAWN = 32


def _revision(session: Session, build: Build) -> dict[str, Any]:
    slices = session.exec(select(Slice).where(Slice.build_id == build.id)).all()
    return revision_view(build, list(slices))


def _build(session: Session, build_id: int) -> Build:
    build = session.get(Build, build_id)
    if build is None:
        raise HTTPException(404, f"no build {build_id}; `farm revisions NAME PART` lists a part's builds")
    return build


@router.get(
    "/projects/{name}/parts/{part}/revisions",
    dependencies=[Depends(require("submitter", "viewer"))],
    response_model=list[Revision],
    response_model_exclude_unset=True,
    responses={**paged("the part's builds, newest first"), **errors(404)},
)
def revisions(
    name: NamePath,
    part: NamePath,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> list[dict]:
    """Every build of the project's part, newest first: commit, tag, parameters, stage, volume,
    size and the slicer's estimates per printer model."""
    query = (
        select(Build)
        .where(Build.project_name == name, Build.part_name == part)
        .order_by(col(Build.id).desc())
        .limit(limit + 1)
    )
    if (before := after_id(cursor)) is not None:
        query = query.where(col(Build.id) < before)
    rows: list[Build] = list(session.exec(query).all())
    builds = page(rows, limit, stored_id, request, response)
    if not builds and cursor is None:
        _no_revisions(session, name, part)
    return [_revision(session, b) for b in builds]


def _no_revisions(session: Session, name: str, part: str) -> None:
    """404, naming the parts the project does have (or the projects there are) to pick from."""
    parts = session.exec(select(Build.part_name).where(Build.project_name == name).distinct()).all()
    if known := sorted(p for p in parts if p):
        raise HTTPException(
            404,
            f"project '{name}' has no builds of part '{part}'{did_you_mean(part, known)}; "
            f"its parts: {', '.join(known)}",
        )
    named = select(Build.project_name).where(col(Build.project_name).is_not(None)).distinct()
    projects = sorted(p for p in session.exec(named).all() if p)
    hint = did_you_mean(name, projects)
    if not hint and projects:
        hint = f"; projects with builds: {', '.join(projects[:20])}"
    raise HTTPException(404, f"no builds of project '{name}'{hint}")


@router.get(
    "/builds/{build_id}/diff/{other_id}",
    response_model=BuildDiff,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def diff(build_id: RowId, other_id: RowId, session: SessionDep, _token: Reader) -> dict:
    """What changed from build `build_id` to build `other_id`: parameters, volume, bounding box
    size, the slicer's estimates per printer model both were sliced for, commit and tag."""
    build_a, build_b = _build(session, build_id), _build(session, other_id)
    return build_diff(_revision(session, build_a), _revision(session, build_b))


@router.get(
    "/builds/{build_id}/diff/{other_id}/image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "both parts side by side from one camera at one scale, what changed boxed",
            "headers": {
                "X-Changed-Regions": {
                    "description": "how many regions are marked",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors(404, 409, 413),
    },
)
def diff_image(
    build_id: RowId, other_id: RowId, farm: FarmDep, session: SessionDep, token: Reader
) -> Response:
    """A PNG of both builds' parts drawn from one camera at one scale, the regions that differ
    boxed in red. It shows their meshes: a submitter sees it for its own builds (as downloads)."""
    builds = _build(session, build_id), _build(session, other_id)
    if token.role == "submitter":
        for build in builds:
            check_owner(token, build.owner, f"build {build.id}")
    meshes = []
    for build in builds:
        if not build.stl_sha256 or not farm.store.has(build.stl_sha256):
            raise HTTPException(
                409, f"build {build.id} has no mesh to draw (it is {build.stage}); diff builds that made one"
            )
        meshes.append(farm.store.path(build.stl_sha256))
    captions = _caption(builds[0]), _caption(builds[1])
    png, regions = _draw(meshes[0], meshes[1], captions)
    return Response(
        png,
        media_type="image/png",
        headers={"X-Changed-Regions": str(regions), "X-Content-Type-Options": "nosniff"},
    )


def _draw(a: FilePath, b: FilePath, captions: tuple[str, str]) -> tuple[bytes, int]:
    """The picture of two stored meshes (by their content-addressed paths) and its region count."""
    key = (a.name, b.name, *captions)
    with _drawing:
        if (kept := _drawn.get(key)) is not None:
            _drawn.move_to_end(key)
            return kept
        for path in (a, b):  # a binary STL's size says its triangle count: refuse before reading
            if path.stat().st_size > 84 + 50 * MAX_TRIANGLES:
                raise HTTPException(413, f"a mesh of over {MAX_TRIANGLES:,} triangles is too large to draw")
        tris = [read_stl(a), read_stl(b)]
        if any(len(t) > MAX_TRIANGLES for t in tris):
            raise HTTPException(413, f"a mesh of over {MAX_TRIANGLES:,} triangles is too large to draw")
        image = diffimage.diff_image(tris[0], tris[1], captions)
        _drawn[key] = kept = (image.png, len(image.regions))
        if len(_drawn) > KEEP_DRAWN:
            _drawn.popitem(last=False)
        return kept


def _caption(build: Build) -> str:
    """`build 12 @ 1a2b3c4 length=60`: which build, which commit, its parameters."""
    params = " ".join(f"{k}={v}" for k, v in json.loads(build.params_json or "{}").items())
    commit = f" @ {build.git_tag or build.git_commit[:7]}" if build.git_commit else ""
    return f"build {build.id}{commit} {params}".strip()
