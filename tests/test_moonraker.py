"""Moonraker over real loopback sockets: our driver against our emulator (no Klipper is packaged,
so the emulator follows Moonraker's source: envelopes, optional API key, Klippy states)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from farm.core.states import PrinterState
from printers.drivers import make_driver
from printers.drivers.base import DriverError
from printers.drivers.moonraker import MoonrakerDriver
from printers.emulators.moonraker import MoonrakerEmulator
from tests.conftest import wait_until
from tests.printer_fixtures import closing_all, driver_config, emulators, wait_state, write_gcode

pytestmark = pytest.mark.timeout(30)

API_KEY = "b1c2d3e4f5a6478899aabbccddeeff00"
HEATED = ("M104 S240", "M140 S100", "G28")  # the status reads these targets back

MakeEmulator = Callable[..., MoonrakerEmulator]
MakeDriver = Callable[..., MoonrakerDriver]


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[MakeEmulator]:
    with emulators(MoonrakerEmulator, tmp_path) as make:
        yield make


@pytest.fixture
def make_mr_driver() -> Iterator[MakeDriver]:
    def make(emulator: MoonrakerEmulator, **overrides: Any) -> MoonrakerDriver:
        fields = {"name": "voron-1", "model": "Voron 2.4", "api_key": None} | overrides
        driver = make_driver(driver_config("moonraker", emulator, **fields))
        assert isinstance(driver, MoonrakerDriver)
        return driver

    with closing_all(make) as tracked:
        yield tracked


def test_upload_with_print_runs_to_complete(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(api_key=API_KEY, speed=300.0)  # 10 min estimate -> 2 s
    driver = make_mr_driver(emulator, api_key=API_KEY)
    data = write_gcode(tmp_path / "cube.gcode", head=HEATED, moves=20000)
    calls: list[tuple[int, int]] = []
    assert driver.status().state == PrinterState.IDLE

    driver.upload(
        tmp_path / "cube.gcode", "farm/cube.gcode", start=True, progress=lambda s, t: calls.append((s, t))
    )

    assert emulator.received == [emulator.klipper.root / "farm" / "cube.gcode"]
    assert emulator.received[0].read_bytes() == data
    assert len(calls) > 1 and calls[-1] == (len(data), len(data))
    printing = driver.status()
    assert (printing.state, printing.file) == (PrinterState.PRINTING, "farm/cube.gcode")
    assert printing.temperatures == {"nozzle": 239.8, "bed": 99.8}  # M104 S240 / M140 S100 from the file
    wait_until(lambda: (driver.status().progress or 0) > 10, 3, "progress")
    midway = driver.status()
    assert midway.remaining_s is not None and 0 <= midway.remaining_s <= 2

    done = wait_state(driver, PrinterState.FINISHED)
    assert (done.progress, done.remaining_s, done.file) == (100.0, 0, "farm/cube.gcode")
    assert emulator.state == "complete"


def test_pause_resume_cancel_and_busy(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0, max_print_s=30.0)  # trusted client: no key needed
    driver = make_mr_driver(emulator)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)

    driver.pause()
    paused = driver.status()
    assert (paused.state, emulator.state) == (PrinterState.PAUSED, "paused")
    time.sleep(0.3)
    assert driver.status().progress == paused.progress  # print_duration excludes pauses
    with pytest.raises(DriverError, match="cannot pause the print: the printer is paused"):
        driver.pause()  # Klipper would answer "ok" and do nothing; the driver says so
    driver.resume()
    assert driver.status().state == PrinterState.PRINTING

    with pytest.raises(DriverError, match="did not start it: it is busy"):
        driver.upload(tmp_path / "a.gcode", "b.gcode", start=True)
    with pytest.raises(DriverError, match="printing that file"):
        driver.upload(tmp_path / "a.gcode", "a.gcode", start=False)  # 403 File is loaded
    with pytest.raises(DriverError, match=r"cannot start 'b\.gcode' now"):
        driver.start("b.gcode")

    driver.cancel()
    cancelled = driver.status()
    assert (cancelled.state, cancelled.message, cancelled.file) == (
        PrinterState.FAILED,
        "cancelled",
        "a.gcode",
    )
    with pytest.raises(DriverError, match="cannot cancel the print: the printer is cancelled"):
        driver.cancel()
    with pytest.raises(DriverError, match=r"no file 'nope\.gcode'"):
        driver.start("nope.gcode")
    driver.start("b.gcode")
    assert driver.status().file == "b.gcode"


def test_print_error_and_klippy_states(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0)
    driver = make_mr_driver(emulator)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)

    emulator.fail("Move out of range: 250.000 0.000 0.300 [0.000]")
    failed = driver.status()
    assert failed.state == PrinterState.FAILED and "Move out of range" in (failed.message or "")

    expected = {
        "shutdown": (PrinterState.ATTENTION, "FIRMWARE_RESTART"),
        "error": (PrinterState.ATTENTION, "printer.cfg"),
        "startup": (PrinterState.BUSY, "starting"),
        "disconnected": (PrinterState.OFFLINE, "not connected to Klipper"),
    }
    for klippy, (state, words) in expected.items():
        emulator.set_klippy_state(klippy)
        status = driver.status()
        assert status.state == state and words in (status.message or ""), (klippy, status)
    with pytest.raises(DriverError, match="Klipper is not ready"):
        driver.pause()  # 503 from the printer endpoints while Klippy is down
    emulator.set_klippy_state("ready")
    assert driver.status().state == PrinterState.FAILED


def test_envelopes_and_api_key(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(api_key=API_KEY)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    with httpx.Client(base_url=emulator.url, headers={"X-Api-Key": API_KEY}) as client:
        info = client.get("/server/info").json()
        assert info["result"]["klippy_state"] == "ready"
        query = client.get("/printer/objects/query?print_stats&nonexistent").json()["result"]
        assert set(query["status"]) == {"print_stats"}  # unknown objects are left out
        assert query["status"]["print_stats"]["state"] == "standby"
        posted = client.post("/printer/objects/query", json={"objects": {"virtual_sdcard": None}}).json()
        assert posted["result"]["status"]["virtual_sdcard"]["is_active"] is False
        assert client.post("/printer/print/pause").json() == {"result": "ok"}  # a no-op, as in Klipper
        missing = client.get("/server/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    unauthorized = httpx.get(f"{emulator.url}/server/info")
    assert unauthorized.status_code == 401 and unauthorized.json() == {
        "error": {"code": 401, "message": "Unauthorized"}
    }

    for key in (None, "wrong"):
        driver = make_mr_driver(emulator, api_key=key)
        with pytest.raises(DriverError, match=r"trusted_clients.*API key"):
            driver.status()
        with pytest.raises(DriverError, match="refused this client"):
            driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    assert emulator.received == []


def test_offline_and_back(make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path) -> None:
    emulator = make_emulator()
    driver = make_mr_driver(emulator)
    assert driver.status().state == PrinterState.IDLE
    emulator.stop()
    offline = driver.status()
    assert offline.state == PrinterState.OFFLINE and str(emulator.port) in (offline.message or "")
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    with pytest.raises(DriverError, match="no answer"):
        driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    with pytest.raises(DriverError, match="no answer"):
        driver.cancel()
    emulator.start()
    assert driver.status().state == PrinterState.IDLE


def test_klipper_replaces_a_paused_job_on_a_new_start(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    """SDCARD_PRINT_FILE is refused ("SD busy") only while printing; a paused job is thrown away
    (klippy/extras/virtual_sdcard.py). Moonraker's upload-and-print still declines while paused."""
    emulator = make_emulator(speed=60.0, max_print_s=30.0)
    driver = make_mr_driver(emulator)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    driver.upload(tmp_path / "a.gcode", "b.gcode", start=False)
    with httpx.Client(base_url=emulator.url) as client:
        busy = client.post("/printer/print/start?filename=b.gcode")
        assert (busy.status_code, busy.json()["error"]["message"]) == (400, "SD busy")
        driver.pause()
        with pytest.raises(DriverError, match="did not start it: it is busy"):
            driver.upload(tmp_path / "a.gcode", "c.gcode", start=True)  # print_started: false
        assert emulator.state == "paused"
        replaced = client.post("/printer/print/start?filename=b.gcode")
        assert replaced.json() == {"result": "ok"}
    stats = driver.status()
    assert (stats.state, stats.file) == (PrinterState.PRINTING, "b.gcode")
    assert emulator.klipper.replaced == ["a.gcode"]


def test_driver_never_starts_on_a_paused_printer(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    """Klipper would start the new file and drop the paused print: the driver checks print_stats first."""
    emulator = make_emulator(speed=60.0, max_print_s=30.0)
    driver = make_mr_driver(emulator)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    driver.upload(tmp_path / "a.gcode", "b.gcode", start=False)
    driver.pause()
    with pytest.raises(DriverError, match=r"cannot start 'b\.gcode' now: it is paused"):
        driver.start("b.gcode")
    assert (emulator.state, driver.status().file, emulator.klipper.replaced) == ("paused", "a.gcode", [])
    driver.cancel()  # cancelled, like complete, standby and error, may start a new print
    driver.start("b.gcode")
    assert (emulator.state, driver.status().file) == ("printing", "b.gcode")


def test_before_klipper_ever_connects_its_endpoints_are_missing(
    make_emulator: MakeEmulator, make_mr_driver: MakeDriver, tmp_path: Path
) -> None:
    """Seen on the real Moonraker (test_moonraker_server.py): /printer/objects/query is 404 until
    Klippy first connects, 503 when it drops later. The driver says which."""
    emulator = make_emulator(klippy_state="disconnected")
    driver = make_mr_driver(emulator)
    write_gcode(tmp_path / "a.gcode", head=HEATED)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=False)
    assert httpx.get(f"{emulator.url}/printer/objects/query?print_stats").status_code == 404
    with pytest.raises(DriverError, match="Klipper has not connected to Moonraker"):
        driver.start("a.gcode")
    emulator.set_klippy_state("ready")
    driver.start("a.gcode")
    emulator.set_klippy_state("disconnected")
    assert httpx.get(f"{emulator.url}/printer/objects/query?print_stats").status_code == 503
    with pytest.raises(DriverError, match="Klipper is not ready"):
        driver.pause()
