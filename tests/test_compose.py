"""docker-compose.yml runs `farm` commands: each must exist, with the options it is given; the
workers get no more than they need."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent


def compose_commands() -> dict[str, list[str]]:
    # A tiny reader for the one shape we use (`command: ["farm", ...]`), to avoid a YAML dependency.
    commands, service = {}, None
    for line in (REPO / "docker-compose.yml").read_text().splitlines():
        if m := re.match(r"^  ([\w-]+):\s*$", line):
            service = m.group(1)
        elif (m := re.match(r"^\s+command:\s*\[(.*)\]\s*$", line)) and service:
            commands[service] = [a.strip().strip('"') for a in m.group(1).split(",")]
    return commands


def test_every_farm_service_runs_a_real_cli_command() -> None:
    farm_services = {s: c for s, c in compose_commands().items() if c[0] == "farm"}
    assert set(farm_services) == {"coordinator", "cad-worker", "slicing-worker"}
    for service, argv in farm_services.items():
        sub = argv[1]
        help_text = subprocess.run(
            [sys.executable, "-m", "farm", sub, "--help"], capture_output=True, text=True, timeout=60
        )
        assert help_text.returncode == 0, f"{service}: `farm {sub}` does not exist: {help_text.stderr}"
        for option in (a for a in argv[2:] if a.startswith("--")):
            assert option in help_text.stdout, f"{service}: `farm {sub}` has no {option}"


def test_workers_hold_no_data_volume_no_admin_token_and_no_database_password() -> None:
    """The workers run submitted code: what they can reach, that code might too. They take files
    to and from the coordinator over HTTP with a worker token (workers/actors.py), so they need
    neither the data volume (admin.token, every artifact) nor the database. The one volume they
    share is the worker token's, read-only: the coordinator writes it, they read it."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]  # merges `<<:`
    assert "farm-data:/data" in services["coordinator"]["volumes"]
    token_file = services["coordinator"]["environment"]["FARM_WORKER_TOKEN_FILE"]
    for name in ("cad-worker", "slicing-worker"):
        service = services[name]
        env, volumes = service["environment"], service.get("volumes", [])
        assert "FARM_TOKEN" not in env and env["FARM_TOKEN_FILE"] == token_file, f"{name}: {env}"
        assert not any(v.split(":")[0] == "farm-data" for v in volumes), f"{name} mounts the data volume"
        mounts = {v.split(":")[1] for v in volumes}
        assert env.get("FARM_DATA_DIR") != "/data" and "/data" not in mounts, f"{name} sees /data"
        assert "FARM_DATABASE_URL" not in env, f"{name} is given the database's password"
        others = {v.split(":")[0] for s, o in services.items() if s != name for v in o.get("volumes", [])}
        shared = [v for v in volumes if v.split(":")[0] in others]
        assert shared == ["worker-token:/run/farm:ro"], f"{name} shares {shared} with another service"


def test_health_checks_gate_the_start_order() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("redis", "postgres", "coordinator"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name, needs in (("coordinator", {"redis", "postgres"}), ("cad-worker", {"redis", "coordinator"})):
        depends = services[name]["depends_on"]
        assert set(depends) == needs and all(d["condition"] == "service_healthy" for d in depends.values())
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)  # `COPY . .` took a 1.2 GB .venv along


def _here(value: str, places: dict[str, str]) -> str:
    for there, here in places.items():
        value = value.replace(there, here)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)  # no variable set: each takes its default


def test_compose_starts_from_nothing_and_a_job_prints(
    redis_url: str,
    postgres: str,
    tmp_path: Path,
) -> None:
    """Without Docker: each service's command with that service's environment (hosts and volumes
    mapped to loopback and temp dirs), from an empty data dir and no variable set."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    port = free_port()
    places = {
        "redis://redis:6379/0": redis_url.rsplit("/", 1)[0] + "/12",
        "postgresql+psycopg://farm:farm@postgres:5432/farm": postgres,
        "http://coordinator:8000": f"http://127.0.0.1:{port}",
        "/run/farm": str(tmp_path / "worker-token"),
        "/data": str(tmp_path / "data"),
    }
    base_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        env = {**base_env, **{k: _here(str(v), places) for k, v in services[name]["environment"].items()}}
        if name.endswith("worker"):
            env["FARM_DATA_DIR"] = str(tmp_path / name)  # its own cache volume
        argv = [_here(a, places) for a in argv]
        argv = [str(port) if a == "8000" else "127.0.0.1" if a == "0.0.0.0" else a for a in argv]
        exe = [sys.executable, "-m", "farm"] if argv[0] == "farm" else argv[:1]
        with (tmp_path / f"{name}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [*exe, *argv[1:]], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
                )
            )

    try:
        start("coordinator", services["coordinator"]["command"])
        check = [
            _here(a, places).replace("8000", str(port))
            for a in services["coordinator"]["healthcheck"]["test"][1:]
        ]
        check = [sys.executable if a == "python" else a for a in check]

        def healthy() -> bool:  # the compose health check itself
            return subprocess.run(check, capture_output=True, timeout=10).returncode == 0

        wait_until(healthy, 90, "the coordinator's health check")
        admin = (tmp_path / "data" / "admin.token").read_text().strip()
        assert (tmp_path / "worker-token" / "worker.token").read_text().strip()
        for name in ("cad-worker", "slicing-worker"):
            start(name, services[name]["command"])
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {admin}"})
        roles = {t["name"]: t["role"] for t in api.get("/api/tokens").json()}
        assert roles == {"admin": "admin", "compose-workers": "worker"}
        agent_token = api.post(
            "/api/tokens", json={"name": "pi-1", "role": "agent", "printer": "mini-1"}
        ).json()
        emu = PrusaLinkEmulator(password="pw", model="MINI", storage_dir=tmp_path / "usb", speed=600).start()
        try:
            config = tmp_path / "agent.toml"
            config.write_text(
                f'poll_s = 0.5\nspool_dir = "{tmp_path / "spool"}"\n\n[coordinator]\nurl = "http://127.0.0.1:{port}"\n'
                f'token = "{agent_token["token"]}"\n\n[printer]\nname = "mini-1"\nmodel = "MINI"\n'
                f'driver = "prusalink"\npassword = "pw"\nhost = "127.0.0.1"\nport = {emu.port}\n'
            )
            with (tmp_path / "agent.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "farm", "agent", "--config", str(config)],
                        env=base_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=REPO,
                    )
                )
            submit = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "farm",
                    "submit",
                    str(REPO / "examples" / "spacer.py"),
                    "--wait",
                    "--json",
                ],
                env={**base_env, "FARM_URL": f"http://127.0.0.1:{port}", "FARM_TOKEN": admin},
                capture_output=True,
                text=True,
                timeout=300,
                cwd=REPO,
            )
            build = json.loads(submit.stdout.strip().splitlines()[-1])
            assert submit.returncode == 0 and build["jobs"][0]["state"] == "done", (submit.stderr, build)
            assert emu.printer.history, "the printer never printed"
        finally:
            emu.stop()
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_admin_token_given_once_and_a_revoked_worker_token_replaced(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from sqlmodel import Session, select

    from farm.coordinator.api import create_app
    from farm.coordinator.models import Token
    from farm.core.settings import Settings

    token_file = tmp_path / "run" / "worker.token"
    settings = Settings(data_dir=tmp_path / "data", worker_token_file=token_file, admin_token="chosen-admin")
    engine = create_app(settings).state.farm.engine
    first = token_file.read_text()
    assert (tmp_path / "data" / "admin.token").read_text().strip() == "chosen-admin"
    create_app(settings.model_copy(update={"admin_token": "another"}))  # a restart keeps both
    assert token_file.read_text() == first
    assert (tmp_path / "data" / "admin.token").read_text().strip() == "chosen-admin"
    with Session(engine) as session:
        worker = session.exec(select(Token).where(Token.role == "worker")).one()
        worker.revoked_at = datetime.now(UTC)
        session.add(worker)
        session.commit()
    create_app(settings)
    assert token_file.read_text() != first  # revoking it is how its secret is changed
    with Session(engine) as session:
        live = session.exec(select(Token).where(Token.role == "worker", Token.revoked_at == None)).all()  # noqa: E711
    assert len(live) == 1
