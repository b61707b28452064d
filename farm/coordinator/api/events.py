"""The farm's live event stream (GET /api/events, server-sent events): the dashboard's snapshot
(dashboard.snapshot) again whenever it changes. The dashboard and `farm watch` both read it.

A change is noticed where it is made: every request that changes something (an agent's
heartbeat or report, a claim, a cancel, a worker's result) ends by poking the `Broadcaster`
(`PokeOnChange`), which then draws one snapshot for every open stream, after a short pause that
gathers a burst of reports into one, and sends it only if it differs from the last one sent. With
no stream open, nothing is drawn and a poke costs one attribute read. Changes that no request of
this process makes (another `farm server --workers N` process, lease expiry in the
housekeeper) are caught by drawing again every RECHECK_S while streams are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.coordinator.api.dashboard import snapshot
from farm.coordinator.api.deps import require
from farm.core.settings import Settings

log = logging.getLogger("farm.events")
GATHER_S = 0.25  # a poke waits this long for others before drawing: a burst of reports, one snapshot
RECHECK_S = 5.0  # while streams are open, draw at least this often (changes made elsewhere)
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_END = ""  # put in a stream's queue: the stream ends

router = APIRouter(tags=["dashboard"])


class Broadcaster:
    def __init__(self, draw: Callable[[], str]) -> None:
        self._draw = draw
        self._streams: set[asyncio.Queue[str]] = set()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last = ""  # the last snapshot sent, as JSON
        self.closed = False

    @property
    def listening(self) -> bool:
        return bool(self._streams)

    def close(self) -> None:
        """Ends every stream (the server is stopping: it waits for open responses to finish)."""
        self.closed = True
        for queue in list(self._streams):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(_END)

    def poke(self) -> None:
        if self._streams:
            self._poked.set()

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that gets each new snapshot (only the newest waits if the reader is slow)."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        if not self._streams:
            self.last = ""  # nobody has seen the farm since the last stream closed
        self._streams.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            if self.closed:
                queue.put_nowait(_END)
            elif self.last:
                queue.put_nowait(self.last)
            else:
                self._poked.set()
            yield queue
        finally:
            self._streams.discard(queue)

    async def _run(self) -> None:
        while self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), RECHECK_S)
            await asyncio.sleep(GATHER_S)
            self._poked.clear()
            if not self._streams:
                break
            try:  # in a thread, JSON included: a big farm's snapshot is ~150 KB
                data = await asyncio.to_thread(self._draw)
            except Exception:  # the database is busy or away: the next round tries again
                log.exception("could not draw the farm for its event stream")
                continue
            if data == self.last:
                continue
            self.last = data
            if self.closed:
                break
            for queue in list(self._streams):
                if queue.full():
                    queue.get_nowait()  # a slow reader skips to the newest
                queue.put_nowait(data)


def end_streams_on_exit(broadcaster: Broadcaster, *also: Callable[[], None]) -> None:
    """Ctrl-C or SIGTERM ends the open streams (and calls `also`: the agents' waiting claims
    end too), then does what it did: uvicorn waits for every open response before it stops, and a
    stream never ends by itself. Only where uvicorn put its
    handlers (the main thread); a test client's app has none."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            loop.call_soon_threadsafe(broadcaster.close)
            for close in also:
                loop.call_soon_threadsafe(close)
            previous(signum, frame)

        signal.signal(sig, handler)


def broadcaster_for(engine: Engine, settings: Settings) -> Broadcaster:
    def draw() -> str:
        with Session(engine) as session:
            snap = snapshot(session, settings)
        for printer in snap["printers"]:  # every heartbeat moves it: not a change worth sending
            printer.pop("last_seen", None)
        return json.dumps(snap, separators=(",", ":"), default=str)

    return Broadcaster(draw)


class PokeOnChange:
    """Pokes the broadcaster after each request that changed something (a 2xx to a POST, PUT,
    PATCH or DELETE). Outermost, so it sees the agents' fast lane too (fastlane.py)."""

    def __init__(self, app: ASGIApp, broadcaster: Broadcaster) -> None:
        self.app = app
        self.broadcaster = broadcaster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _CHANGES or not self.broadcaster.listening:
            await self.app(scope, receive, send)
            return

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                self.broadcaster.poke()
            await send(message)

        await self.app(scope, receive, watching)


@router.get("/api/events", include_in_schema=False, dependencies=[Depends(require("submitter", "viewer"))])
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `event: farm` with the dashboard's snapshot, at once and on each change."""
    broadcaster: Broadcaster = request.app.state.events

    async def lines() -> AsyncIterator[str]:
        async with broadcaster.stream() as queue:
            yield "retry: 2000\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": still here\n\n"
                    continue
                if data == _END:
                    return
                yield f"event: farm\ndata: {data}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)
