"""`farm up` cleans up after itself: its parts die with it however it dies, and the next `farm up` on
the same data dir starts cleanly. Real `farm up` processes, killed the way people and service
managers kill them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, log_tails, stop_process, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; PR_SET_PDEATHSIG is Linux's")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie holds no port and runs nothing


def descendants(root: int) -> set[int]:
    """Every process below `root` now, through any number of generations."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def farm_ports(state: dict) -> set[int]:
    ports = {int(state["url"].rsplit(":", 1)[1]), int(state["redis_url"].rsplit(":", 1)[1].split("/")[0])}
    return ports | {p["port"] for p in state["printers"]}


def start_farm(data: Path, port: int, sim: str = "1") -> subprocess.Popen[bytes]:
    """`farm up` with its embedded Valkey (no FARM_REDIS_URL): that server must go with it too."""
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_REDIS_URL", "FARM_TOKEN")}
    env.update(FARM_DATA_DIR=str(data), FARM_URL=f"http://127.0.0.1:{port}", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "farm", "up", "--sim", sim, "--port", str(port), "--data-dir", str(data)]
    with (data / "farm-up.out").open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def wait_up(proc: subprocess.Popen[bytes], data: Path) -> dict:
    """farm-up.json, once this farm up wrote it (a killed one's may still be there at first)."""

    def up() -> dict | None:
        assert proc.poll() is None, (data / "farm-up.out").read_text()
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((data / "farm-up.json").read_text())
            return state if state["pid"] == proc.pid else None
        return None

    return wait_until(up, 180, "farm up to start")


def healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def stopped_at_end(proc: subprocess.Popen[bytes], parts: set[int]) -> Iterator[None]:
    """Ctrl-C at the end, whatever the test did; then nothing of it (`parts` and what is below
    `farm up` then) outlives the test, even when the test failed."""
    try:
        yield
    finally:
        if proc.poll() is None:
            parts |= descendants(proc.pid)
            stop_process(proc, 60)
        for pid in parts:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _described(pid: int) -> str:
    """What a process is and where it waits (its state and kernel wait channel), for a failure."""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode()
        stat = _stat(pid)
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        return f"{cmdline} (state {stat[0] if stat else '?'}, waiting in {wchan or '-'})"
    return "gone"


SLOW_DESIGN = """
import time
from build123d import Box

time.sleep(300)
result = Box(10, 10, 10)
"""


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM, SIGKILL 1 s later"])
def test_farm_up_takes_its_parts_with_it_and_starts_again(how: str, tmp_path: Path) -> None:
    data, port = tmp_path / "farm", free_port()
    data.mkdir()
    first, parts = start_farm(data, port), set()
    with stopped_at_end(first, parts):
        state = wait_up(first, data)
        wait_until(lambda: healthy(state["url"]), 60, "the coordinator")
        ports = farm_ports(state)
        wait_until(lambda: not any(port_free(p) for p in ports), 60, "every part to listen")
        # A build in progress: the worker is busy (slow to stop) and its CAD fork server has a
        # child of its own, a great-grandchild of farm up. They must go too.
        (tmp_path / "slow.py").write_text(SLOW_DESIGN)
        env = {**os.environ, "FARM_URL": state["url"], "FARM_DATA_DIR": str(data)}
        env.pop("FARM_TOKEN", None)
        submit = [sys.executable, "-m", "farm", "submit", str(tmp_path / "slow.py"), "--no-project"]
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        worker = state["children"]["worker"]
        wait_until(
            lambda: any(descendants(p) for p in descendants(worker)),
            120,
            "the fork server to start the build",
        )
        parts |= descendants(first.pid) | set(state["children"].values())
        # Valkey, the coordinator, the worker, its CAD fork server and the build, an emulator, an agent.
        assert len(parts) >= 7, parts

        if how == "kill -9":
            first.kill()
        else:
            first.terminate()
            time.sleep(1.0)
            first.kill()
        first.wait(10)

        def all_gone() -> bool:
            return not [p for p in parts if alive(p)] and all(port_free(p) for p in ports)

        with contextlib.suppress(AssertionError):
            wait_until(all_gone, 10, "farm up's parts to die with it")
        left = {p: _described(p) for p in parts if alive(p)}
        logs = "\n".join(f"--- {name}\n{tail}" for name, tail in log_tails(data))
        assert not left, f"still running after {how} of farm up: {left}\n{logs}"
        assert all(port_free(p) for p in ports), [p for p in ports if not port_free(p)]

    second = start_farm(data, port)
    with stopped_at_end(second, set()):
        state = wait_up(second, data)
        wait_until(lambda: healthy(state["url"]), 60, "the second farm's coordinator")
    assert second.returncode == 0, (data / "farm-up.out").read_text()[-3000:]


def _started(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_second_farm_up_stops_what_a_killed_one_left_running(tmp_path: Path) -> None:
    """Should a part outlive its `farm up` (it ignored the signal), or something a part started
    outlive both, the next `farm up` on that data dir says so and stops it rather than running
    beside it; a process that merely got a recorded pid again is left alone."""
    data, port = tmp_path / "farm", free_port()
    data.mkdir()
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_term], start_new_session=True)
    # A part that died, leaving what it started (its process group) running.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $!; sleep 1"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    innocent = subprocess.Popen(["sleep", "600"], start_new_session=True)
    assert leader.stdout is not None
    orphan = int(leader.stdout.readline())
    try:
        # What a farm up killed at this moment leaves: its record of its parts, each by pid and
        # start time. The innocent process has a pid the record names, but started at another time.
        record = {
            "pid": 999_999_999,
            "children": {
                "worker": [stubborn.pid, _started(stubborn.pid)],
                "agent-sim-mini-1": [leader.pid, _started(leader.pid)],
                "coordinator": [innocent.pid, _started(innocent.pid) - 1],
            },
        }
        leader.wait(10)
        assert alive(orphan)
        (data / "farm-up.pids.json").write_text(json.dumps(record))
        (data / "farm-up.json").write_text(json.dumps({"pid": 999_999_999, "url": "stale", "printers": []}))
        farm = start_farm(data, port, sim="0")
        with stopped_at_end(farm, set()):
            wait_up(farm, data)
            wait_until(lambda: stubborn.poll() is not None, 15, "the left-over part to be stopped")
            wait_until(lambda: not alive(orphan), 15, "what a dead part started to be stopped")
            assert innocent.poll() is None, "farm up stopped a process that only had a recorded pid"
        out = (data / "farm-up.out").read_text()
        assert (
            f"without stopping worker (pid {stubborn.pid}), what agent-sim-mini-1 (pid {leader.pid}) started;"
            in out
        ), out
        assert "coordinator" not in out.split("stopping them")[0], out
    finally:
        for proc in (stubborn, innocent):
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
