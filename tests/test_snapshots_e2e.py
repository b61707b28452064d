"""Camera stills end to end, for each protocol: an agent (in a thread) beside a PrusaLink,
OctoPrint, Moonraker, Bambu P1S or Bambu X1C emulator prints a job and fails another; the stills of the
print's start, end and failure are kept with the jobs, served by the API and by `farm job N
--snapshot`, and Pillow finds in them the image the emulator's camera made. Then an operator asks
for one (`farm printers snapshot`), and the agent answers through its heartbeat's flag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from farm.core.client import FarmClient
from farm.core.printer_models import get_model
from printers.agent import Agent
from printers.config import AgentConfig, CoordinatorConfig
from printers.drivers import make_driver
from printers.drivers.base import PrinterConfig
from printers.emulators.bambu import BambuEmulator
from printers.emulators.camera import BAMBU_FRAME, HEIGHT, WIDTH, camera_png, state_color
from printers.emulators.moonraker import MoonrakerEmulator
from printers.emulators.octoprint import OctoPrintEmulator
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import farm_server, ready_job, run_farm, wait_until
from workers.bambu3mf import PlateInfo, package_gcode

pytestmark = pytest.mark.timeout(120)
PRINT_S = 1.5  # every emulated print lasts this long: long enough to fail one while it prints


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, str]]:
    """`farm server` on SQLite, no workers: the jobs come ready-sliced (conftest.ready_job)."""
    tmp = tmp_path_factory.mktemp("snapfarm")
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp / "data"),
        "FARM_REDIS_URL": redis_url[:-2] + "/12",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FARM_TOKEN", None)
    with farm_server(env, tmp / "server.log") as (_, base):
        env["FARM_URL"] = base
        yield env


def farm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_farm(env, *args, timeout=60)


@dataclass
class Camera:
    """A protocol's emulator, what its agent needs to reach it, and a job it can print."""

    emulator: Any
    printer: dict[str, Any]  # PrinterConfig's fields
    job: Callable[[int], tuple[bytes, str]]  # a payload for the n-th job: (file, name)
    check: Callable[[bytes], str]  # the still's bytes -> which of the emulator's states it shows


def _gcode(n: int) -> tuple[bytes, str]:
    return b"G28\nG1 X10 Y10 E0.5\n" * (50 + n) + b"M104 S0\n", "part.gcode"


def _png_check(states: tuple[str, ...]) -> Callable[[bytes], str]:
    """camera.camera_png's image: the printer state's colour above a dark bed."""

    def check(data: bytes) -> str:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # every chunk's CRC and the pixels checked
            assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
            assert image.convert("RGB").getpixel((0, HEIGHT - 1)) == (40, 40, 40)  # the bed
            top = image.convert("RGB").getpixel((0, 0))
        shown = [s for s in states if state_color(s) == top]
        assert shown, f"{top} is none of the emulator's states {states}"
        return shown[0]

    return check


def _jpeg_check(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (64, 36)
    assert hashlib.sha256(data).digest() == hashlib.sha256(BAMBU_FRAME).digest()  # the camera's frame
    return "frame"


def _prusalink(tmp: Path) -> Camera:
    emu = PrusaLinkEmulator(
        password="pw", model="MK4", storage_dir=tmp, speed=10_000, max_print_s=PRINT_S
    ).start()
    states = ("IDLE", "PRINTING", "FINISHED", "STOPPED", "ERROR", "ATTENTION", "BUSY")
    printer = {"driver": "prusalink", "model": "MK4", "port": emu.port, "password": "pw"}
    return Camera(emu, printer, _gcode, _png_check(states))


def _octoprint(tmp: Path) -> Camera:
    emu = OctoPrintEmulator(api_key="KEY", storage_dir=tmp, speed=10_000, max_print_s=PRINT_S).start()
    states = ("Operational", "Printing", "Finishing", "Error", "Cancelling", "Paused")
    printer = {"driver": "octoprint", "model": "MK3S", "port": emu.port, "api_key": "KEY"}
    return Camera(emu, printer, _gcode, _png_check(states))


def _moonraker(tmp: Path) -> Camera:
    emu = MoonrakerEmulator(storage_dir=tmp, speed=10_000, max_print_s=PRINT_S).start()
    states = ("standby", "printing", "complete", "error", "cancelled", "paused")
    printer = {"driver": "moonraker", "model": "MINI", "port": emu.port}
    return Camera(emu, printer, _gcode, _png_check(states))


def _x1_check(data: bytes) -> str:
    """ffmpeg's JPEG of the X1 emulator's H.264 frame: ffmpeg's test pattern, colour bars."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (64, 48)
        cyan, green = image.convert("RGB").getpixel((12, 10)), image.convert("RGB").getpixel((42, 10))
    assert cyan[0] < 40 < 200 < min(cyan[1:]) and green[1] > 200 > 40 > max(green[0], green[2]), (cyan, green)
    return "bars"


def _bambu(tmp: Path, model: str = "P1S") -> Camera:
    emu = BambuEmulator(
        model=model, storage_dir=tmp, access_code="12345678", speed=10_000, max_print_s=PRINT_S
    ).start()
    printer = {
        "driver": "bambu", "model": model, "port": emu.mqtt_port, "ftps_port": emu.ftps_port,
        "camera_port": emu.camera_port, "serial": emu.serial, "access_code": "12345678",
        "cert_sha256": emu.cert_sha256,
    }  # fmt: skip

    def package(n: int) -> tuple[bytes, str]:
        gcode = tmp / f"plate{n}.gcode"
        layers = [
            f"M73 L{i}\nM991 S0 P{i - 1}\nG1 Z{0.2 * i:.1f}\n" + "G1 X10 Y10 E0.5\n" * 20 for i in range(1, 6)
        ]
        gcode.write_text("G28\n" + "".join(layers) + f"M104 S0 ; {n}\n")
        kind = get_model(model)
        assert kind is not None and kind.gcode_model and kind.bambu_model_id
        info = PlateInfo(kind.gcode_model, kind.bambu_model_id, print_time_s=600, layers=5)
        out = package_gcode(gcode, tmp / f"part{n}.gcode.3mf", info, {"nozzle_diameter": "0.4"})
        return out.read_bytes(), "part.gcode.3mf"

    return Camera(emu, printer, package, _x1_check if model.startswith("X1") else _jpeg_check)


PROTOCOLS = {
    "prusalink": _prusalink,
    "octoprint": _octoprint,
    "moonraker": _moonraker,
    "bambu": _bambu,
    "bambu-x1": lambda tmp: _bambu(tmp, "X1C"),  # H.264 over RTSPS, made a JPEG by ffmpeg
}


@contextlib.contextmanager
def agent_beside(env: dict[str, str], camera: Camera, name: str, spool: Path) -> Iterator[None]:
    """A real agent in a thread, with an agent token bound to its printer."""
    admin = Path(env["FARM_DATA_DIR"], "admin.token").read_text().strip()
    made = httpx.post(
        f"{env['FARM_URL']}/api/tokens", json={"name": f"agent-{name}", "role": "agent", "printer": name},
        headers={"Authorization": f"Bearer {admin}"}, timeout=30,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    printer = PrinterConfig.model_validate(
        {"name": name, "host": "127.0.0.1", "auto_eject": True, **camera.printer}
    )
    config = AgentConfig(
        coordinator=CoordinatorConfig(url=env["FARM_URL"], token=token),
        printer=printer,
        poll_s=0.1,
        spool_dir=spool,
    )
    client = FarmClient(env["FARM_URL"], token)
    stop = threading.Event()
    thread = threading.Thread(
        target=Agent(config, client, make_driver(printer)).run, args=(stop,), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        client.close()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_stills_of_start_end_failure_and_on_request(
    coordinator: dict[str, str], tmp_path: Path, protocol: str
) -> None:
    env = coordinator
    data, base = Path(env["FARM_DATA_DIR"]), env["FARM_URL"]
    admin = (data / "admin.token").read_text().strip()
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    camera = PROTOCOLS[protocol](tmp_path / "printer")
    name = f"cam-{protocol}"
    model = camera.printer["model"]

    def job(job_id: int) -> dict:
        return api.get(f"/api/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def moments(job_id: int) -> list[str]:
        return [s["moment"] for s in api.get(f"/api/jobs/{job_id}/snapshots").json()]

    try:
        with agent_beside(env, camera, name, tmp_path / "spool"):
            # A print that ends: stills at its start and its end.
            payload, file_name = camera.job(1)
            done = ready_job(data, base, admin, payload, model=model, name=file_name)
            wait_until(lambda: job(done)["state"] == "done", 60, f"job {done} to print")
            wait_until(lambda: moments(done) == ["start", "end"], 30, "the start and end stills")
            shown = {}
            for moment in ("start", "end"):
                served = api.get(f"/api/jobs/{done}/snapshot", params={"moment": moment})
                assert served.status_code == 200, served.text
                assert served.headers["content-type"] == (
                    "image/jpeg" if "bambu" in protocol else "image/png"
                )
                shown[moment] = camera.check(served.content)
            if "bambu" not in protocol:  # the still shows the printer as it was: printing, then done
                assert shown["start"] != shown["end"], shown
            saved = tmp_path / "end.img"
            cli = farm(env, "job", str(done), "--snapshot", str(saved), "--moment", "end")
            assert cli.returncode == 0, cli.stderr
            assert camera.check(saved.read_bytes()) == shown["end"]

            # A print that fails while printing: a still of the failure, although the job went
            # back to the queue for another printer (and so is no longer this printer's).
            payload, file_name = camera.job(2)
            failing = ready_job(data, base, admin, payload, model=model, name=file_name)
            wait_until(lambda: job(failing)["state"] == "printing", 60, f"job {failing} to start")
            camera.emulator.fail_print()
            wait_until(lambda: "failure" in moments(failing), 30, "the failure's still")
            assert job(failing)["state"] in ("ready", "failed") and moments(failing) == ["start", "failure"]
            failure = api.get(f"/api/jobs/{failing}/snapshot", params={"moment": "failure"})
            assert failure.status_code == 200
            camera.check(failure.content)
            latest = next(p for p in api.get("/api/printers").json() if p["name"] == name)
            printer_still = api.get(f"/api/printers/{name}/snapshot")  # the printer's latest
            assert printer_still.status_code == 200 and printer_still.content == failure.content
            assert latest["snapshot"] and not latest["snapshot_wanted"]

            # On request: the agent's next call carries the flag; the CLI waits for the still.
            asked = tmp_path / "now.img"
            now = farm(env, "printers", "snapshot", name, "-o", str(asked), "--timeout", "30", "--json")
            assert now.returncode == 0, now.stderr
            camera.check(asked.read_bytes())
            listed = api.get(f"/api/printers/{name}/snapshots").json()
            assert listed["snapshots"][0]["moment"] == "request" and listed["wanted_since"] is None
            assert listed["snapshots"][0]["job"] is None  # the printer held no job: a still of its own
    finally:
        camera.emulator.stop()
        api.close()


def test_a_request_without_a_camera_or_an_agent_says_so(coordinator: dict[str, str], tmp_path: Path) -> None:
    """A Prusa-Link on a Pi has no camera: its agent says so, and the CLI says it at once. A printer
    whose agent is not running: the CLI gives up after --timeout and says why. Only operators
    ask; an agent answers only for its own printer."""
    env = coordinator
    base = env["FARM_URL"]
    admin = Path(env["FARM_DATA_DIR"], "admin.token").read_text().strip()
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    emu = PrusaLinkEmulator(password="pw", model="MK3S", storage_dir=tmp_path / "pi").start()
    pi = Camera(
        emu, {"driver": "prusalink", "model": "MK3S", "port": emu.port, "password": "pw"}, _gcode, str
    )
    try:
        with agent_beside(env, pi, "pi-mk3s", tmp_path / "spool"):
            wait_until(
                lambda: api.get("/api/printers/pi-mk3s/snapshots").status_code == 200, 30, "registration"
            )
            none = farm(
                env, "printers", "snapshot", "pi-mk3s", "-o", str(tmp_path / "x.jpg"), "--timeout", "30"
            )
            assert none.returncode == 1 and "pi-mk3s has no camera the farm can read" in none.stderr, (
                none.stderr
            )
            assert not (tmp_path / "x.jpg").exists()
        # Its agent stopped: nobody answers.
        gone = farm(env, "printers", "snapshot", "pi-mk3s", "--timeout", "1")
        assert gone.returncode == 1 and "no still within 1 s: its agent has not answered" in gone.stderr
        assert "last heard from at" in gone.stderr and api.get("/api/printers").json()
        unknown = farm(env, "printers", "snapshot", "nope", "--timeout", "1")
        assert unknown.returncode == 1 and "no printer 'nope'" in unknown.stderr

        def token(name: str, role: str, printer: str | None = None) -> str:
            made = api.post("/api/tokens", json={"name": name, "role": role, "printer": printer})
            assert made.status_code == 201, made.text
            return str(made.json()["token"])

        viewer = {"Authorization": f"Bearer {token('wall', 'viewer')}"}
        assert api.post("/api/printers/pi-mk3s/snapshot", headers=viewer).status_code == 403
        assert api.get("/api/printers/pi-mk3s/snapshots", headers=viewer).status_code == 200
        other = {"Authorization": f"Bearer {token('agent-other', 'agent', 'other')}"}
        png = camera_png("IDLE")
        stolen = api.post("/api/agents/printers/pi-mk3s/snapshots", content=png, headers=other)
        assert stolen.status_code == 403 and "bound to printer 'other'" in stolen.text
        said = api.post("/api/agents/printers/pi-mk3s/snapshot-error", json={"error": "x"}, headers=other)
        assert said.status_code == 403
        # An admin may stand in for an agent; what it sends must be an image, and not too big.
        assert api.post("/api/agents/printers/pi-mk3s/snapshots", content=b"<svg/>").status_code == 415
        assert api.get("/api/printers/pi-mk3s/snapshot").status_code == 404  # none taken yet
        assert api.get("/api/printers/pi-mk3s/snapshot", params={"id": 10**12}).status_code == 422
    finally:
        emu.stop()
        api.close()
