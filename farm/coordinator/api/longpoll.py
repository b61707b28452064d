"""Agents that wait for work: a claim with `?wait=S` is answered as soon as a job for that printer
may be ready, instead of the agent asking again every poll interval.

An idle agent's claim that finds nothing parks here (a future on the event loop: a thousand of
them cost a few hundred kB and no CPU) until something that can make work for it happens in
this process: a slice is done (its model's printers are woken), a bed is cleared or a printer's
settings change (that printer), a job's priority changes, a job is retried or submitted, a claim's
lease runs out (everyone). A woken claim waits GATHER_S for the rest of a burst, then claims
again. Changes this process never sees (another `farm server --workers N` process, a failed
print's back-off running out) are caught by claiming again every RECHECK_S, and at the latest
when the agent's wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib

MAX_WAIT_S = 30.0  # what a claim may ask; a printer is offline after lease_s (60 s) of silence
RECHECK_S = 10.0  # a parked claim looks again this often whatever happened
GATHER_S = 0.05  # a woken claim waits this long for the rest of a burst (a build's many slices)


class WorkSignal:
    """Parked claims, by printer and model. `wake` may be called from any thread."""

    def __init__(self) -> None:
        self._waiters: dict[asyncio.Future[None], tuple[str, str | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.models: dict[str, str] = {}  # printer -> model, as agents registered with this process
        self.closed = False  # the server is stopping: no claim waits any more

    @property
    def parked(self) -> int:
        return len(self._waiters)

    async def wait(self, printer: str, timeout: float) -> bool:
        """Until woken (True) or `timeout` (False); at once (False) once the server is stopping."""
        if self.closed:
            return False
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        self._waiters[future] = (printer, self.models.get(printer))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(future, None)

    def wake(self, *, printer: str | None = None, model: str | None = None) -> None:
        """Wake the claims of `printer`, or of printers of `model` (and any whose model this process
        does not know), or, with neither, every parked claim."""
        loop = self._loop
        if loop is None or not self._waiters:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(self._wake, printer, model)

    def close(self) -> None:
        """The server is stopping (uvicorn waits for open responses): every parked claim answers now."""
        self.closed = True
        self._wake(None, None)

    def _wake(self, printer: str | None, model: str | None) -> None:
        for future, (name, known) in list(self._waiters.items()):
            if future.done():
                continue
            if printer is not None and name != printer:
                continue
            if model is not None and known is not None and known != model:
                continue
            future.set_result(None)
