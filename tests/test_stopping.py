"""Ctrl-C and SIGTERM stop the long-running commands, whenever they land (farm/core/stopping.py).
Real processes and real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tests.conftest import REPO

# The moment that deadlocked `farm agent` in CI: the signal lands while the main thread holds the
# stop Event's own lock, as it does inside `stop.wait()`. A handler that calls `stop.set()` then
# waits for that lock forever; the process never stops.
SIGNAL_INSIDE_WAIT = """
import os, signal, time
from farm.core.stopping import stop_on_signals

stop = stop_on_signals()
with stop._cond:  # the lock stop.wait() holds while it checks and re-checks the flag
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the handler runs here, in this thread, with the lock held
print("stopped" if stop.wait(10) else "not stopped", flush=True)
"""

SLOW_TO_STOP = """
import time
from farm.core.stopping import stop_on_signals

stop = stop_on_signals()
print("ready", flush=True)
stop.wait()
print("stopping", flush=True)
time.sleep(60)  # a stop that waits on something slow
print("stopped by itself", flush=True)
"""


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_signal_inside_the_wait_stops_the_process() -> None:
    proc = _python(SIGNAL_INSIDE_WAIT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.strip() == "stopped", err
    assert proc.returncode == 0, err


def test_the_first_signal_asks_to_stop_and_the_second_stops_at_once() -> None:
    proc = _python(SLOW_TO_STOP)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "stopping"
        assert proc.poll() is None  # the first one leaves the stop to the program
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "stopped by itself" not in out
    assert "SIGINT again: stopping now" in err
