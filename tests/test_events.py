"""The live event stream (GET /api/events): a real `farm server`, a reader on a real socket, and
heartbeats sent as an agent would. Each change reaches the stream well within a second; a
heartbeat that changes nothing sends nothing; a session cookie reads it as a token does; agents
and strangers cannot. `farm watch` draws from it."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from farm.commands.watch import events as watch_events, from_event
from farm.core.client import FarmClient
from tests.conftest import farm_server

PRINTER = {"printer": "ev-mini", "model": "MINI", "protocol": "prusalink"}


class Stream:
    """Reads the event stream in a thread; each `farm` event lands in `got` with when it came."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.got: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.status: int | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as resp:
                self.status = resp.status_code
                kind = ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind == "farm":
                        self.got.put((time.monotonic(), json.loads(line[5:])))
        except httpx.HTTPError:
            pass

    def next(self, timeout: float = 5.0) -> tuple[float, dict]:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self._client.close()


def _env(data: Path, redis_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(data),
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/12",  # a database no worker reads
    }
    env.pop("FARM_TOKEN", None)
    return env


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str]]:
    with farm_server(_env(tmp_path, redis_url), tmp_path / "server.log") as (_, base):
        yield base, (tmp_path / "admin.token").read_text().strip()


def _printer(snap: dict) -> dict:
    return next(p for p in snap["printers"] if p["name"] == PRINTER["printer"])


def test_each_report_reaches_an_open_stream_within_a_second_and_a_repeat_sends_nothing(
    server: tuple[str, str],
) -> None:
    base, admin = server
    auth = {"Authorization": f"Bearer {admin}"}
    agent = httpx.Client(base_url=base, headers=auth)
    assert agent.post("/api/agents/register", json=PRINTER).status_code == 200
    stream = Stream(f"{base}/api/events", auth)
    try:
        _, first = stream.next()  # at once, on connecting
        assert stream.status == 200 and _printer(first)["state"] in ("offline", "idle")
        latencies = []
        for step in range(1, 11):
            beat = {"printer": PRINTER["printer"], "state": "printing", "progress": step * 7.5}
            sent = time.monotonic()
            assert agent.post("/api/agents/heartbeat", json=beat).status_code == 200
            came, snap = stream.next(timeout=3)
            assert _printer(snap)["progress"] == step * 7.5 and _printer(snap)["state"] == "printing"
            latencies.append(came - sent)
        assert max(latencies) < 1.0, latencies
        # The same report again moves nothing the page shows: no event.
        assert agent.post("/api/agents/heartbeat", json=beat).status_code == 200
        with pytest.raises(queue.Empty):
            stream.next(timeout=1.0)
        # farm watch draws from the same stream.
        with FarmClient(base, admin) as client:
            screen = from_event(next(watch_events(client)))
            assert [p.name for p in screen.printers] == [PRINTER["printer"]]
            assert screen.printers[0].progress == 75.0
    finally:
        stream.close()
        agent.close()


def test_a_dashboard_session_reads_the_stream_and_machines_and_strangers_cannot(
    server: tuple[str, str],
) -> None:
    base, admin = server
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=base) as client:
        agent = client.post("/api/tokens", json={"name": "a1", "role": "agent", "printer": "x"}, headers=auth)
        link = client.post("/api/signin-links", headers=auth).json()["path"]
        cookie = client.get(link).cookies["farm_session"]
    refused = {
        "no token": {},
        "an agent": {"Authorization": f"Bearer {agent.json()['token']}"},
        "a forged session": {"Cookie": "farm_session=abc.123.def"},
    }
    for who, headers in refused.items():
        with httpx.Client() as client:
            status = client.get(f"{base}/api/events", headers=headers).status_code
            assert status in (401, 403), who
    stream = Stream(f"{base}/api/events", {"Cookie": f"farm_session={cookie}"})
    try:
        _, snap = stream.next()
        assert stream.status == 200 and "printers" in snap and "queue" in snap
    finally:
        stream.close()


def test_ctrl_c_stops_a_server_with_streams_open(tmp_path: Path, redis_url: str) -> None:
    """uvicorn waits for open responses before it stops; a stream would hold it for ever."""
    with farm_server(_env(tmp_path, redis_url), tmp_path / "server.log") as (proc, base):
        auth = {"Authorization": f"Bearer {(tmp_path / 'admin.token').read_text().strip()}"}
        streams = [Stream(f"{base}/api/events", auth) for _ in range(3)]
        try:
            for stream in streams:
                stream.next()
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            assert time.monotonic() - began < 5
        finally:
            for stream in streams:
                stream.close()
