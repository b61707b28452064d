"""The dial-out side of printer agents: register, heartbeat, claim, report."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, col

from farm.coordinator import dispatch, heartbeats, metrics, moves
from farm.coordinator.api.deps import (
    MAX_NAME,
    NAME_PATTERN,
    Farm,
    FarmDep,
    RowId,
    SessionDep,
    found,
    reconnecting,
    require,
    write,
)
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.api.longpoll import GATHER_S, MAX_WAIT_S, RECHECK_S
from farm.coordinator.api.views import job_view
from farm.coordinator.models import Artifact, Job, Printer, Slice, Token, table_of
from farm.core.names import printer_file_name
from farm.core.states import PRINT_ENDED, InvalidMove, JobState
from farm.core.wire import (
    SNAPSHOT_WANTED,
    Claim,
    Heartbeat,
    HeartbeatAnswer,
    JobView,
    NextGcode,
    Register,
    Registered,
    Report,
)

router = APIRouter(prefix="/api/agents", tags=["agents"], responses=AUTH)
AgentToken = Annotated[Token, Depends(require("agent"))]


def _check_bound(token: Token, name: str) -> None:
    if token.role == "agent" and token.printer != name:
        raise HTTPException(403, f"this agent token is bound to printer '{token.printer}', not '{name}'")


def _not_registered(name: str) -> HTTPException:
    return HTTPException(404, f"printer '{name}' is not registered; its agent registers it on start")


def _printer(session: Session, token: Token, name: str) -> Printer:
    _check_bound(token, name)
    printer = session.get(Printer, name)
    if printer is None:
        raise _not_registered(name)
    return printer


def _claim_view(job: Any, done_slice: tuple[Slice, str | None]) -> dict:
    """`job`: a Job, or a row of the job table (PostgreSQL's claims on the event loop)."""
    sl, name = done_slice
    return {
        **job_view(job, sl),
        "fence": job.fence,
        "gcode": sl.gcode_sha256,
        # Only the farm names files on printers; safe_name again for names stored before it did.
        "gcode_name": printer_file_name(job.id, job.attempts or 0, name),
    }


def _done_slice(session: Session, slice_id: int, farm: Farm) -> tuple[Slice, str | None]:
    """A finished slice and its G-code's file name. Neither changes once the slice is done, and
    claims of the same build's copies ask again and again: kept, a few thousand at most."""
    if (found := farm.done_slices.get(slice_id)) is not None:
        return found
    sl = session.get(Slice, slice_id)
    assert sl is not None and sl.gcode_sha256
    art = session.get(Artifact, sl.gcode_sha256)
    return _remember_slice(farm, slice_id, Slice(**sl.model_dump()), art.name if art else None)


def _remember_slice(farm: Farm, slice_id: int, sl: Slice, name: str | None) -> tuple[Slice, str | None]:
    if len(farm.done_slices) >= 4096:
        farm.done_slices.clear()
    farm.done_slices[slice_id] = (sl, name)
    return sl, name


_SLICES = table_of(Slice)
_DONE_SLICE = (
    select(*_SLICES.c, col(Artifact.name).label("gcode_name"))
    .outerjoin(Artifact, col(Artifact.sha256) == _SLICES.c.gcode_sha256)
    .where(_SLICES.c.id == bindparam("s_id"))
)


async def _done_slice_pg(engine: AsyncEngine, slice_id: int, farm: Farm) -> tuple[Slice, str | None]:
    """`_done_slice` for PostgreSQL claims: one read on the claims' own pool. (Through `write`
    it took a session on the durable pool, where it queued behind reports waiting for the disk:
    with a 50-copy build per slice, one claim in twenty missed the cache.)"""
    if (found := farm.done_slices.get(slice_id)) is not None:
        return found
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # no BEGIN, no ROLLBACK
        row = (await conn.execute(_DONE_SLICE, {"s_id": slice_id})).one()
    fields = row._asdict()
    name = fields.pop("gcode_name")
    return _remember_slice(farm, slice_id, Slice(**fields), name)


# Every agent calls these every few seconds, most of them through fastlane.py. SQLite: each runs
# in one write session through deps.write, on the event loop when no other writer is busy
# (cheaper than a thread hop). PostgreSQL: heartbeats and claims are heartbeats.heartbeat_pg and
# claim_pg on the event loop; the rest go through deps.write.


@router.post("/register", response_model=Registered, response_model_exclude_unset=True)
async def register(body: Register, token: AgentToken, farm: FarmDep) -> dict:
    if token.role == "agent" and token.printer != body.printer:
        raise HTTPException(403, f"this agent token is bound to printer '{token.printer}'")
    return await write(farm, _register, body, farm)


def _register(session: Session, body: Register, farm: Farm) -> dict:
    printer = session.get(Printer, body.printer) or Printer(
        name=body.printer, model=body.model, protocol=body.protocol
    )
    printer.model, printer.protocol = body.model, body.protocol
    printer.agent_version, printer.auto_eject = body.agent_version, body.auto_eject
    job = dispatch.bound_job(session, printer)
    if job is None and body.state in PRINT_ENDED:
        # A print ended while no agent watched (or before this one started): its part is still on
        # the bed until someone clears it. A job still bound is the agent's to reconcile instead.
        printer.state = body.state
        moves.end_on_bed(printer)
    session.add(printer)
    session.commit()
    farm.work.models[printer.name] = printer.model  # whom a slice for this model wakes (longpoll.py)
    if job is None:
        return {"printer": printer.name, "job": None}
    assert job.slice_id is not None
    return {"printer": printer.name, "job": _claim_view(job, _done_slice(session, job.slice_id, farm))}


def _beat_fields(body: Heartbeat, farm: Farm) -> heartbeats.BeatFields:
    """What heartbeats.heartbeat and heartbeat_pg take besides the printer's name."""
    return {
        "state": body.state,
        "message": body.message,
        "progress": body.progress,
        "lease_s": farm.settings.lease_s,
        "material": body.material,
        "color": body.color,
    }


def _beat(session: Session, body: Heartbeat, farm: Farm) -> heartbeats.Beat:
    beat = heartbeats.heartbeat(session, body.printer, **_beat_fields(body, farm))
    if beat is None:
        raise _not_registered(body.printer)
    return beat


@router.post(
    "/heartbeat", response_model=HeartbeatAnswer, response_model_exclude_unset=True, responses=errors(404)
)
async def heartbeat(body: Heartbeat, token: AgentToken, farm: FarmDep) -> dict:
    """Most heartbeats never reach this route: fastlane.py answers them. It comes here for the
    ones that need an error message."""
    _check_bound(token, body.printer)
    return await beat(farm, body)


async def beat(farm: Farm, body: Heartbeat) -> dict:
    if farm.nowait_engine is None:
        found: heartbeats.Beat | None = await write(farm, _beat, body, farm)
    else:
        engine, fields = farm.nowait_engine, _beat_fields(body, farm)
        found = await reconnecting(lambda: heartbeats.heartbeat_pg(engine, body.printer, **fields))
    if found is None:
        raise _not_registered(body.printer)
    return {"job": found.job, "fence": found.fence, **({"snapshot": True} if found.snapshot else {})}


@router.get(
    "/next",
    response_model=NextGcode,
    responses={204: {"description": "nothing queued for this printer"}, **errors(404)},
)
def next_gcode(
    printer: Annotated[str, Query(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)],
    token: AgentToken,
    farm: FarmDep,
    session: SessionDep,
) -> object:
    """What this printer would print next: its agent downloads it while the bed waits."""
    p = _printer(session, token, printer)
    gcode = dispatch.next_gcode(session, p, farm.settings.starvation_s)
    return {"gcode": gcode} if gcode else Response(status_code=204)


WaitS = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="with nothing to print, answer as soon as a job for this printer is ready, "
        "or 204 after this many seconds (a long poll); 0: at once",
    ),
]


@router.post(
    "/claim",
    response_model=Claim,
    response_model_exclude_unset=True,
    responses={204: {"description": "nothing to print"}, **errors(404)},
)
async def claim(
    body: Heartbeat, token: AgentToken, farm: FarmDep, response: Response, wait: WaitS = 0.0
) -> object:
    """Most claims are answered by fastlane.py; this route serves the rest and gives the errors."""
    _check_bound(token, body.printer)
    found, wanted = await claim_next(farm, body, token, wait)
    headers = {SNAPSHOT_WANTED: "wanted"} if wanted else {}
    if found is None:
        return Response(status_code=204, headers=headers)
    response.headers.update(headers)
    return found


async def claim_next(
    farm: Farm, body: Heartbeat, token: Token, wait: float = 0.0
) -> tuple[dict | None, bool]:
    """The job this printer should print next, with its lease (None: nothing to print, within
    `wait` seconds; each try is a heartbeat too, so a parked agent stays seen), and whether a
    still from its camera is wanted (which ends the wait: the agent takes it now)."""
    deadline = asyncio.get_running_loop().time() + min(wait, MAX_WAIT_S)
    while True:
        found, wanted = await _claim_once(farm, body, token)
        left = deadline - asyncio.get_running_loop().time()
        if found is not None or wanted or left <= 0 or farm.work.closed:
            return found, wanted
        if await farm.work.wait(body.printer, min(left, RECHECK_S)):
            await asyncio.sleep(GATHER_S)


async def _claim_once(farm: Farm, body: Heartbeat, token: Token) -> tuple[dict | None, bool]:
    if (engine := farm.nowait_engine) is None:
        return await write(farm, _claim, body, token, farm)
    # PostgreSQL: on the event loop, through the pool that does not wait for the disk; the
    # agent's "uploading" report does, before the printer gets anything (db.make_async_engine).
    settings = farm.settings
    try:
        job, wanted = await reconnecting(
            lambda: dispatch.claim_and_beat_pg(
                engine,
                body.printer,
                _beat_fields(body, farm),
                starvation_s=settings.starvation_s,
                heatup_s=settings.heatup_s,
                heating_per_group=settings.heating_per_group,
            )
        )
    except dispatch.NoSuchPrinter:
        raise _not_registered(body.printer) from None
    if job is None:
        return None, wanted
    done_slice = await reconnecting(lambda: _done_slice_pg(engine, job.slice_id, farm))
    return _claim_view(job, done_slice), wanted


def _claim(session: Session, body: Heartbeat, token: Token, farm: Farm) -> tuple[dict | None, bool]:
    beat = _beat(session, body, farm)
    printer = _printer(session, token, body.printer)
    job = dispatch.claim(
        session,
        printer,
        farm.settings.lease_s,
        starvation_s=farm.settings.starvation_s,
        heatup_s=farm.settings.heatup_s,
        heating_per_group=farm.settings.heating_per_group,
        beat=beat,
    )
    if job is None:
        return None, beat.snapshot
    assert job.slice_id is not None
    return _claim_view(job, _done_slice(session, job.slice_id, farm)), beat.snapshot


@router.post(
    "/jobs/{job_id}/report",
    response_model=JobView,
    response_model_exclude_unset=True,
    responses=errors(404, 409),
)
async def report(job_id: RowId, body: Report, token: AgentToken, farm: FarmDep) -> dict:
    """Most reports are answered by fastlane.py; this route serves the rest and gives the errors."""
    return await report_on(farm, job_id, body, token)


async def report_on(farm: Farm, job_id: int, body: Report, token: Token) -> dict:
    return await write(farm, _report, job_id, body, token, farm)


def _report(session: Session, job_id: int, body: Report, token: Token, farm: Farm) -> dict:
    printer = _printer(session, token, body.printer)
    job = found(session, Job, job_id, "job")
    if body.upload_bytes is not None and body.state == JobState.PRINTING and job.state != JobState.PRINTING:
        metrics.count(session, metrics.UPLOAD_BYTES, body.upload_bytes, printer=body.printer)
        metrics.count(session, metrics.UPLOAD_SECONDS, body.upload_s or 0.0, printer=body.printer)
    try:
        job = dispatch.report(
            session,
            job,
            printer,
            fence=body.fence,
            state=body.state,
            lease_s=farm.settings.lease_s,
            progress=body.progress,
            remaining_s=body.remaining_s,
            error=body.error,
            backoff_s=farm.settings.retry_backoff_s,
        )
    except (dispatch.StaleLease, InvalidMove) as exc:
        raise HTTPException(409, str(exc)) from exc
    return job_view(job)
