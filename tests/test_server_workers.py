"""`farm server --workers N`: N processes answer on one port; exactly one of them keeps house."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_until


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
