"""A worker whose coordinator is away (restarting, upgraded) puts its message back for a few
seconds, in one warning line (issue #14). With Dramatiq's own back-off (15 s, doubling) slices
caught by two coordinator restarts in bench/chaos.py waited minutes after it was back, and every
failed message logged an ERROR with a traceback."""

from __future__ import annotations

import logging
import re

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from farm.core.client import FarmClient
from farm.core.queue import CAD_ACTOR, CAD_QUEUE, SLICE_ACTOR, SLICE_QUEUE
from farm.core.settings import Settings
from tests.conftest import free_port, wait_until
from workers import actors
from workers.actors import WorkerContext, register


def _delays(caplog: pytest.LogCaptureFixture) -> list[int]:
    found = (re.match(r"Retrying message .* in (\d+) milliseconds", r.getMessage()) for r in caplog.records)
    return [int(m[1]) for m in found if m]


def test_a_coordinator_away_brings_the_message_back_in_seconds_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    client = FarmClient(f"http://127.0.0.1:{free_port()}", "pf_x", timeout=2)  # nothing listens
    register(
        broker, WorkerContext(settings=Settings.model_construct(), client=client), {CAD_QUEUE, SLICE_QUEUE}
    )
    caplog.set_level(logging.DEBUG)
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        broker.get_actor(SLICE_ACTOR).send(7)
        broker.get_actor(CAD_ACTOR).send(8)
        delays = wait_until(lambda: (d := _delays(caplog)) and len(d) >= 4 and d, 30, "two retries each")
    finally:
        worker.stop()
        client.close()
    assert all(1_000 <= d <= 5_000 for d in delays), delays  # not 15 s and doubling
    loud = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, loud
    said = [r.getMessage() for r in caplog.records if r.name == "farm.worker"]
    assert any("cannot reach the coordinator" in s and "trying again shortly" in s for s in said), said


def test_other_failures_keep_dramatiqs_back_off_and_ten_retries() -> None:
    away = actors.dramatiq.Retry("coordinator away")
    assert actors._retry_when(actors.AWAY_RETRIES - 1, away)
    assert not actors._retry_when(actors.AWAY_RETRIES, away)
    assert actors._retry_when(9, RuntimeError("a bug")) and not actors._retry_when(10, RuntimeError("a bug"))
