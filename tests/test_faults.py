"""Every fault switch, on every protocol: the driver must end in the right normalised state.

Each emulator offers the same switches (printers/emulators/common.py `FaultSwitches`); each test
runs once per protocol against the real driver over real sockets. The Bambu-only switch (firmware
that refuses unsigned commands) is in tests/test_bambu.py::test_developer_mode_off_refuses_commands.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from printers.drivers import make_driver
from printers.drivers.base import PAUSED_AT_PRINTER, Driver, DriverError, PrinterConfig, PrinterState
from printers.emulators.bambu import BambuEmulator
from printers.emulators.common import LOCAL_PRINT_NAME, FaultSwitches
from printers.emulators.moonraker import MoonrakerEmulator
from printers.emulators.octoprint import OctoPrintEmulator
from printers.emulators.prusalink import PrusaLinkEmulator
from workers.bambu3mf import PlateInfo, package_gcode

pytestmark = pytest.mark.timeout(60)

PROTOCOLS = ["prusalink", "octoprint", "moonraker", "bambu"]
SECRET = "fault-secret-1"
SERIAL = "01S00A000000077"
ACCESS_CODE = "87654321"
ESTIMATE_S = 600  # the slicer's estimate; at speed 60 a print takes 10 s


@dataclass
class Rig:
    protocol: str
    emulator: Any  # a FaultSwitches emulator, with .state and .received
    driver: Driver
    remote: str  # the name the farm uploads under

    def upload(self, path: Path, *, start: bool = True) -> None:
        self.driver.upload(path, self.remote, start=start)


def gcode(path: Path, lines: int = 30_000) -> Path:
    """A G-code big enough to cut mid-upload, with an estimate the emulators read."""
    rng = random.Random(7)  # varied moves: the Bambu package is a zip, and must stay big
    body = "".join(
        f"G1 X{rng.uniform(0, 200):.3f} Y{rng.uniform(0, 200):.3f} E{rng.random():.5f}\n"
        for _ in range(lines)
    )
    path.write_text(
        f"M104 S215\nM140 S60\nG28\n{body}; estimated printing time (normal mode) = {ESTIMATE_S // 60}m 0s\n"
    )
    return path


def job_file(rig: Rig, tmp_path: Path) -> Path:
    plain = gcode(tmp_path / "part.gcode")
    if rig.protocol != "bambu":
        return plain
    info = PlateInfo(
        printer_model="Bambu Lab X1 Carbon", printer_model_id="BL-P001", print_time_s=ESTIMATE_S, layers=20
    )
    return package_gcode(plain, tmp_path / rig.remote, info, {"nozzle_diameter": "0.4"})


def wait_for(check: Callable[[], Any], what: str, timeout: float = 25.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def state_is(rig: Rig, *states: PrinterState) -> Any:
    return wait_for(
        lambda: (s := rig.driver.status()).state in states and s, what=f"{rig.protocol} to be {states}"
    )


@pytest.fixture(params=PROTOCOLS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    protocol: str = request.param
    storage = tmp_path / "printer"
    emulator: Any
    fields: dict[str, Any] = {"name": f"{protocol}-1", "driver": protocol, "timeout_s": 5.0}
    if protocol == "prusalink":
        emulator = PrusaLinkEmulator(password=SECRET, storage_dir=storage, model="MK4")
        fields |= {"model": "MK4", "password": SECRET}
    elif protocol == "octoprint":
        emulator = OctoPrintEmulator(api_key=SECRET, storage_dir=storage)
        fields |= {"model": "Ender-3", "api_key": SECRET}
    elif protocol == "moonraker":
        emulator = MoonrakerEmulator(api_key=SECRET, storage_dir=storage)
        fields |= {"model": "Voron", "api_key": SECRET}
    else:
        emulator = BambuEmulator(serial=SERIAL, access_code=ACCESS_CODE, storage_dir=storage, model="X1C")
        fields |= {"model": "X1C", "serial": SERIAL, "access_code": ACCESS_CODE}
    assert isinstance(emulator, FaultSwitches)
    emulator.start()
    if protocol == "bambu":
        fields |= {"port": emulator.mqtt_port, "ftps_port": emulator.ftps_port}
    else:
        fields |= {"port": emulator.port}
    driver = make_driver(PrinterConfig(**fields))
    remote = "farm-job-7.gcode.3mf" if protocol == "bambu" else "farm-job-7.gcode"
    state_is(Rig(protocol, emulator, driver, remote), PrinterState.IDLE)  # connected
    yield Rig(protocol, emulator, driver, remote)
    driver.close()
    emulator.close() if protocol == "bambu" else emulator.stop()


def test_offline_mid_print_and_back(rig: Rig, tmp_path: Path) -> None:
    rig.upload(job_file(rig, tmp_path))
    assert state_is(rig, PrinterState.PRINTING).file == rig.remote

    rig.emulator.go_offline()
    offline = state_is(rig, PrinterState.OFFLINE)
    assert offline.message and ("reach" in offline.message or "lost" in offline.message), offline.message
    time.sleep(1.0)  # the print goes on without the network

    rig.emulator.come_back()
    back = state_is(rig, PrinterState.PRINTING, PrinterState.FINISHED)
    assert back.file == rig.remote  # still our job: the agent can pick it up again
    assert back.state == PrinterState.FINISHED or (back.progress or 0) > 0


def test_aborted_upload_leaves_nothing_and_the_printer_usable(rig: Rig, tmp_path: Path) -> None:
    path = job_file(rig, tmp_path)
    assert path.stat().st_size > 256 * 1024
    rig.emulator.abort_next_upload(after_bytes=128 * 1024)
    with pytest.raises(DriverError) as failure:
        rig.upload(path)
    message = str(failure.value)
    assert rig.remote in message and "broke off" in message, message  # not "no answer": it did answer
    assert rig.emulator.received == []  # nothing half-written was kept
    assert rig.driver.status().state == PrinterState.IDLE  # and nothing started

    rig.upload(path)  # the next attempt goes through
    assert state_is(rig, PrinterState.PRINTING).file == rig.remote
    assert rig.emulator.received[-1].read_bytes() == path.read_bytes()


def test_print_fails_with_an_error(rig: Rig, tmp_path: Path) -> None:
    rig.upload(job_file(rig, tmp_path))
    state_is(rig, PrinterState.PRINTING)
    rig.emulator.fail_print("Thermal runaway on the hotend", code=0x0300_8014)

    failed = state_is(rig, PrinterState.FAILED)
    assert failed.message, "a failed print must say why"
    if rig.protocol == "bambu":  # the MQTT report carries only the code
        assert failed.error_code == "0300_8014" and "0300_8014" in failed.message
    else:  # the HTTP protocols carry the firmware's text
        assert "Thermal runaway on the hotend" in failed.message
    assert failed.message != "cancelled"


def test_busy_with_a_print_started_at_the_printer(rig: Rig, tmp_path: Path) -> None:
    local = LOCAL_PRINT_NAME.replace(".gcode", ".gcode.3mf") if rig.protocol == "bambu" else LOCAL_PRINT_NAME
    rig.emulator.start_local_print(local, seconds=30.0)

    busy = state_is(rig, PrinterState.PRINTING)
    assert busy.file == local and busy.file != rig.remote  # the agent sees it is not its job
    with pytest.raises(DriverError) as refused:
        rig.upload(job_file(rig, tmp_path))
    message = str(refused.value).lower()
    assert any(word in message for word in ("busy", "printing", "running", "not ready", "now")), message
    still = rig.driver.status()
    assert (still.state, still.file) == (PrinterState.PRINTING, local)  # someone's print was not touched


def test_attention_waits_for_a_person(rig: Rig, tmp_path: Path) -> None:
    rig.upload(job_file(rig, tmp_path))
    state_is(rig, PrinterState.PRINTING)
    rig.driver.pause()  # a pause the farm asked for is just PAUSED
    assert state_is(rig, PrinterState.PAUSED).state == PrinterState.PAUSED
    rig.driver.resume()
    state_is(rig, PrinterState.PRINTING)

    rig.emulator.need_attention()
    waiting = state_is(rig, PrinterState.ATTENTION)
    assert waiting.file == rig.remote
    assert waiting.message
    if rig.protocol != "octoprint":  # OctoPrint cannot say why the firmware paused; the others can
        assert waiting.message != PAUSED_AT_PRINTER, waiting.message
    frozen = waiting.progress
    time.sleep(0.6)
    assert rig.driver.status().progress == frozen  # nothing prints while it waits

    rig.emulator.attend()
    assert state_is(rig, PrinterState.PRINTING).file == rig.remote
