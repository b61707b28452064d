"""Enrolling a printer in one command, on loopback: `farm printers add` makes a code, `farm agent
enroll` checks a real PrusaLink emulator and trades the code for a token bound to that printer,
and the agent started from the agent.toml it wrote prints a job."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import update
from sqlmodel import Session

from farm.coordinator.db import make_engine
from farm.coordinator.models import EnrolCode
from printers.emulators.camera import state_color
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import farm_server, ready_job, run_farm, stop_process, wait_until

pytestmark = pytest.mark.timeout(240)

PASSWORD = "tX9mQ2vLpA7c"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[PrusaLinkEmulator]:
    emu = PrusaLinkEmulator(
        password=PASSWORD, storage_dir=tmp_path / "usb", speed=10_000, max_print_s=0.5
    ).start()
    yield emu
    emu.stop()


@pytest.fixture
def coordinator(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path / "data"),
        "FARM_REDIS_URL": redis_url[:-2] + "/10",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FARM_TOKEN", None)
    with farm_server(env, tmp_path / "server.log") as (_, base):
        env["FARM_URL"] = base
        yield base, env


def add(env: dict[str, str], name: str, *more: str) -> str:
    done = run_farm(env, "printers", "add", name, "--model", "MK4", *more)
    assert done.returncode == 0, done.stderr
    command = re.search(r"farm agent enroll (\S+) (pe_\S+)", done.stdout)
    assert command, done.stdout
    assert command[1] == env["FARM_URL"]
    return command[2]


def enroll(env: dict[str, str], emu: PrusaLinkEmulator, code: str, out: Path, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    pi = {k: v for k, v in env.items() if k not in ("FARM_DATA_DIR", "FARM_URL")}  # a Pi has neither
    return run_farm(
        pi,
        "agent", "enroll", env["FARM_URL"], code,
        "--driver", "prusalink", "--host", f"127.0.0.1:{emu.port}", "--password", password,
        "--config", str(out),
    )  # fmt: skip


def test_add_enroll_and_the_agent_prints(
    coordinator: tuple[str, dict[str, str]], emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    base, env = coordinator
    data = Path(env["FARM_DATA_DIR"])
    admin = (data / "admin.token").read_text().strip()
    code = add(env, "mk4-1")
    listed = run_farm(env, "printers", "--json")
    assert '"mk4-1"' in listed.stdout and '"MK4"' in listed.stdout  # in the farm before its Pi enrols

    # A wrong printer password: refused by the check, and the code is not spent.
    out = tmp_path / "pi" / "agent.toml"
    wrong = enroll(env, emulator, code, out, password="not-it")
    assert wrong.returncode == 1 and "still good" in wrong.stderr, wrong.stderr
    assert not out.exists()

    done = enroll(env, emulator, code, out)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    written = tomllib.loads(out.read_text())
    assert written["coordinator"]["url"] == base
    assert written["printer"] == {
        **written["printer"],
        "name": "mk4-1",
        "model": "MK4",
        "driver": "prusalink",
        "port": emulator.port,
        "password": PASSWORD,
    }
    token = written["coordinator"]["token"]
    assert token.startswith("pf_") and token != admin

    # The code is spent: a second Pi cannot use it.
    again = enroll(env, emulator, code, tmp_path / "pi2" / "agent.toml")
    assert again.returncode == 2 and "was used at" in again.stderr, again.stderr

    # The token acts for mk4-1 only, and as nothing but an agent.
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    other = api.post(
        "/api/agents/register", json={"printer": "mk4-2", "model": "MK4", "protocol": "prusalink"}
    )
    assert other.status_code == 403 and "bound to printer 'mk4-1'" in other.text
    assert api.post("/api/printers/enrol", json={"printer": "x", "model": "MK4"}).status_code == 403
    assert api.get("/api/tokens").status_code == 403

    # The agent, from what enroll wrote, prints a job.
    job_id = ready_job(data, base, admin, b"G28\nG1 X10 Y10 E0.5\nM104 S0\n" * 200)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "farm", "agent", "--config", str(out)],
        env={k: v for k, v in env.items() if k not in ("FARM_DATA_DIR", "FARM_URL")},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path / "pi",
    )
    admin_api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    try:
        wait_until(
            lambda: admin_api.get(f"/api/jobs/{job_id}").json()["state"] in ("done", "failed"), 120, "the job"
        )
        job = admin_api.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "done" and job["printer"] == "mk4-1", job
        assert [p.name for p in emulator.received] and emulator.received[0].read_bytes().startswith(b"G28")

        # Its camera's stills at the print's start and end, kept with the job.
        def moments() -> list[str]:
            return [s["moment"] for s in admin_api.get(f"/api/jobs/{job_id}/snapshots").json()]

        wait_until(lambda: moments() == ["start", "end"], 30, "the start and end snapshots")
        shot = tmp_path / "end.png"
        saved = run_farm(env, "job", str(job_id), "--snapshot", str(shot), "--moment", "end")
        assert saved.returncode == 0, saved.stderr
        with Image.open(shot) as image:  # Pillow reads what the emulator's camera made
            assert image.format == "PNG" and image.size == (160, 120)
            assert image.getpixel((0, 0)) == state_color("FINISHED")  # taken once the print ended
        # An agent uploads stills for its own printer's jobs, and only images.
        refused = api.post(f"/api/agents/jobs/{job_id}/snapshots", content=b"<svg/>")
        assert refused.status_code == 415
        agent.send_signal(signal.SIGINT)  # the next job stays unclaimed: not this printer's
        agent.wait(30)
        waiting = ready_job(data, base, admin, b"G28\n" * 10)
        png = shot.read_bytes()
        other = api.post(f"/api/agents/jobs/{waiting}/snapshots", content=png)
        assert other.status_code == 403 and "not on printer 'mk4-1'" in other.text
    finally:
        stop_process(agent, 30)
        log.close()

    # The service for it: restarted on failure, logging to journald, running what enroll wrote.
    units = tmp_path / "units"
    service = run_farm(env, "agent", "install-service", "--config", str(out), "--unit-dir", str(units))
    assert service.returncode == 0, service.stderr
    unit = (units / "printfarm-agent-mk4-1.service").read_text()
    assert f"ExecStart={sys.executable} -m farm agent --config {out.resolve()}\n" in unit
    assert "Restart=on-failure\n" in unit and "StandardOutput=journal\n" in unit
    assert "WantedBy=multi-user.target" in unit


def test_expired_unknown_and_non_admin_codes_are_refused(
    coordinator: tuple[str, dict[str, str]], emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    base, env = coordinator
    data = Path(env["FARM_DATA_DIR"])
    code = add(env, "mk4-9", "--expires", "5m")
    engine = make_engine(f"sqlite:///{data / 'farm.coordinator.db'}")
    with Session(engine) as session:
        session.execute(update(EnrolCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()
    engine.dispose()
    expired = enroll(env, emulator, code, tmp_path / "a.toml")
    assert expired.returncode == 2 and "expired at" in expired.stderr, expired.stderr
    assert httpx.post(f"{base}/api/enroll", json={"code": code}).status_code == 410
    unknown = httpx.post(f"{base}/api/enroll", json={"code": "pe_made-up"})
    assert unknown.status_code == 403 and "not an enrolment code" in unknown.text
    assert not (tmp_path / "a.toml").exists()

    # Only admins make codes.
    viewer = run_farm(env, "tokens", "create", "vic", "--role", "viewer", "--json")
    assert viewer.returncode == 0, viewer.stderr
    secret = re.search(r'"token": "([^"]+)"', viewer.stdout)
    assert secret
    refused = run_farm({**env, "FARM_TOKEN": secret[1]}, "printers", "add", "mk4-x", "--model", "MK4")
    assert refused.returncode != 0 and "viewer token cannot do this" in refused.stderr, refused.stderr
    bad_model = run_farm(env, "printers", "add", "mk4-y", "--model", "MK99")
    assert bad_model.returncode != 0 and "unknown printer model" in bad_model.stderr


def test_the_coordinator_serves_the_agent_package(
    coordinator: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, _env = coordinator
    script = httpx.get(f"{base}/agent/install.sh", timeout=300)
    assert script.status_code == 200, script.text
    wheel_url = re.search(r"printfarm\[agent\] @ (\S+\.whl)", script.text)
    assert wheel_url and wheel_url[1].startswith(f"{base}/agent/wheels/printfarm-"), script.text
    shell = subprocess.run(["sh", "-n"], input=script.text, text=True, capture_output=True)
    assert shell.returncode == 0, shell.stderr  # the shell parses it
    wheel = httpx.get(wheel_url[1], timeout=60)
    assert wheel.status_code == 200
    path = tmp_path / wheel_url[1].rsplit("/", 1)[1]
    path.write_bytes(wheel.content)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    assert {"printers/agent.py", "farm/commands/enroll.py", "farm/core/client.py"} <= names
    assert "Provides-Extra: agent" in metadata and "Requires-Dist: httpx" in metadata
    # pip itself takes it (the agent's dependencies would come from the registry; not fetched here).
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    assert (target / "printers" / "agent.py").is_file()
