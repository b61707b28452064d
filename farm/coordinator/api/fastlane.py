"""The agents' heartbeats, claims and reports, served without FastAPI's per-request machinery.

Every agent calls every few seconds: with a thousand printers that is most of what the
coordinator does, and routing, dependency solving and response building cost three times the
database work of a heartbeat (measured with py-spy under bench/coordinator.py). This ASGI wrapper
answers the ordinary call (a valid token, a valid body, the token's own printer) itself, with the same
validation models and the same functions as the routes in agents.py, so the answers and their
errors are the routes'. Anything else (no such token, a revoked or expired one, a body that does
not validate, a wrong role or printer) goes on to the route, which says what is wrong: one set of
error messages, kept in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.coordinator.api.agents import SNAPSHOT_WANTED, Heartbeat, Report, beat, claim_next, report_on
from farm.coordinator.api.deps import MAX_ID, Farm, find_token, token_problem
from farm.coordinator.api.errors import NUL_IN_TEXT, nul_in_text
from farm.coordinator.api.longpoll import MAX_WAIT_S
from farm.coordinator.models import Token

MAX_BODY = 64 * 1024  # these calls are a few hundred bytes
_JSON = [(b"content-type", b"application/json")]
_REPORT = re.compile(r"/api/agents/jobs/([1-9][0-9]{0,9})/report")

Headers = list[tuple[bytes, bytes]]
Body = Heartbeat | Report
Serve = Callable[[Farm, Any, Token, int], Awaitable[tuple[dict[str, Any] | None, Headers]]]
_WANTED = [(SNAPSHOT_WANTED.lower().encode(), b"wanted")]


async def _serve_beat(
    farm: Farm, body: Heartbeat, _token: Token, _job: int
) -> tuple[dict[str, Any], Headers]:
    return await beat(farm, body), []


async def _serve_claim(
    farm: Farm, body: Heartbeat, token: Token, wait: int
) -> tuple[dict[str, Any] | None, Headers]:
    found, wanted = await claim_next(farm, body, token, wait / 1000)
    return found, _WANTED if wanted else []


async def _serve_report(
    farm: Farm, body: Report, token: Token, job_id: int
) -> tuple[dict[str, Any], Headers]:
    return await report_on(farm, job_id, body, token), []


_EXACT: dict[str, tuple[type[Body], Serve]] = {
    "/api/agents/heartbeat": (Heartbeat, _serve_beat),
    "/api/agents/claim": (Heartbeat, _serve_claim),
}


_WAIT = re.compile(rb"wait=([0-9]{1,2}(?:\.[0-9]{1,3})?)")


def _route(path: str, query: bytes = b"") -> tuple[type[Body], Serve, int] | None:
    """What serves this path here (its body's model, the call, a job id or a claim's wait in ms),
    or None. A query it does not read exactly as the route would goes to the route."""
    if (exact := _EXACT.get(path)) is not None:
        if not query:
            return (*exact, 0)
        wait = _WAIT.fullmatch(query) if exact[1] is _serve_claim else None
        if wait is None or float(wait[1]) > MAX_WAIT_S:
            return None
        return (*exact, round(float(wait[1]) * 1000))
    if (report := _REPORT.fullmatch(path)) is not None and int(report[1]) <= MAX_ID:
        return Report, _serve_report, int(report[1])
    return None


class AgentFastLane:
    def __init__(self, app: ASGIApp, farm: Farm) -> None:
        self.app = app
        self.farm = farm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http_post = scope["type"] == "http" and scope["method"] == "POST"
        lane = _route(scope["path"], scope.get("query_string", b"")) if http_post else None
        if lane is None:
            await self.app(scope, receive, send)
            return
        token = await find_token(self.farm, _bearer(scope))
        refused = token is None or token_problem(token) is not None or token.role not in ("admin", "agent")
        if refused or token is None or not _sends_json(scope):
            await self.app(scope, receive, send)  # the route explains a missing, wrong or revoked token
            return
        body, complete = await _read_body(receive)
        answer = await self._answer(lane, token, body) if complete else None
        if answer is None:  # not the ordinary case: the route says what is wrong
            await self.app(scope, _replay(body, complete, receive), send)
            return
        status, payload, extra = answer
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = [] if payload is None else [*_JSON, (b"content-length", str(len(data)).encode())]
        headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _answer(
        self, lane: tuple[type[Body], Serve, int], token: Token, body: bytes
    ) -> tuple[int, dict[str, Any] | None, Headers] | None:
        model, serve, job_id = lane
        try:
            call = model.model_validate_json(body)
        except ValidationError:
            return None
        if token.role == "agent" and token.printer != call.printer:
            return None
        try:
            answer, extra = await serve(self.farm, call, token, job_id)
        except HTTPException as exc:  # e.g. the printer is not registered, a stale lease
            return exc.status_code, {"detail": exc.detail}, []
        except DataError as exc:
            if nul_in_text(exc):
                return 422, {"detail": NUL_IN_TEXT}, []
            raise
        return (204, None, extra) if answer is None else (200, answer, extra)


def _sends_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return False


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            return secret.strip() if scheme.lower() == "bearer" else ""
    return ""


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, or its first MAX_BODY bytes and False when it is longer."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """What was read, then the connection's own events (the rest of the body, a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": not complete}

    return replay
