"""GET /api/history: finished, failed and cancelled jobs with filters, and their totals."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from farm.coordinator import history
from farm.coordinator.api.deps import SessionDep, require
from farm.coordinator.api.errors import AUTH
from farm.coordinator.api.paging import Cursor, Limit, after_id, page, paged
from farm.coordinator.api.reads import job_rows
from farm.coordinator.models import stored_id
from farm.core.states import TERMINAL_JOB_STATES, JobState
from farm.core.wire import History

router = APIRouter(
    prefix="/api", tags=["status"], dependencies=[Depends(require("submitter", "viewer"))], responses=AUTH
)

Name = Annotated[str | None, Query(min_length=1, max_length=200)]


@router.get(
    "/history",
    response_model=History,
    response_model_exclude_unset=True,
    responses=paged("finished, failed and cancelled jobs, newest first, with totals"),
)
def get_history(
    session: SessionDep,
    request: Request,
    response: Response,
    printer: Name = None,
    material: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    owner: Name = None,
    since: Annotated[datetime | None, Query(description="finished at or after (UTC unless zoned)")] = None,
    until: Annotated[datetime | None, Query(description="finished before (UTC unless zoned)")] = None,
    state: JobState | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    if state is not None and state not in TERMINAL_JOB_STATES:
        raise HTTPException(422, f"history holds only {', '.join(sorted(TERMINAL_JOB_STATES))} jobs")
    if since and until and _cmp(since) >= _cmp(until):
        raise HTTPException(422, "since must be before until")
    filters = history.Filters(printer, material, owner, since, until, state)
    rows = history.recent(session, filters, limit + 1, after_id(cursor))
    jobs = page(rows, limit, stored_id, request, response)
    return {"jobs": job_rows(session, jobs, pictures=True), "totals": history.totals(session, filters)}


def _cmp(ts: datetime) -> datetime:
    return history.as_utc(ts) or ts
