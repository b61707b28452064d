"""A crash must lose no job and never print one twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import EXAMPLES, REPO, RunningFarm, running_farm, wait_until


def test_agent_killed_mid_print_finishes_the_job_exactly_once(farm: RunningFarm) -> None:
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    # A bigger bracket prints for several seconds even on a sped-up emulator.
    code, build = farm.cli_json(
        "submit",
        str(EXAMPLES / "bracket.py"),
        "--param",
        "length=140",
        "--param",
        "width=60",
        "--printer-model",
        "MK3S",
    )
    assert code == 0
    job_id = build["jobs"][0]["id"]

    def job() -> dict:
        return api.get(f"/api/jobs/{job_id}").json()

    printing = wait_until(lambda: (j := job())["state"] == "printing" and j, 180, "the job to print")
    agent = f"agent-{printing['printer']}"
    state_file = farm.data_dir / "farm-up.json"
    old_pid = json.loads(state_file.read_text())["children"][agent]
    os.kill(old_pid, signal.SIGKILL)

    # farm up restarts the agent; it asks the coordinator what it held, finds the printer printing
    # that file, and follows it to the end instead of sending it again.
    final = wait_until(lambda: (j := job())["state"] in ("done", "failed") and j, 180, "the job to end")
    assert final["state"] == "done", final
    assert json.loads(state_file.read_text())["children"][agent] != old_pid
    emulator_log = (farm.data_dir / "logs" / f"emu-{printing['printer']}.log").read_text()
    starts = [line for line in emulator_log.splitlines() if f"started: job{job_id}-" in line]
    assert len(starts) == 1, starts


@pytest.fixture(scope="module")
def farm_to_crash(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A farm of its own: the shared one must not inherit what a coordinator killed mid-run left."""
    with running_farm(redis_url, tmp_path_factory.mktemp("crash"), "2", redis_db=5) as running:
        yield running


def test_coordinator_killed_mid_run_loses_no_job(farm_to_crash: RunningFarm) -> None:
    """SIGKILL the coordinator while builds are in CAD, slicing and printing; `farm up` restarts it.

    Job state is in SQLite (WAL, committed per step) and messages wait in Redis, so every job must
    still end done, each printed exactly once."""
    farm = farm_to_crash
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    job_ids = []
    for args in (
        [str(EXAMPLES / "bracket.py"), "--param", "length=120", "--printer-model", "MINI"],
        [str(EXAMPLES / "spacer.py"), "--printer-model", "MK3S"],
        [str(EXAMPLES / "cube.stl"), "--copies", "2"],
    ):
        code, build = farm.cli_json("submit", *args)
        assert code == 0, build
        job_ids += [j["id"] for j in build["jobs"]]

    def jobs() -> list[dict]:
        try:
            return [api.get(f"/api/jobs/{i}").json() for i in job_ids]
        except httpx.HTTPError:
            return []  # the coordinator is down or still starting

    wait_until(lambda: any(j["state"] == "printing" for j in jobs()), 180, "a job to print")
    state_file = farm.data_dir / "farm-up.json"
    old_pid = json.loads(state_file.read_text())["children"]["coordinator"]
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: json.loads(state_file.read_text())["children"]["coordinator"] != old_pid,
        30,
        "farm up to restart the coordinator",
    )

    final = wait_until(
        lambda: (js := jobs()) and all(j["state"] in ("done", "failed", "cancelled") for j in js) and js,
        300,
        "every job to end",
    )
    assert [j["state"] for j in final] == ["done"] * len(job_ids), final
    for j in final:
        log = (farm.data_dir / "logs" / f"emu-{j['printer']}.log").read_text()
        starts = [line for line in log.splitlines() if f"started: job{j['id']}-" in line]
        assert len(starts) == 1, (j, starts)


def mini_agent(
    farm: RunningFarm, tmp_path: Path, name: str, printer_port: int, url: str | None = None
) -> Callable[[], subprocess.Popen[bytes]]:
    """An agent process for a MINI emulator outside the farm (`url`: the coordinator's, by default
    the farm's); calling the result starts it, again after a kill."""
    token = (farm.data_dir / "admin.token").read_text().strip()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'poll_s = 0.5\nspool_dir = "{tmp_path / "spool"}"\n\n'
        f'[coordinator]\nurl = "{url or farm.url}"\ntoken = "{token}"\n\n'
        f'[printer]\nname = "{name}"\nmodel = "MINI"\ndriver = "prusalink"\nhost = "127.0.0.1"\n'
        f'port = {printer_port}\npassword = "pw"\nauto_eject = true\n'
    )

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "agent.log").open("ab")
        argv = [sys.executable, "-m", "farm", "agent", "--config", str(config)]
        return subprocess.Popen(argv, env=farm.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    return start


def padded_mini_gcode(farm: RunningFarm, tmp_path: Path, kib: int) -> Path:
    """A cube sliced for the MINI, padded with comments to about `kib` KiB more."""
    gcode = tmp_path / "padded_mini.gcode"
    sliced = farm.cli("slice", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "-o", str(gcode))
    assert sliced.returncode == 0, sliced.stderr
    gcode.write_text(gcode.read_text() + ("; padding " + "x" * 1014 + "\n") * kib)
    return gcode


def test_agent_killed_mid_upload_prints_the_job_exactly_once(farm: RunningFarm, tmp_path: Path) -> None:
    """A printer that takes uploads slowly (as a MINI does), its agent SIGKILLed early in the body.

    The G-code is padded to 24 MB so that the kernel's socket buffers (a few MB on loopback) cannot
    hold the rest of it: the kill really cuts the upload."""
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    emulator = PrusaLinkEmulator(
        password="pw", model="MINI", storage_dir=tmp_path / "usb", speed=600, upload_bytes_per_s=4_000_000
    ).start()
    start_agent = mini_agent(farm, tmp_path, "slow-mini", emulator.port)
    agent = start_agent()
    try:
        wait_until(
            lambda: any(p["name"] == "slow-mini" for p in api.get("/api/printers").json()), 60, "register"
        )
        gcode = padded_mini_gcode(farm, tmp_path, 24_000)
        code, build = farm.cli_json("submit", str(gcode), "--printer", "slow-mini")
        assert code == 0, build
        job_id = build["jobs"][0]["id"]

        def transfer() -> dict | None:
            return emulator.printer.transfer_json()

        wait_until(
            lambda: (t := transfer()) and t["transferred"] > 1_000_000, 240, "the upload to begin", 0.05
        )
        assert api.get(f"/api/jobs/{job_id}").json()["state"] == "uploading"
        agent.kill()  # SIGKILL, mid-body
        agent.wait(10)
        wait_until(lambda: transfer() is None, 30, "the printer to drop the half upload")
        assert emulator.received == [] and emulator.state == "IDLE"  # nothing was kept or started

        agent = start_agent()  # it finds its job bound, the printer idle without it, and sends it again
        final = wait_until(
            lambda: (j := api.get(f"/api/jobs/{job_id}").json())["state"] in ("done", "failed") and j,
            240,
            "the job to end",
        )
        assert final["state"] == "done" and final["printer"] == "slow-mini", final
        assert len(emulator.received) == 1
        assert emulator.printer.history == [emulator.received[0].name]  # started once
    finally:
        agent.kill()
        agent.wait(10)
        emulator.stop()
        removed = farm.cli("printers", "remove", "slow-mini")  # the other tests count the printers
        assert removed.returncode == 0, removed.stderr


class FlakyLink:
    """A TCP relay between an agent and the coordinator that can go down like a network (or a
    coordinator restart): live connections are reset, new ones refused, until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down = threading.Event()
        self.tripped = threading.Event()
        self.trip_after: int | None = None  # bytes of one reply from the coordinator
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        moved = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
                moved += len(data)
                if downstream and self.trip_after is not None and moved > self.trip_after:
                    self.trip_after = None
                    self.tripped.set()
                    self.cut()
                    return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
                c.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_coordinator_lost_mid_download_prints_the_job_once(farm: RunningFarm, tmp_path: Path) -> None:
    """The link to the coordinator drops while the agent downloads a G-code, and comes back.

    The agent still holds the lease: it must fetch the job again and print it, once, rather than
    wait on a print that never began."""
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    link = FlakyLink(int(farm.url.rsplit(":", 1)[1]))
    emulator = PrusaLinkEmulator(password="pw", model="MINI", storage_dir=tmp_path / "usb", speed=600).start()
    agent = mini_agent(farm, tmp_path, "flaky-mini", emulator.port, f"http://127.0.0.1:{link.port}")()
    try:
        wait_until(
            lambda: any(p["name"] == "flaky-mini" for p in api.get("/api/printers").json()), 60, "register"
        )
        gcode = padded_mini_gcode(farm, tmp_path, 16_000)
        link.trip_after = 2_000_000  # only a G-code download is this big
        code, build = farm.cli_json("submit", str(gcode), "--printer", "flaky-mini")
        assert code == 0, build
        job_id = build["jobs"][0]["id"]
        assert link.tripped.wait(120), "the agent never downloaded the G-code"
        time.sleep(3)  # the agent finds the coordinator gone for a few polls
        link.restore()
        final = wait_until(
            lambda: (j := api.get(f"/api/jobs/{job_id}").json())["state"] in ("done", "failed") and j,
            120,
            "the job to end",
        )
        assert final["state"] == "done" and final["printer"] == "flaky-mini", final
        assert len(emulator.printer.history) == 1, emulator.printer.history  # started once
    finally:
        agent.kill()
        agent.wait(10)
        link.close()
        emulator.stop()
        removed = farm.cli("printers", "remove", "flaky-mini")  # the other tests count the printers
        assert removed.returncode == 0, removed.stderr
