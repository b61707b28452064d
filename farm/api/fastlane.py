"""The agents' heartbeat, served without FastAPI's per-request machinery.

Every agent sends a heartbeat every few seconds: with a thousand printers that is most of what
the coordinator does, and routing, dependency solving and response building cost three times
the database work (measured with py-spy under bench/coordinator.py). This ASGI wrapper answers
the ordinary heartbeat (known token, valid body, registered printer) itself, with the same
validation model, checks and reply as the route in agents.py. Anything else (a token not seen
before, a body that does not validate, a wrong role) goes on to that route, which gives the
usual error: one set of error messages, kept in one place.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.api.agents import Heartbeat, beat
from farm.api.deps import Farm, hash_secret
from farm.models import Token

PATH = "/api/agents/heartbeat"
MAX_BODY = 64 * 1024  # a heartbeat is a few hundred bytes
_JSON = [(b"content-type", b"application/json")]


class HeartbeatFastLane:
    def __init__(self, app: ASGIApp, farm: Farm) -> None:
        self.app = app
        self.farm = farm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        token = self.farm._tokens.get(hash_secret(_bearer(scope)))
        if token is None or token.role not in ("admin", "agent"):
            await self.app(scope, receive, send)  # the route explains a missing or wrong token
            return
        body, complete = await _read_body(receive)
        answer = await self._answer(token, body) if complete else None
        if answer is None:  # not the ordinary case: the route says what is wrong
            await self.app(scope, _replay(body, complete, receive), send)
            return
        status, payload = answer
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = [*_JSON, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, token: Token, body: bytes) -> tuple[int, dict[str, Any]] | None:
        try:
            heartbeat = Heartbeat.model_validate_json(body)
        except ValidationError:
            return None
        if token.role == "agent" and token.printer != heartbeat.printer:
            return None
        try:
            return 200, await beat(self.farm, heartbeat)
        except HTTPException as exc:  # the printer is not registered
            return exc.status_code, {"detail": exc.detail}


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
