"""Ctrl-C and SIGTERM as a `threading.Event`, for the long-running commands (agent, worker,
emulator, `farm up`).

The signal handler must not call `Event.set()`: that takes the Event's lock, and the main thread,
where Python runs every handler, may hold that very lock inside `stop.wait()` when the signal
lands. The handler then waits for itself forever (a `farm agent` that never stopped on SIGTERM, seen
in CI). Here the handler only writes the signal's number to a pipe, which takes no lock, and a
thread reads it and sets the Event.

A second signal stops the process at once (exit 128 + its number), for a stop that waits on
something slow; what it abandons is what a crash abandons, which the farm recovers from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> threading.Event:
    """An Event set by the first of `signals`; the second exits the process. Call it from the main
    thread (the only one that may install signal handlers)."""
    stop = threading.Event()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # a full pipe already holds a stop and an exit
            os.write(write_end, bytes([signum]))

    def relay() -> None:
        first = os.read(read_end, 1)
        stop.set()
        log.info("stopping on %s (send it again to stop at once)", signal.Signals(first[0]).name)
        second = os.read(read_end, 1)[0]
        # Straight to stderr: a logging handler's lock may be held by the thread being abandoned.
        with contextlib.suppress(OSError):
            os.write(2, f"{signal.Signals(second).name} again: stopping now\n".encode())
        os._exit(128 + second)

    threading.Thread(target=relay, name="stop-on-signal", daemon=True).start()
    for sig in signals:
        signal.signal(sig, on_signal)
    return stop
