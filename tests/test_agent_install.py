"""The Raspberry Pi's install, for real: a fresh virtual environment with `pip install .[agent]` and
nothing else. The agent, its drivers and `farm agent` import and run there; the server's and the CAD
worker's libraries are not installed at all (tests/test_architecture.py only hides them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

NOT_ON_A_PI = ["fastapi", "uvicorn", "sqlmodel", "sqlalchemy", "dramatiq", "redis", "build123d", "OCP"]


def test_the_agent_runs_from_an_install_with_only_the_agent_extra(tmp_path: Path) -> None:
    venv = tmp_path / "pi"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    src = tmp_path / "src"  # the working tree's code, without the checkout's .venv
    src.mkdir()
    for part in ("farm", "workers", "printers", "pyproject.toml", "README.md"):
        subprocess.run(["cp", "-a", str(REPO / part), str(src)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{src}[agent]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    probe = f"import importlib.util as u; print([m for m in {NOT_ON_A_PI!r} if u.find_spec(m)])"
    absent = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    imports = subprocess.run(
        [
            str(python), "-c",
            "import printers.agent, printers.config, farm.core.client, farm.cli\n"
            "from printers.drivers import prusalink, octoprint, moonraker, bambu\n"
            "print('ok')",
        ],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert imports.returncode == 0 and imports.stdout.strip() == "ok", imports.stderr[-3000:]

    farm = venv / "bin" / "farm"
    helped = subprocess.run(
        [str(farm), "agent", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stdout + helped.stderr
    refused = subprocess.run([str(farm), "server"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode != 0 and "printfarm[server]" in refused.stderr, refused.stderr[-2000:]
