"""Printers kept busy: a claim waits at the coordinator for work and is answered the moment a job
is ready for it, and a small farm (bench/farm.py: a dozen emulated printers of four protocols with
their agents, a hundred short pre-sliced prints) starts each next print within a second or two.
A fixed poll interval (the agents before long polls: one round every 2 s, and a claim a round
after a print's end) gave gaps of 3-7 s and a busy fraction near 0.65 here: these fail then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, RunningFarm

# Thresholds with room for a loaded 2-core CI machine. Measured with 3-6 s prints: busy 0.86, gaps
# p50 0.5 s and p99 2.6 s (a Bambu printer says its remaining time in whole minutes, so its agent
# sees the end within poll_s); with the fixed 2 s poll: p50 3.3 s, p99 5.7 s.
MIN_BUSY_FRACTION = 0.7
MAX_START_GAP_P50_S = 1.5
MAX_START_GAP_P99_S = 4.0


def test_a_dozen_printers_stay_busy_through_a_hundred_short_jobs(redis_url: str) -> None:
    env = {**os.environ, "FARM_REDIS_URL": f"{redis_url.rsplit('/', 1)[0]}/11"}
    args = ["--printers", "12", "--jobs", "100", "--min-s", "2", "--max-s", "4", "--speed", "600"]
    args += ["--meshes", "0", "--designs", "0", "--operator-delay", "1", "--timeout", "90"]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "farm.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["settled"] and result["done"] == 100, result
    assert result["gaps"] >= 80, result  # every print but each printer's first follows a gap
    assert result["busy_fraction"] >= MIN_BUSY_FRACTION, result
    assert result["start_gap_p50_s"] <= MAX_START_GAP_P50_S, result
    assert result["start_gap_p99_s"] <= MAX_START_GAP_P99_S, result
    assert result["makespan_ratio"] < 1.8, result


@pytest.fixture
def api(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


def test_a_waiting_claim_is_answered_when_the_bed_is_cleared(api: httpx.Client, tmp_path: Path) -> None:
    # An MK4S: the session farm's printers are a MINI and an MK3S, so this job is for it alone.
    name = "longpoll-mk4s"
    reg = api.post(
        "/api/agents/register",
        json={"printer": name, "model": "MK4S", "protocol": "prusalink", "state": "finished"},
    )
    assert reg.status_code == 200, reg.text
    beat = {"printer": name, "state": "finished"}
    for bad in ("abc", "31", "-1"):  # the route explains what the fast lane does not read
        assert api.post("/api/agents/claim", params={"wait": bad}, json=beat).status_code == 422
    t0 = time.monotonic()
    assert api.post("/api/agents/claim", params={"wait": 1}, json=beat).status_code == 204
    assert 0.9 <= time.monotonic() - t0 < 5  # nothing to print: it waited, then said so

    gcode = tmp_path / "part.gcode"
    gcode.write_text(
        'M862.3 P "MK4S"\nG28\n; estimated printing time (normal mode) = 1m 0s\n; printer_model = MK4S\n'
    )
    with gcode.open("rb") as f:
        build = api.post("/api/builds", files={"file": (gcode.name, f)}, data={"options": "{}"}).json()
    job_id = build["jobs"][0]["id"]
    answer: dict[str, object] = {}

    def claim() -> None:
        resp = api.post("/api/agents/claim", params={"wait": 25}, json=beat)
        answer.update(
            status=resp.status_code, at=time.monotonic(), body=resp.json() if resp.content else None
        )

    waiting = threading.Thread(target=claim)
    waiting.start()
    try:
        deadline = time.monotonic() + 60
        while api.get(f"/api/jobs/{job_id}").json()["state"] != "ready":
            assert time.monotonic() < deadline, "the pre-sliced job never became ready"
            time.sleep(0.2)
        time.sleep(1.0)
        assert waiting.is_alive(), answer  # a part is on the bed: no job yet
        cleared = time.monotonic()
        assert api.post(f"/api/printers/{name}/clear").status_code == 200
        waiting.join(10)
        assert answer["status"] == 200 and answer["body"]["id"] == job_id, answer  # type: ignore[index]
        assert float(answer["at"]) - cleared < 1.0, answer  # type: ignore[arg-type]
    finally:
        waiting.join(30)
        api.post(f"/api/jobs/{job_id}/cancel")
        api.delete(f"/api/printers/{name}")
