"""docker-compose.yml runs `farm` commands: each must exist, with the options it is given; the
workers get no more than they need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

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
    neither the data volume (admin.token, every artifact) nor the database."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]  # merges `<<:`
    assert "farm-data:/data" in services["coordinator"]["volumes"]
    for name in ("cad-worker", "slicing-worker"):
        service = services[name]
        env, volumes = service["environment"], service.get("volumes", [])
        assert env["FARM_TOKEN"].startswith("${FARM_WORKER_TOKEN"), (
            f"{name}: FARM_TOKEN is {env['FARM_TOKEN']}"
        )
        assert not any(v.split(":")[0] == "farm-data" for v in volumes), f"{name} mounts the data volume"
        mounts = {v.split(":")[1] for v in volumes}
        assert env.get("FARM_DATA_DIR") != "/data" and "/data" not in mounts, f"{name} sees /data"
        assert "FARM_DATABASE_URL" not in env, f"{name} is given the database's password"
        others = {v.split(":")[0] for s, o in services.items() if s != name for v in o.get("volumes", [])}
        assert not others & {v.split(":")[0] for v in volumes}, f"{name} shares a volume with another service"
