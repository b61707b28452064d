"""The dashboard's sign-in routes: a one-time link for a person's token, and the cookie it sets
(farm/coordinator/api/websession.py says how both work)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from farm.coordinator.api.deps import FarmDep, find_token_by_digest, require, token_problem
from farm.coordinator.api.errors import AUTH
from farm.coordinator.api.websession import (
    COOKIE,
    SESSION_S,
    SIGNIN_TTL_S,
    new_ticket,
    session_cookie,
    take_ticket,
)
from farm.coordinator.models import Token
from farm.core.wire import SigninLink

SIGNIN_ROLES = ("admin", "submitter", "viewer")  # people; workers and agents have no pages
router = APIRouter(tags=["dashboard"], responses=AUTH)


@router.post(
    "/api/signin-links", status_code=201, response_model=SigninLink, response_model_exclude_unset=True
)
def create_link(farm: FarmDep, token: Annotated[Token, Depends(require(*SIGNIN_ROLES[1:]))]) -> dict:
    """A one-time link (a path on this coordinator) that signs a browser in as this token, valid for
    a few minutes. `farm open` asks for it and opens it."""
    ticket, expires = new_ticket(farm.settings, token)
    return {"path": f"/signin/{ticket}", "expires_in_s": SIGNIN_TTL_S, "expires_at": expires}


_USED = """<!doctype html><meta charset="utf-8"><title>printfarm: sign-in link not valid</title>
<meta name="viewport" content="width=device-width">
<p>This sign-in link was used already or has expired (they last {minutes} minutes and work once).
<p>Run <code>farm open</code> again for a new one."""


@router.get("/signin/{ticket}", include_in_schema=False)
async def sign_in(ticket: str, request: Request, farm: FarmDep) -> Response:
    digest = take_ticket(farm.settings, ticket)
    token = await find_token_by_digest(farm, digest) if digest else None
    if token is None or token_problem(token) is not None:
        html = _USED.format(minutes=int(SIGNIN_TTL_S // 60))
        return HTMLResponse(html, status_code=410, headers={"Cache-Control": "no-store"})
    answer = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
    answer.set_cookie(
        COOKIE,
        session_cookie(farm.settings, token.secret_sha256),
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return answer


@router.post("/api/signout", status_code=204, include_in_schema=False)
def sign_out() -> Response:
    answer = Response(status_code=204)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return answer


@router.get("/api/me")
def me(token: Annotated[Token, Depends(require("submitter", "viewer", "worker", "agent"))]) -> dict:
    """Who this token (or the browser's session) is: its name and role."""
    return {"name": token.name, "role": token.role}
