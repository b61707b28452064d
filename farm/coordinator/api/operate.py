"""What operators do to jobs and printers: cancel, clear the bed, say what is loaded."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from farm.coordinator import dispatch, explain
from farm.coordinator.api.access import check_owner
from farm.coordinator.api.builds import dispatch_outgoing
from farm.coordinator.api.deps import FarmDep, PrinterPath, RowId, SessionDep, found_printer, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.api.views import job_view, printer_view
from farm.coordinator.models import Job, Token
from farm.core import tags
from farm.core.printer_models import UnknownChoice, check_color, check_material, get_model
from farm.core.states import InvalidMove, JobState
from farm.core.wire import Explained, JobChange, JobView, PrinterSettings, PrinterView, Removed

router = APIRouter(prefix="/api", tags=["operate"], responses=AUTH)


Submitter = Annotated[Token, Depends(require("submitter"))]


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    response_model_exclude_unset=True,
    responses=errors(404, 409),
)
def cancel_job(job_id: RowId, session: SessionDep, token: Submitter) -> dict:
    """Cancel a job: a submitter its own, an admin any."""
    job = _job(session, job_id)
    check_owner(token, job.owner, f"job {job_id}")
    try:
        return job_view(dispatch.cancel(session, job))
    except InvalidMove as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobView,
    response_model_exclude_unset=True,
    responses=errors(404, 409),
)
def retry_job(job_id: RowId, farm: FarmDep, session: SessionDep, token: Submitter) -> dict:
    """Send a failed job back to the queue (a submitter its own, an admin any); if its build failed,
    the job waits while what failed (the CAD run or its slices) is made again."""
    job = _job(session, job_id)
    check_owner(token, job.owner, f"job {job_id}")
    try:
        job, out = dispatch.retry(session, job)
    except InvalidMove as exc:
        raise HTTPException(409, str(exc)) from exc
    dispatch_outgoing(farm, out)
    farm.work.wake()
    return job_view(job)


@router.patch(
    "/jobs/{job_id}", response_model=JobView, response_model_exclude_unset=True, responses=errors(404, 409)
)
def change_job(job_id: RowId, body: JobChange, farm: FarmDep, session: SessionDep, token: Submitter) -> dict:
    """Change a job's priority while it waits for a printer: a submitter its own, an admin any."""
    job = _job(session, job_id)
    check_owner(token, job.owner, f"job {job_id}")
    if job.state not in (JobState.WAITING, JobState.READY):
        raise HTTPException(409, f"job {job_id} is {job.state}; only a queued job's priority can change")
    job.priority = body.priority
    session.add(job)
    session.commit()
    farm.work.wake()  # the order changed: a printer waiting may take it now
    return job_view(job)


@router.get(
    "/jobs/{job_id}/explain",
    dependencies=[Depends(require("submitter", "viewer"))],
    response_model=Explained,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def explain_job(job_id: RowId, session: SessionDep, farm: FarmDep) -> dict:
    job = _job(session, job_id)
    s = farm.settings
    verdicts = explain.explain(
        session, job, s.starvation_s, heatup_s=s.heatup_s, heating_per_group=s.heating_per_group
    )
    return {"job": job_view(job), "printers": verdicts}


def _job(session: SessionDep, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}; `farm jobs` lists them")
    return job


@router.post(
    "/printers/{name}/clear",
    dependencies=[Depends(require("submitter"))],
    response_model=PrinterView,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def clear_bed(name: PrinterPath, farm: FarmDep, session: SessionDep) -> dict:
    printer = found_printer(session, name)
    printer.bed_clear = True
    session.add(printer)
    session.commit()
    farm.work.wake(printer=name)  # its agent's parked claim takes the next job at once
    return printer_view(printer)


@router.delete(
    "/printers/{name}",
    dependencies=[Depends(require())],
    response_model=Removed,
    response_model_exclude_unset=True,
    responses=errors(404, 409),
)
def remove_printer(name: PrinterPath, session: SessionDep) -> dict:
    """Take a printer out of the farm. Refused while it holds a job: cancel or finish that first."""
    printer = found_printer(session, name)
    held = dispatch.bound_job(session, printer)
    if held is not None:
        raise HTTPException(
            409, f"printer '{name}' holds job {held.id} ({held.state}); let it end or `farm cancel {held.id}`"
        )
    session.delete(printer)
    session.commit()
    return {"removed": name}


@router.patch(
    "/printers/{name}",
    dependencies=[Depends(require())],
    response_model=PrinterView,
    response_model_exclude_unset=True,
    responses=errors(404, 422),
)
def set_printer(name: PrinterPath, body: PrinterSettings, farm: FarmDep, session: SessionDep) -> dict:
    printer = found_printer(session, name)
    try:  # the rules `farm submit` checks a job's material and colour by
        if body.material is not None:
            printer.material = check_material(body.material, get_model(printer.model))
        if body.color is not None:
            printer.color = check_color(body.color)
    except UnknownChoice as exc:
        raise HTTPException(422, str(exc)) from None
    if body.nozzle is not None:
        printer.nozzle = round(body.nozzle, 2)
    if body.tags is not None:
        try:
            printer.tags = tags.canonical(body.tags)
        except tags.BadTag as exc:
            raise HTTPException(422, str(exc)) from exc
        if len(tags.split(printer.tags)) > tags.MAX_PRINTER_TAGS:
            raise HTTPException(422, f"a printer has at most {tags.MAX_PRINTER_TAGS} tags")
    if body.location is not None:
        printer.location = body.location or None
    if body.power_group is not None:
        printer.power_group = body.power_group or None
    if body.auto_eject is not None:
        printer.auto_eject = body.auto_eject
    session.add(printer)
    session.commit()
    farm.work.wake(printer=name)  # it may take other jobs now
    return printer_view(printer)
