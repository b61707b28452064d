"""`farm server --workers N`: N processes answer on one port; exactly one of them keeps house."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from farm import pipeline
from farm.db import make_engine
from farm.models import Slice
from tests.conftest import REPO, free_port, wait_until
from tests.pgserver import PostgresUnavailable, throwaway_postgres


def children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_several_server_processes_share_the_port_and_one_housekeeper(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3"}
    log = (tmp_path / "server.log").open("wb")
    argv = [sys.executable, "-m", "farm", "server", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the coordinator")
        wait_until(lambda: len(children(server.pid)) >= 2, 30, "two server processes")
        token = (tmp_path / "admin.token").read_text().strip()
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        assert all(api.get("/api/status").status_code == 200 for _ in range(20))  # either process answers

        lock = tmp_path / "coordinator-housekeeper.lock"
        wait_until(lock.exists, 30, "a housekeeper")
        with lock.open("a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by one of the server processes
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def db_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg is missing: run scripts/setup (the dev extra has it)")
    try:
        with throwaway_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")


def test_agents_claim_and_report_through_two_server_processes_on_postgresql(
    redis_url: str, db_url: str, tmp_path: Path
) -> None:
    """PostgreSQL, as production runs it: the agents' calls go through the event-loop path
    (async engine, heartbeat fast lane) of two server processes against one database."""
    port = free_port()
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path),
        "FARM_DATABASE_URL": db_url.replace("postgresql+psycopg://", "postgresql://"),  # as people write it
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/4",
    }
    log = (tmp_path / "server.log").open("wb")
    argv = [sys.executable, "-m", "farm", "server", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the coordinator")
        token = (tmp_path / "admin.token").read_text().strip()
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for name in ("pa", "pb"):
            reg = {"printer": name, "model": "MINI", "protocol": "prusalink", "auto_eject": True}
            assert api.post("/api/agents/register", json=reg).status_code == 200
        engine = make_engine(db_url)
        with Session(engine) as session:  # two ready jobs, as a sliced mesh build leaves them
            build, _jobs, _out = pipeline.create_build(
                session,
                source_name="part.stl",
                source_sha256="0" * 64,
                entry=None,
                params={},
                copies=2,
                material="PLA",
                quality="standard",
                color=None,
                printer_model=None,
                priority=0,
            )
            for sl in session.exec(select(Slice).where(Slice.build_id == build.id)).all():
                pipeline.slice_finished(session, sl, error=None, gcode_sha256="1" * 64, meta={}, seconds=1)
            session.commit()
        engine.dispose()

        idle = {"state": "idle", "message": None, "progress": None}
        claims = {n: api.post("/api/agents/claim", json={"printer": n, **idle}) for n in ("pa", "pb")}
        assert all(c.status_code == 200 for c in claims.values()), {n: c.text for n, c in claims.items()}
        jobs = {n: c.json() for n, c in claims.items()}
        assert jobs["pa"]["id"] != jobs["pb"]["id"]  # racing printers never share a job
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
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
