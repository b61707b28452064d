"""docker-compose.yml runs `farm` commands: each must exist, with the options it is given."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
