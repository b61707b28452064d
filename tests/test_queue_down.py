"""A submit while Redis is down is accepted (the build is committed) and reaches the queue once it is back.

It used to be a 500 after the build was stored: a client that retried made a second build.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlmodel import Session, select
from starlette.testclient import TestClient

import farm.core.queue
from farm.coordinator import pipeline
from farm.coordinator.api import create_app
from farm.coordinator.api.builds import dispatch_outgoing
from farm.coordinator.models import Build, Slice
from farm.core.settings import Settings
from tests.conftest import free_port, wait_until

CUBE = b"""solid cube
facet normal 0 0 -1
outer loop
vertex 0 0 0
vertex 10 10 0
vertex 10 0 0
endloop
endfacet
endsolid cube
"""


@pytest.fixture
def dead_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A Redis URL with nothing listening yet; the process-wide broker is reset around the test."""
    monkeypatch.setattr(farm.core.queue, "_broker", None)
    yield free_port()


def test_submit_with_the_queue_down_is_accepted_and_sent_when_it_returns(
    dead_queue: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = dead_queue
    app = create_app(Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{port}/0"))
    token = (tmp_path / "admin.token").read_text().strip()
    with (
        caplog.at_level(logging.WARNING, logger="farm.coordinator.api"),
        TestClient(app, headers={"Authorization": f"Bearer {token}"}) as api,
    ):
        answer = api.post(
            "/api/builds",
            files={"file": ("cube.stl", CUBE)},
            data={"options": json.dumps({"printer_model": "MINI"})},
        )
        assert answer.status_code == 201, answer.text
        build_id = answer.json()["id"]
        assert "did not take 1 message(s)" in caplog.text

        binary = shutil.which("redis-server") or "redis-server"
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        try:
            queue = redis.Redis(port=port)
            wait_until(lambda: _pings(queue), 10, "redis-server")
            assert queue.hlen("dramatiq:slice.msgs") == 0
            # The housekeeping sweep, with the resend window already past:
            farm_ = app.state.farm
            with Session(farm_.engine) as session:
                out = pipeline.expire_work_leases(session, attempts=3, resend_s=0)
                session.commit()
                # A mesh skips CAD: its one slice was never sent.
                assert session.exec(select(Build).where(Build.id == build_id)).one().stage == "slicing"
                slice_ids = [s.id for s in session.exec(select(Slice).where(Slice.build_id == build_id))]
            dispatch_outgoing(farm_, out)
            messages = [json.loads(m) for m in queue.hvals("dramatiq:slice.msgs")]
            assert [(m["actor_name"], m["args"]) for m in messages] == [("slice_build", slice_ids)]
        finally:
            server.terminate()
            server.wait(10)
    farm_.engine.dispose()


def _pings(queue: redis.Redis) -> bool:
    try:
        return bool(queue.ping())
    except redis.ConnectionError:
        return False
