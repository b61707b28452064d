"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_farm(
    env: dict[str, str], *args: str, timeout: float = 120, **options: Any
) -> subprocess.CompletedProcess[str]:
    """`farm ARGS` in a child process with `env`, run from the checkout; its output kept as text.
    `options`: more of subprocess.run's (input=...)."""
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        **options,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGINT) -> int | None:
    """Ask `proc` to stop (by default as Ctrl-C does) and give it `timeout` seconds, then kill it.
    Its exit code; None when it had to be killed."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server (Debian's redis-server, installed by scripts/setup)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run scripts/setup"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(up, 10, "redis-server")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server's URL (tests/pgserver.py); the test is skipped where none runs."""
    from tests.pgserver import PostgresUnavailable, throwaway_postgres

    pytest.importorskip("psycopg", reason="psycopg is missing: run scripts/setup (the dev extra has it)")
    try:
        with throwaway_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The coordinator's database, empty: on SQLite, then on a fresh database of `postgres`."""
    from farm.coordinator.db import make_engine
    from tests.coordinator_fixtures import fresh_database

    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'farm.coordinator.db'}")
    else:
        engine = fresh_database(request.getfixturevalue("postgres"))
    yield engine
    engine.dispose()


@contextlib.contextmanager
def farm_server(env: dict[str, str], log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`farm server ARGS` on a free port until it answers; stopped with Ctrl-C at the end."""
    port = free_port()
    out = log.open("wb")
    argv = [sys.executable, "-m", "farm", "server", "--port", str(port), *args]
    server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, "the coordinator")
        yield server, base
    finally:
        stop_process(server, 30)
        out.close()


@dataclass
class RunningFarm:
    url: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    printers: list[dict]

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return run_farm(self.env, *args, timeout=timeout)

    def admin_headers(self) -> dict[str, str]:
        """The Authorization header of the admin token the farm wrote."""
        return {"Authorization": f"Bearer {(self.data_dir / 'admin.token').read_text().strip()}"}

    def cli_json(self, *args: str, timeout: float = 240) -> tuple[int, dict | list]:
        done = self.cli(*args, "--json", timeout=timeout)
        lines = done.stdout.strip().splitlines()
        assert lines, f"no output from farm {' '.join(args)}; stderr:\n{done.stderr}"
        return done.returncode, json.loads(lines[-1])

    def received(self, printer: str) -> list[Path]:
        usb = self.data_dir / "sim" / printer / "usb"
        return sorted(usb.rglob("*.gcode")) if usb.exists() else []


@contextlib.contextmanager
def running_farm(
    redis_url: str, data: Path, sim: str, redis_db: int = 0, env: dict[str, str] | None = None
) -> Iterator[RunningFarm]:
    """`farm up --sim SIM` with a fresh data dir, stopped with Ctrl-C (SIGINT) at the end; `env`:
    more settings for every part (FARM_WORK_LEASE_S=...).

    Farms sharing a Redis need separate databases, or one farm's workers take the other's messages.
    """
    extra_env = env or {}
    port = free_port()
    redis_url = f"{redis_url.rsplit('/', 1)[0]}/{redis_db}"
    env = {
        **os.environ,
        "FARM_REDIS_URL": redis_url,
        "FARM_DATA_DIR": str(data),
        "FARM_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
        # The tests' git repositories are local: file:// URLs are off unless listed (farm.core.gitsource).
        "FARM_GIT_SCHEMES": '["https", "ssh", "git", "file"]',
        **extra_env,
    }
    env.pop("FARM_TOKEN", None)
    log = (data / "farm-up.out").open("wb")
    argv = [
        sys.executable,
        "-m",
        "farm",
        "up",
        "--sim",
        sim,
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--speed",
        "600",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    state = data / "farm-up.json"
    try:
        wait_until(lambda: state.exists() or proc.poll() is not None, 120, "farm up")
        assert proc.poll() is None, (data / "farm-up.out").read_text()
        running = RunningFarm(env["FARM_URL"], data, env, proc, json.loads(state.read_text())["printers"])
        token = (data / "admin.token").read_text().strip()

        def registered() -> bool:
            printers = httpx.get(f"{running.url}/api/printers", headers={"Authorization": f"Bearer {token}"})
            return len(printers.json()) == len(running.printers)

        wait_until(registered, 60, "every agent to register")
        yield running
    finally:
        code = stop_process(proc, 60)
        log.close()
        assert code == 0, f"farm up did not stop cleanly on Ctrl-C (exit {code})"
        assert not (data / "farm-up.json").exists()


@pytest.fixture(scope="session")
def farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """Coordinator, worker and two simulated PrusaLink printers (a MINI and an MK3S)."""
    with running_farm(redis_url, tmp_path_factory.mktemp("farm"), "2") as running:
        yield running


@pytest.fixture(scope="session")
def cad_runner():  # type: ignore[no-untyped-def]
    """A warm CAD fork server (build123d imported once, 3-5 s and ~400 MB) shared by the CAD tests
    that only build; the hostile-build tests keep runners of their own."""
    from workers.cad_runner import CadRunner

    runner = CadRunner()
    try:
        runner.start()
        yield runner
    finally:
        runner.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """When a test on a running farm fails, show what each of the farm's parts logged last: a CI
    run's temporary folders are gone by the time anyone reads its output."""
    outcome = yield
    report = outcome.get_result()
    farms = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, RunningFarm)]
    if report.when != "call" or not report.failed or not farms:
        return
    for name, tail in log_tails(farms[0].data_dir):
        report.sections.append((f"farm log {name} (last lines)", tail))


def log_tails(data_dir: Path, lines: int = 25) -> list[tuple[str, str]]:
    """The last lines `farm up` and each of its parts logged in `data_dir`, by file name."""
    logs = [data_dir / "farm-up.out", *sorted((data_dir / "logs").glob("*.log"))]
    return [
        (log.name, "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        for log in logs
        if log.exists()
    ]


def ready_job(
    data: Path, base: str, admin: str, gcode: bytes, *, model: str = "MK4", name: str = "part.gcode"
) -> int:
    """A ready `model` job printing `gcode` (uploaded as an artifact called `name`), as a slicer
    would leave it: for tests of printing that need no CAD or slicing (a coordinator on SQLite)."""
    from sqlmodel import Session

    from farm.coordinator.db import make_engine
    from tests.coordinator_fixtures import ready_build

    sha = hashlib.sha256(gcode).hexdigest()
    put = httpx.put(
        f"{base}/api/artifacts", params={"name": name}, content=gcode,
        headers={"Authorization": f"Bearer {admin}"}, timeout=30,
    )  # fmt: skip
    assert put.status_code == 200 and put.json()["sha256"] == sha, put.text
    engine = make_engine(f"sqlite:///{data / 'farm.coordinator.db'}")
    with Session(engine) as session:
        job_id = ready_build(session, models=None, printer_model=model, gcode_sha256=sha)[0].id
    engine.dispose()
    assert job_id is not None
    return job_id
