"""Submitting designs and following them; the CAD and slicing workers' side of a build."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, UploadFile
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlmodel import Session, col, select

from farm.coordinator import metrics, pipeline
from farm.coordinator.api.deps import Farm, FarmDep, RowId, SessionDep, found, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.api.paging import Cursor, Limit, after_id, page, paged
from farm.coordinator.api.views import build_view, slice_view
from farm.coordinator.models import Artifact, Build, Job, Printer, Slice, Token, stored_id
from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.coordinator.store import TooLarge
from farm.core import tags
from farm.core.gitsource import BadGitSource, check_commit, check_ref, check_url
from farm.core.names import UnsafeName, check_entry_path, safe_name
from farm.core.print_options import check_overrides, print_options
from farm.core.printer_models import (
    UnknownChoice,
    check_color,
    check_material,
    check_model,
    check_quality,
    closest,
    get_model,
)
from farm.core.queue import send
from farm.core.slice_error import SliceError
from farm.core.states import BuildStage, SliceState
from farm.core.wire import (
    BuildView,
    CadResult,
    CadStart,
    Held,
    SliceResult,
    SliceStart,
    SliceView,
    SliceWork,
    SubmitOptions,
    WorkerClaim,
)

log = logging.getLogger("farm.coordinator.api")

router = APIRouter(prefix="/api", tags=["builds"], responses=AUTH)
Submitter = Annotated[Token, Depends(require("submitter"))]  # the build is its name's
Options = Annotated[str, Form(max_length=1 << 20, description="SubmitOptions as JSON")]


def dispatch_outgoing(farm: Farm, out: list[pipeline.Outgoing]) -> None:
    if not out:
        return
    if farm.broker is None:
        raise HTTPException(503, "the coordinator has no queue: set FARM_REDIS_URL (farm up does this)")
    try:
        for msg in out:
            send(farm.broker, msg.queue, msg.actor, *msg.args)
    except RedisError as exc:
        # The work is committed: answering 5xx would make the caller submit it again. The resend
        # sweep sends every unbegun build and slice again once the queue answers.
        log.warning(
            "the queue (Redis) did not take %d message(s): %s; they are re-sent within %.0f s of it "
            "coming back",
            len(out),
            exc,
            farm.settings.work_resend_s,
        )


def load_build(session: Session, build_id: int) -> dict[str, Any]:
    build = found(session, Build, build_id, "build")
    jobs = session.exec(select(Job).where(Job.build_id == build_id).order_by(col(Job.id))).all()
    slices = session.exec(select(Slice).where(Slice.build_id == build_id).order_by(col(Slice.id))).all()
    return build_view(build, list(jobs), list(slices))


@router.post(
    "/builds",
    status_code=201,
    response_model=BuildView,
    response_model_exclude_unset=True,
    responses=errors(413, 415, 422, 503),
)
async def submit(
    farm: FarmDep, session: SessionDep, token: Submitter, file: UploadFile, options: Options = "{}"
) -> dict:
    opts = _read_options(options)
    filename, entry_file, name = _source_names(farm, opts, file)
    try:
        job_tags = tags.canonical(opts.tags)
        overrides = check_overrides(
            print_options(infill=opts.infill, supports=opts.supports, brim=opts.brim) | opts.settings
        )
    except (tags.BadTag, SliceError) as exc:
        raise HTTPException(422, str(exc)) from exc
    _check_kind_fits(opts, name)
    _check_printer_choices(session, opts)
    sha, size = await _store_upload(farm, file, name)
    if pipeline.source_kind(name) == "cad":
        # Read, never run: a customizable's parameters are checked against its model here.
        try:
            opts.params = check_cad_source(
                farm.store.path(sha), entry_file, opts.entry, opts.params, name=name
            )
        except SourceProblem as exc:
            raise HTTPException(422, str(exc)) from None
    if session.get(Artifact, sha) is None:
        session.add(Artifact(sha256=sha, size=size, name=filename))
    build, _jobs, out = pipeline.create_build(
        session,
        source_name=name,
        source_sha256=sha,
        **opts.model_dump(include={"copies", "material", "quality", "color", "printer_model", "priority"}),
        printer=opts.printer,
        nozzle=opts.nozzle,
        tags=job_tags,
        per_plate=opts.per_plate,
        overrides=overrides,
        attempts=opts.attempts or farm.settings.job_attempts,
        entry=opts.entry,
        params=opts.params,
        project=entry_file is not None,
        git=opts.git.model_dump() if opts.git else None,
        use_cache=not opts.no_cache,
        step=opts.step,
        owner=token.name,
        preview=opts.preview,
    )
    session.commit()
    dispatch_outgoing(farm, out)
    farm.work.wake()  # a job may be ready at once (a slice already made): parked claims look again
    return load_build(session, stored_id(build))


def _read_options(options: str) -> SubmitOptions:
    try:
        return SubmitOptions.model_validate(json.loads(options))
    except (ValueError, ValidationError) as exc:
        raise HTTPException(422, f"bad submit options: {exc}") from exc


def _source_names(farm: Farm, opts: SubmitOptions, file: UploadFile) -> tuple[str, str | None, str]:
    """(the upload's file name, the entry file in a project, the name the build goes by), each
    checked, and the git source it names held to the rules `farm submit` fetches by."""
    # User text never names a file as it is: one plain base name (a project's entry file: a plain
    # relative path inside it). A `../` here once reached a printer's HTTP path.
    filename = safe_name(file.filename)
    try:
        entry_file = check_entry_path(opts.entry_file) if opts.entry_file is not None else None
    except UnsafeName as exc:
        raise HTTPException(422, str(exc)) from None
    name = entry_file or filename
    try:
        pipeline.source_kind(name)
    except pipeline.BadRequest as exc:
        raise HTTPException(415, str(exc)) from exc
    if opts.git and not opts.entry_file:
        raise HTTPException(422, "a git submission is a project archive: give entry_file")
    if opts.git:  # recorded and shown, so held to the rules `farm submit` fetches by
        try:
            check_url(opts.git.url, farm.settings.git_schemes)
            check_commit(opts.git.commit)
            if opts.git.ref is not None:
                check_ref(opts.git.ref)
        except BadGitSource as exc:
            raise HTTPException(422, str(exc)) from None
    if opts.step and pipeline.source_kind(name) != "cad":
        raise HTTPException(
            422, f"--step needs a build123d .py design; '{name}' has no CAD model to export as STEP"
        )
    return filename, entry_file, name


def _check_kind_fits(opts: SubmitOptions, name: str) -> None:
    if opts.preview and pipeline.source_kind(name) != "cad":
        raise HTTPException(422, f"a preview builds a .py design; '{name}' is a mesh or G-code already")
    if opts.per_plate > 1 and pipeline.source_kind(name) == "gcode":
        raise HTTPException(422, "a ready G-code cannot be rearranged: --per-plate needs a design or a mesh")


def _check_printer_choices(session: Session, opts: SubmitOptions) -> None:
    """What no printer could ever take is refused now, by the rules `farm printers set` uses; the
    model, material, quality and colour are set to their canonical names."""
    try:
        model = check_model(opts.printer_model) if opts.printer_model else None
        opts.material = check_material(opts.material, model)
        opts.quality = check_quality(opts.quality, model)
        opts.color = check_color(opts.color) if opts.color is not None else None
    except UnknownChoice as exc:
        raise HTTPException(422, str(exc)) from None
    if opts.printer:  # pinned: slice only for that printer's model
        pinned = session.get(Printer, opts.printer)
        if pinned is None:
            near = closest(opts.printer, session.exec(select(Printer.name)).all())
            hint = f"; did you mean '{near}'?" if near else ";"
            raise HTTPException(422, f"no printer '{opts.printer}'{hint} `farm printers` lists them")
        pinned_model = get_model(pinned.model)
        if model and model != pinned_model:
            raise HTTPException(
                422, f"printer '{pinned.name}' is a {pinned.model}, not a {opts.printer_model}"
            )
        opts.printer_model = pinned_model.name if pinned_model else pinned.model
    elif model:
        opts.printer_model = model.name


async def _store_upload(farm: Farm, file: UploadFile, name: str) -> tuple[str, int]:
    """The upload streamed into the store: its sha256 and size."""

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await file.read(1 << 20):
            yield chunk

    try:
        sha, size = await farm.store.put_stream(chunks(), farm.settings.max_upload_mb << 20)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    if size == 0:
        raise HTTPException(422, f"'{name}' is empty")
    return sha, size


@router.get(
    "/builds/{build_id}",
    dependencies=[Depends(require("submitter", "viewer", "worker"))],
    response_model=BuildView,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def get_build(build_id: RowId, session: SessionDep) -> dict:
    return load_build(session, build_id)


@router.get(
    "/builds",
    dependencies=[Depends(require("submitter", "viewer"))],
    response_model=list[BuildView],
    response_model_exclude_unset=True,
    responses=paged("builds, newest first"),
)
def list_builds(
    session: SessionDep, request: Request, response: Response, limit: Limit = 50, cursor: Cursor = None
) -> list[dict]:
    query = select(Build.id).order_by(col(Build.id).desc()).limit(limit + 1)
    if (before := after_id(cursor)) is not None:
        query = query.where(col(Build.id) < before)
    found = [build_id for build_id in session.exec(query).all() if build_id is not None]
    return [load_build(session, build_id) for build_id in page(found, limit, int, request, response)]


@router.post(
    "/builds/{build_id}/cad/start",
    dependencies=[Depends(require("worker"))],
    response_model=CadStart,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def cad_start(build_id: RowId, farm: FarmDep, session: SessionDep, claim: WorkerClaim | None = None) -> dict:
    """Take the build under a lease (`go`); go=false: it is past CAD, or another worker holds it."""
    build = found(session, Build, build_id, "build")
    worker = (claim or WorkerClaim()).worker
    go = pipeline.cad_started(session, build, worker=worker, lease_s=farm.settings.work_lease_s)
    session.commit()
    return {"go": go, "build": load_build(session, build_id), **_lease(farm, go)}


@router.post(
    "/builds/{build_id}/cad/heartbeat",
    dependencies=[Depends(require("worker"))],
    response_model=Held,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def cad_heartbeat(build_id: RowId, claim: WorkerClaim, farm: FarmDep, session: SessionDep) -> dict:
    """Extend the worker's lease; held=false: the build is no longer its (the lease ran out)."""
    build = found(session, Build, build_id, "build")
    return _extend(session, farm, pipeline.cad_heartbeat, build, claim.worker)


def _lease(farm: Farm, held: bool) -> dict[str, float]:
    """How long the lease lasts and how often to extend it: the worker follows the coordinator."""
    s = farm.settings
    return {"lease_s": s.work_lease_s, "heartbeat_s": s.work_heartbeat_s} if held else {}


def _extend(session: Session, farm: Farm, heartbeat: Callable[..., bool], work: Any, worker: str) -> dict:
    """A worker's heartbeat on the build or slice it works on (pipeline.cad_heartbeat or
    slice_heartbeat): held=false once the lease ran out."""
    held = heartbeat(session, work, worker=worker, lease_s=farm.settings.work_lease_s)
    session.commit()
    return {"held": held, **_lease(farm, held)}


@router.post(
    "/builds/{build_id}/cad/result",
    dependencies=[Depends(require("worker"))],
    response_model=BuildView,
    response_model_exclude_unset=True,
    responses=errors(404, 422, 503),
)
def cad_result(build_id: RowId, result: CadResult, farm: FarmDep, session: SessionDep) -> dict:
    build = found(session, Build, build_id, "build")
    for sha in (result.stl, result.threemf, result.step, result.preview, result.preview_small):
        if sha and session.get(Artifact, sha) is None:
            raise HTTPException(422, f"artifact {sha} was not uploaded")
    if result.cached is not None and build.stage in (BuildStage.QUEUED, BuildStage.CAD):  # not a repeat
        metrics.count(session, metrics.CACHE, stage="cad", result="hit" if result.cached else "miss")
    out = pipeline.cad_finished(
        session,
        build,
        error=result.error,
        stl_sha256=result.stl,
        threemf_sha256=result.threemf,
        bbox=result.bbox,
        seconds=result.seconds,
        extras={
            "step_sha256": result.step,
            "preview_sha256": result.preview,
            "preview_small_sha256": result.preview_small,
            "objects": result.objects,
            "volume_mm3": result.volume,
            "skipped_json": json.dumps(result.skipped) if result.skipped else None,
        },
    )
    session.commit()
    dispatch_outgoing(farm, out)
    return load_build(session, build_id)


@router.get(
    "/slices/{slice_id}",
    dependencies=[Depends(require("worker"))],
    response_model=SliceWork,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def get_slice(slice_id: RowId, session: SessionDep) -> dict:
    sl = found(session, Slice, slice_id, "slice")
    return _slice_work(session, sl)


@router.post(
    "/slices/{slice_id}/start",
    dependencies=[Depends(require("worker"))],
    response_model=SliceStart,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def slice_start(slice_id: RowId, claim: WorkerClaim, farm: FarmDep, session: SessionDep) -> dict:
    """Take a pending slice under a lease (`go`), as cad/start."""
    sl = found(session, Slice, slice_id, "slice")
    go = pipeline.slice_started(session, sl, worker=claim.worker, lease_s=farm.settings.work_lease_s)
    session.commit()
    return {"go": go, "slice": _slice_work(session, sl), **_lease(farm, go)}


@router.post(
    "/slices/{slice_id}/heartbeat",
    dependencies=[Depends(require("worker"))],
    response_model=Held,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def slice_heartbeat(slice_id: RowId, claim: WorkerClaim, farm: FarmDep, session: SessionDep) -> dict:
    sl = found(session, Slice, slice_id, "slice")
    return _extend(session, farm, pipeline.slice_heartbeat, sl, claim.worker)


def _slice_work(session: Session, sl: Slice) -> dict:
    """What a slicing worker needs: the slice, and its build's mesh and settings."""
    build = session.get(Build, sl.build_id)
    assert build is not None
    return {
        **slice_view(sl),
        "build": build.id,
        "stl": build.stl_sha256,
        # Several objects: the worker slices the 3MF, so the slicer places them as separate objects.
        "threemf": build.threemf_sha256,
        "objects": build.objects,
        "preview": build.preview_sha256,  # the Bambu package's plate picture when the G-code has none
        "preview_small": build.preview_small_sha256,  # embedded in plain G-code as its thumbnail
        "source": build.source_name,
        "kind": build.source_kind,
        "source_sha256": build.source_sha256,
        "material": build.material,
        "quality": build.quality,
        "overrides": json.loads(build.overrides_json or "{}"),
    }


@router.post(
    "/slices/{slice_id}/result",
    dependencies=[Depends(require("worker"))],
    response_model=SliceView,
    response_model_exclude_unset=True,
    responses=errors(404, 422),
)
def slice_result(slice_id: RowId, result: SliceResult, farm: FarmDep, session: SessionDep) -> dict:
    sl = found(session, Slice, slice_id, "slice")
    if result.gcode and session.get(Artifact, result.gcode) is None:
        raise HTTPException(422, f"artifact {result.gcode} was not uploaded")
    if result.cached is not None and sl.state == SliceState.PENDING:  # not a repeat
        metrics.count(session, metrics.CACHE, stage="slicing", result="hit" if result.cached else "miss")
    pipeline.slice_finished(
        session,
        sl,
        error=result.error,
        gcode_sha256=result.gcode,
        meta=result.meta.model_dump(),
        seconds=result.seconds,
    )
    session.commit()
    farm.work.wake(model=sl.printer_model)  # its jobs are ready: that model's parked claims take them
    return slice_view(sl)
