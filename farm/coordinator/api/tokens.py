"""Tokens for people and machines: each with a role, an agent's bound to one printer.

| role      | may                                                                              |
|-----------|----------------------------------------------------------------------------------|
| admin     | everything, including tokens and printer settings                                |
| submitter | submit; read status, builds, jobs, printers; cancel and retry its own jobs;       |
|           | clear beds; read its own builds' artifacts                                       |
| viewer    | read status, builds, jobs, printers, explanations and what builds made; no change |
| worker    | run CAD and slicing: read builds and slices, any artifact, upload results         |
| agent     | act for its one printer: register, heartbeat, claim, report, fetch its G-code    |
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
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
from farm.coordinator.api.paging import MAX_LIMIT, Cursor, Limit, after_id, page, paged
from farm.coordinator.models import Token, stored_id
from farm.core.wire import MadeToken, NewToken, RevokedTokens, TokenView

router = APIRouter(prefix="/api/tokens", tags=["tokens"], dependencies=[Depends(require())], responses=AUTH)

TokenName = Annotated[str, Path(min_length=1, max_length=100)]


def _ts(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def _view(token: Token) -> dict:
    return {
        "name": token.name,
        "role": token.role,
        "printer": token.printer,
        "created_at": _ts(token.created_at),
        "expires_at": _ts(token.expires_at),
        "revoked_at": _ts(token.revoked_at),
    }


def _live(session: Session, name: str) -> list[Token]:
    return list(session.exec(select(Token).where(Token.name == name, col(Token.revoked_at).is_(None))).all())


@router.post(
    "",
    status_code=201,
    response_model=MadeToken,
    response_model_exclude_unset=True,
    responses=errors(409, 422),
)
def create_token(body: NewToken, session: SessionDep) -> dict:
    if body.role == "agent" and not body.printer:
        raise HTTPException(422, "an agent token is bound to one printer: give --printer NAME")
    if body.role != "agent" and body.printer:
        raise HTTPException(422, "only agent tokens are bound to a printer; drop --printer")
    expires = as_utc(body.expires_at) if body.expires_at else None
    if expires is not None and expires <= datetime.now(UTC):
        raise HTTPException(422, f"expires_at {expires.isoformat()} has passed; give a time to come")
    # A revoked token's name may be given again: the new token owns the old one's builds and jobs.
    if _live(session, body.name):
        raise HTTPException(409, f"a token named '{body.name}' exists; pick another name or revoke it")
    secret = new_secret()
    token = Token(
        name=body.name,
        role=body.role,
        printer=body.printer,
        secret_sha256=hash_secret(secret),
        expires_at=expires,
    )
    session.add(token)
    session.commit()
    return {**_view(token), "token": secret}  # the only time the secret is shown


@router.get(
    "",
    response_model=list[TokenView],
    response_model_exclude_unset=True,
    responses=paged("tokens, oldest first"),
)
def list_tokens(
    session: SessionDep, request: Request, response: Response, limit: Limit = MAX_LIMIT, cursor: Cursor = None
) -> list[dict]:
    query = select(Token).order_by(col(Token.id)).limit(limit + 1)
    if (after := after_id(cursor)) is not None:
        query = query.where(col(Token.id) > after)
    return [_view(t) for t in page(session.exec(query).all(), limit, stored_id, request, response)]


@router.delete(
    "/{name}", response_model=RevokedTokens, response_model_exclude_unset=True, responses=errors(404)
)
def revoke_token(name: TokenName, session: SessionDep, farm: FarmDep) -> dict:
    """Revoke the token(s) of this name for good. This coordinator process refuses them at once;
    other processes of it (`farm server --workers N`) within deps.TOKEN_RELOAD_S seconds.
    The row stays, so builds keep naming their owner. Revoking the admin token in the data dir:
    delete <data dir>/admin.token and restart the coordinator to get a new one."""
    tokens = _live(session, name)
    if not tokens:
        raise HTTPException(404, f"no token named '{name}' (or it is already revoked); `farm tokens list`")
    now = datetime.now(UTC)
    for token in tokens:
        token.revoked_at = now
        session.add(token)
    session.commit()
    for token in tokens:
        remember_revoked(farm, token)
    return {"revoked": name, "tokens": [_view(t) for t in tokens]}
