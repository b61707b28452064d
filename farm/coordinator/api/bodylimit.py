"""A request body over the upload limit is refused before it is read.

FastAPI parses a multipart upload (spooling it to a temp file) before the route runs, so the
route's own size check came after the whole body was on disk: a 1.9 GB upload was read in full
for a 413. This pure ASGI wrapper answers a declared `Content-Length` over the limit at once, and
cuts a chunked body off at the limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FORM_OVERHEAD = 1 << 20  # multipart framing and the submit options around an upload of the limit's size


class BodyTooLarge(Exception):
    """Raised into the app by `receive` when a chunked body passes the limit."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_upload_mb: int) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.max_bytes = (max_upload_mb << 20) + FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if declared is not None:
            if declared > self.max_bytes:
                await _answer(send, 413, self._too_large(f"this one declares {declared >> 20} MB"))
                return
            # The server reads no more than Content-Length: nothing to count.
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length (chunked): counted as it comes, cut off past the limit."""
        read = 0
        over = False
        started = False

        async def counting() -> Message:
            nonlocal read, over
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if over:  # the app's answer to a cut-off body (e.g. FastAPI's 400 "error parsing the body")
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except Exception:  # BodyTooLarge, or whatever the app made of a body cut off
            if not over:
                raise
        if over and not started:
            await _answer(send, 413, self._too_large("this one passed it without a Content-Length"))

    def _too_large(self, what: str) -> str:
        return (
            f"the request body is larger than the {self.max_upload_mb} MB upload limit "
            f"(max_upload_mb, FARM_MAX_UPLOAD_MB); {what}"
        )


def _content_length(scope: Scope) -> int | None:
    """The declared length, None when there is none, -1 when it is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body stays unread: this connection cannot go on
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
