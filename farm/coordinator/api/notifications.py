"""Notification targets and their deliveries' log (admin only); coordinator/notify.py does the sending."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from sqlmodel import col, delete, select

from farm.coordinator import notify
from farm.coordinator.api.deps import RowId, SessionDep, new_secret, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.ops_tables import NotifyDelivery, NotifyEvent, NotifyTarget
from farm.core.wire import MadeTarget, NewTarget, NotifyLogEntry, QueuedTest, RemovedTarget, TargetView

router = APIRouter(prefix="/api/notify", tags=["notify"], dependencies=[Depends(require())], responses=AUTH)


def target_view(t: NotifyTarget) -> dict[str, Any]:
    return {
        "id": t.id,
        "url": t.url,
        "format": t.format,
        "events": [e for e in t.events.split(",") if e] or ["*"],
        "signed": bool(t.secret),
        "created_at": t.created_at,
    }


@router.get("/targets", response_model=list[TargetView], response_model_exclude_unset=True)
def list_targets(session: SessionDep) -> list[dict]:
    return [target_view(t) for t in session.exec(select(NotifyTarget).order_by(col(NotifyTarget.id)))]


@router.post(
    "/targets",
    status_code=201,
    response_model=MadeTarget,
    response_model_exclude_unset=True,
    responses=errors(422),
)
def add_target(body: NewTarget, session: SessionDep) -> dict:
    """A JSON target gets a signing secret (the one given, else a new one, shown only now)."""
    mail = body.url.startswith("mailto:")
    fmt = body.format or ("email" if mail else "json")
    if fmt not in notify.FORMATS:
        raise HTTPException(422, f"unknown format '{fmt}': one of {', '.join(notify.FORMATS)}")
    if mail != (fmt == "email") or not (mail or body.url.startswith(("http://", "https://"))):
        raise HTTPException(422, "a target is an http(s):// URL, or mailto:address for the email format")
    unknown = sorted(set(body.events) - set(notify.EVENTS))
    if unknown:
        raise HTTPException(422, f"unknown events {unknown}: known are {', '.join(notify.EVENTS)}")
    secret = (body.secret or new_secret()) if fmt == "json" else None
    target = NotifyTarget(
        url=body.url,
        format=fmt,
        events="," + ",".join(sorted(set(body.events))) + "," if body.events else "",
        secret=secret,
    )
    session.add(target)
    session.commit()
    return {**target_view(target), "secret": secret}


@router.delete(
    "/targets/{target_id}",
    response_model=RemovedTarget,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def remove_target(target_id: RowId, session: SessionDep) -> dict:
    target = session.get(NotifyTarget, target_id)
    if target is None:
        raise HTTPException(404, f"no notification target {target_id}")
    session.exec(delete(NotifyDelivery).where(col(NotifyDelivery.target_id) == target_id))
    session.delete(target)
    session.commit()
    return {"removed": target_id}


@router.post(
    "/targets/{target_id}/test",
    status_code=202,
    response_model=QueuedTest,
    response_model_exclude_unset=True,
    responses=errors(404),
)
def test_target(target_id: RowId, session: SessionDep) -> dict:
    """Queue a test event for this target alone; `farm notify log` shows how it went."""
    target = session.get(NotifyTarget, target_id)
    if target is None:
        raise HTTPException(404, f"no notification target {target_id}")
    delivery = notify.send_test(session, target)
    return {"delivery": delivery.id, "target": target_id}


@router.get("/log", response_model=list[NotifyLogEntry], response_model_exclude_unset=True)
def delivery_log(session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
    """The latest deliveries, newest first, with each one's outcome."""
    rows = session.exec(
        select(NotifyDelivery, NotifyEvent, NotifyTarget)
        .join(NotifyEvent, col(NotifyEvent.id) == NotifyDelivery.event_id)
        .join(NotifyTarget, col(NotifyTarget.id) == NotifyDelivery.target_id)
        .order_by(col(NotifyDelivery.id).desc())
        .limit(limit)
    ).all()
    return [
        {
            "id": d.id,
            "event": e.kind,
            "summary": notify.summary(e.kind, json.loads(e.data_json)),
            "target": t.id,
            "url": t.url,
            "state": d.state,
            "attempts": d.attempts,
            "last_status": d.last_status,
            "last_error": d.last_error,
            "next_at": d.next_at if d.state == "pending" else None,
            "sent_at": d.sent_at,
            "created_at": d.created_at,
        }
        for d, e, t in rows
    ]
