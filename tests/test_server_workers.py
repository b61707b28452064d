"""`farm server --workers N`: N processes answer on one port; exactly one of them keeps house."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from farm.coordinator.db import make_engine
from tests.conftest import farm_server, wait_until
from tests.coordinator_fixtures import ready_build


def children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def two_server_processes(env: dict[str, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    """`farm server --workers 2` on a free port until it answers; stopped with Ctrl-C at the end."""
    return farm_server(env, tmp_path / "server.log", "--workers", "2")


def admin_with_printers(tmp_path: Path, base: str, *names: str) -> httpx.Client:
    """The admin's client of the coordinator at `base` (its token in `tmp_path`), with self-ejecting
    MINIs called `names` registered as their agents register them."""
    token = (tmp_path / "admin.token").read_text().strip()
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    for name in names:
        reg = {"printer": name, "model": "MINI", "protocol": "prusalink", "auto_eject": True}
        assert api.post("/api/agents/register", json=reg).status_code == 200
    return api


def test_several_server_processes_share_the_port_and_one_housekeeper(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3"}
    with two_server_processes(env, tmp_path) as (server, base):
        wait_until(lambda: len(children(server.pid)) >= 2, 30, "two server processes")
        token = (tmp_path / "admin.token").read_text().strip()
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
        assert all(api.get("/api/status").status_code == 200 for _ in range(20))  # either process answers

        lock = tmp_path / "coordinator-housekeeper.lock"
        wait_until(lock.exists, 30, "a housekeeper")
        with lock.open("a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by one of the server processes


def test_agents_claim_and_report_through_two_server_processes_on_postgresql(
    redis_url: str,
    postgres: str,
    tmp_path: Path,
) -> None:
    """PostgreSQL, as production runs it: the agents' calls go through the event-loop path
    (async engine, heartbeat fast lane) of two server processes against one database."""
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path),
        "FARM_DATABASE_URL": postgres.replace("postgresql+psycopg://", "postgresql://"),  # as people write it
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/4",
    }
    with two_server_processes(env, tmp_path) as (_server, base):
        api = admin_with_printers(tmp_path, base, "pa", "pb")
        engine = make_engine(postgres)
        with Session(engine) as session:  # two ready jobs, as a sliced mesh build leaves them
            ready_build(session, models=["MINI"], copies=2)
        engine.dispose()

        idle = {"state": "idle", "message": None, "progress": None}
        claims = {n: api.post("/api/agents/claim", json={"printer": n, **idle}) for n in ("pa", "pb")}
        assert all(c.status_code == 200 for c in claims.values()), {n: c.text for n, c in claims.items()}
        jobs = {n: c.json() for n, c in claims.items()}
        assert jobs["pa"]["id"] != jobs["pb"]["id"]  # racing printers never share a job
        for job in jobs.values():  # what the slice says, read on the claims' pool
            assert (job["gcode"], job["print_time_s"], job["printer_model"]) == ("1" * 64, 60, "MINI")
            assert job["gcode_name"].startswith(f"job{job['id']}-")
        assert api.post("/api/agents/claim", json={"printer": "pa", **idle}).json()["id"] == jobs["pa"]["id"]
        assert (
            api.post("/api/agents/claim", json={"printer": "pa", **idle}).json()["fence"]
            == jobs["pa"]["fence"]
        )
        for _ in range(3):  # whichever process answers, and the fast lane once the token is known
            beat = api.post("/api/agents/heartbeat", json={"printer": "pb", "state": "busy"})
            assert beat.json() == {"job": jobs["pb"]["id"], "fence": jobs["pb"]["fence"]}
            gone = api.post("/api/agents/heartbeat", json={"printer": "nobody", "state": "idle"})
            assert gone.status_code == 404 and "not registered" in gone.json()["detail"]
        for state in ("uploading", "printing", "done"):
            body = {"printer": "pa", "fence": jobs["pa"]["fence"], "state": state}
            assert api.post(f"/api/agents/jobs/{jobs['pa']['id']}/report", json=body).status_code == 200
        stale = {"printer": "pb", "fence": jobs["pb"]["fence"] - 1, "state": "printing"}
        assert api.post(f"/api/agents/jobs/{jobs['pb']['id']}/report", json=stale).status_code == 409
        assert api.get(f"/api/jobs/{jobs['pa']['id']}").json()["state"] == "done"
        assert (
            api.post("/api/agents/heartbeat", json={"printer": "pa", "state": "idle"}).json()["job"] is None
        )
