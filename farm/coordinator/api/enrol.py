"""Enrolling a printer's Pi with one code: an admin makes it, the Pi trades it for an agent token.

`POST /api/printers/enrol` (admin) adds the printer if it is new and returns a one-time code;
`POST /api/enroll/info` shows a Pi what the code is for without spending it (so a failed printer
check leaves it usable); `POST /api/enroll` spends it for a token bound to that one printer.
The code is the credential on the last two routes: they take no bearer token.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import update
from sqlmodel import Session, col, select

from farm.coordinator.api.deps import (
    FarmDep,
    SessionDep,
    as_utc,
    hash_secret,
    new_secret,
    remember_revoked,
    require,
)
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.models import EnrolCode, Printer, Token
from farm.core.printer_models import UnknownChoice, check_model
from farm.core.wire import CodeBody, Enrolled, Enrolment, EnrolmentCode, NewEnrolment

router = APIRouter(prefix="/api", tags=["enrol"])

CODE_PREFIX = "pe_"  # told apart from tokens (pf_) at a glance


def agent_token_name(printer: str) -> str:
    return f"agent-{printer}"


@router.post(
    "/printers/enrol",
    status_code=201,
    response_model=EnrolmentCode,
    response_model_exclude_unset=True,
    responses={**AUTH, **errors(409, 422)},
)
def make_code(body: NewEnrolment, session: SessionDep, admin: Annotated[Token, Depends(require())]) -> dict:
    """Add the printer (if new) and make a one-time code its Pi enrols with."""
    try:
        model = check_model(body.model)
    except UnknownChoice as exc:
        raise HTTPException(422, str(exc)) from None
    printer = session.get(Printer, body.printer)
    if printer is None:
        # Offline until its agent registers; the agent's register fills in the rest.
        printer = Printer(name=body.printer, model=model.name, protocol=body.driver, bed_clear=True)
        session.add(printer)
    elif printer.model != model.name:
        raise HTTPException(
            409,
            f"printer '{body.printer}' is a {printer.model}, not a {model.name}; "
            f"`farm printers remove {body.printer}` first to change its model",
        )
    code = CODE_PREFIX + secrets.token_urlsafe(16)
    expires = datetime.now(UTC) + timedelta(seconds=body.ttl_s)
    session.add(
        EnrolCode(
            secret_sha256=hash_secret(code),
            printer=body.printer,
            driver=body.driver,
            created_by=admin.name,
            expires_at=expires,
        )
    )
    session.commit()
    return {
        "printer": body.printer,
        "model": model.name,
        "driver": body.driver,
        "code": code,  # the only time it is shown
        "expires_at": expires.isoformat(),
    }


def _usable(session: Session, code: str) -> EnrolCode:
    found = session.exec(
        select(EnrolCode).where(EnrolCode.secret_sha256 == hash_secret(code.strip()))
    ).first()
    again = "ask an admin for a new one: farm printers add NAME --model MODEL"
    if found is None:
        raise HTTPException(403, f"not an enrolment code of this coordinator; {again}")
    if found.used_at is not None:
        raise HTTPException(
            409, f"this enrolment code was used at {as_utc(found.used_at).isoformat()}; {again}"
        )
    if as_utc(found.expires_at) <= datetime.now(UTC):
        raise HTTPException(
            410, f"this enrolment code expired at {as_utc(found.expires_at).isoformat()}; {again}"
        )
    return found


def _described(session: Session, enrol: EnrolCode) -> dict:
    printer = session.get(Printer, enrol.printer)
    if printer is None:
        raise HTTPException(404, f"printer '{enrol.printer}' was removed after this code was made")
    return {
        "printer": printer.name,
        "model": printer.model,
        "driver": enrol.driver,
        "expires_at": as_utc(enrol.expires_at).isoformat(),
    }


@router.post(
    "/enroll/info",
    response_model=Enrolment,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 409, 410),
)
def code_info(body: CodeBody, session: SessionDep) -> dict:
    """What a code enrols (printer, model, suggested driver), without spending it."""
    return _described(session, _usable(session, body.code))


@router.post(
    "/enroll",
    response_model=Enrolled,
    response_model_exclude_unset=True,
    responses=errors(403, 404, 409, 410),
)
def enroll(body: CodeBody, session: SessionDep, farm: FarmDep) -> dict:
    """Spend the code: an agent token for its printer, replacing that printer's earlier agent token."""
    enrol = _usable(session, body.code)
    described = _described(session, enrol)
    now = datetime.now(UTC)
    # Spent at most once even with two Pis racing on one code (or several coordinator processes).
    spent = session.exec(
        update(EnrolCode)
        .where(col(EnrolCode.id) == enrol.id, col(EnrolCode.used_at).is_(None))
        .values(used_at=now)
    )
    if spent.rowcount != 1:
        session.rollback()
        raise HTTPException(409, "this enrolment code was just used by another request")
    name = agent_token_name(enrol.printer)
    old = session.exec(select(Token).where(Token.name == name, col(Token.revoked_at).is_(None))).all()
    for token in old:  # a re-enrolled printer (a new Pi, a new SD card): the old Pi's token stops
        token.revoked_at = now
        session.add(token)
    secret = new_secret()
    session.add(Token(name=name, role="agent", printer=enrol.printer, secret_sha256=hash_secret(secret)))
    session.commit()
    for token in old:
        remember_revoked(farm, token)
    return {**described, "token_name": name, "token": secret}
