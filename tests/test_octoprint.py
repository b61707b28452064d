"""OctoPrint over real loopback sockets: our driver against our emulator, and the same driver
against a real OctoPrint server (installed in its own venv) with its bundled virtual printer."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from farm.core.states import PrinterState
from printers.drivers import make_driver
from printers.drivers.base import DriverError, PrinterConfig, PrinterStatus
from printers.drivers.octoprint import OctoPrintDriver
from printers.emulators.octoprint import OctoPrintEmulator
from tests.conftest import REPO, free_port, stop_process, wait_until
from tests.printer_fixtures import closing_all, emulators, wait_state, write_gcode

pytestmark = pytest.mark.timeout(60)

API_KEY = "3F2A9C4E8B7D41A0B6C5D2E1F0A9B8C7"
OCTO_VENV = REPO / ".venv-octoprint"
OCTO_VERSION = "octoprint==1.11.8"  # the version protocols.md §C was verified against

MakeEmulator = Callable[..., OctoPrintEmulator]
MakeDriver = Callable[..., OctoPrintDriver]


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[MakeEmulator]:
    with emulators(OctoPrintEmulator, tmp_path, api_key=API_KEY) as make:
        yield make


@pytest.fixture
def make_octo_driver() -> Iterator[MakeDriver]:
    def make(port: int, **overrides: Any) -> OctoPrintDriver:
        fields: dict[str, Any] = {
            "name": "ender-1",
            "model": "Ender-3",
            "driver": "octoprint",
            "port": port,
            "api_key": API_KEY,
            "timeout_s": 5.0,
        }
        driver = make_driver(PrinterConfig(**(fields | overrides)))
        assert isinstance(driver, OctoPrintDriver)
        return driver

    with closing_all(make) as tracked:
        yield tracked


# --------------------------------------------------------------------------- driver <-> emulator


def test_connects_uploads_streamed_and_prints_to_finished(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(connected=False, speed=300.0)  # 10 min estimate -> 2 s
    driver = make_octo_driver(emulator.port, serial="VIRTUAL")
    data = write_gcode(tmp_path / "box.gcode", moves=20000)  # ~500 KiB: several read() chunks
    calls: list[tuple[int, int]] = []

    closed = driver.status()
    assert closed.state == PrinterState.OFFLINE and "asked it to connect" in (closed.message or "")
    assert emulator.printer.port == "VIRTUAL"
    assert driver.status().state == PrinterState.BUSY  # "Opening serial connection"
    wait_state(driver, PrinterState.IDLE)

    driver.upload(
        tmp_path / "box.gcode", "parts/box.gcode", start=True, progress=lambda s, t: calls.append((s, t))
    )

    assert emulator.received == [emulator.printer.root / "parts" / "box.gcode"]
    assert emulator.received[0].read_bytes() == data
    assert len(calls) > 1 and calls[-1] == (len(data), len(data))
    printing = driver.status()
    assert printing.state == PrinterState.PRINTING and printing.file == "parts/box.gcode"
    assert printing.progress is not None and 0.0 <= printing.progress < 100.0
    assert printing.remaining_s is not None and 0 <= printing.remaining_s <= 2
    assert printing.temperatures == {"nozzle": 214.7, "bed": 59.7}  # the emulator's defaults

    done = wait_state(driver, PrinterState.FINISHED, timeout=5)
    assert (done.progress, done.file, done.remaining_s) == (100.0, "parts/box.gcode", 0)
    assert emulator.state == "Operational"  # OctoPrint itself has no finished state


def test_pause_resume_cancel(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0, max_print_s=30.0)
    driver = make_octo_driver(emulator.port)
    write_gcode(tmp_path / "long.gcode")
    driver.upload(tmp_path / "long.gcode", "long.gcode", start=True)

    driver.pause()
    pausing = driver.status()
    assert pausing.state == PrinterState.PAUSED and emulator.state == "Pausing"
    driver.resume()  # waits for "Paused": OctoPrint ignores a resume while still pausing
    assert driver.status().state == PrinterState.PRINTING
    driver.pause()
    paused = wait_state(driver, PrinterState.PAUSED)
    time.sleep(0.3)
    assert emulator.state == "Paused" and driver.status().progress == paused.progress  # the clock stops

    driver.resume()
    assert driver.status().state == PrinterState.PRINTING
    wait_until(lambda: (driver.status().progress or 0) > (paused.progress or 0), 5, "progress after resume")

    driver.cancel()
    assert driver.status().state == PrinterState.BUSY  # "Cancelling"
    cancelled = wait_state(driver, PrinterState.FAILED)
    assert (cancelled.message, cancelled.progress) == ("cancelled", None)
    assert emulator.state == "Operational"  # the driver remembers; OctoPrint does not
    with pytest.raises(DriverError, match="cannot cancel the print: Printer is neither printing nor paused"):
        driver.cancel()
    with pytest.raises(DriverError, match="cannot resume"):
        driver.resume()

    driver.start("long.gcode")
    assert driver.status().state == PrinterState.PRINTING


def test_busy_printer_refuses_second_print_and_overwrite(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0)
    driver = make_octo_driver(emulator.port)
    write_gcode(tmp_path / "a.gcode")
    write_gcode(tmp_path / "b.gcode")
    (tmp_path / "c.stl").write_bytes(b"solid x\nendsolid x\n")
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)

    with pytest.raises(DriverError, match="did not start it"):
        driver.upload(tmp_path / "b.gcode", "b.gcode", start=True)
    assert (emulator.printer.root / "b.gcode").exists()  # stored anyway, like OctoPrint
    with pytest.raises(DriverError, match="currently being printed"):
        driver.upload(tmp_path / "b.gcode", "a.gcode", start=False)
    with pytest.raises(DriverError, match="only G-code"):
        driver.upload(tmp_path / "c.stl", "c.stl", start=False)
    with pytest.raises(DriverError, match=r"cannot start 'b\.gcode' now"):
        driver.start("b.gcode")
    with pytest.raises(DriverError, match=r"no file 'nope\.gcode'"):
        driver.start("nope.gcode")
    assert driver.status().file == "a.gcode"


def test_error_state_reads_failed(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0)
    driver = make_octo_driver(emulator.port)
    write_gcode(tmp_path / "a.gcode")
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    emulator.fail("Thermal Runaway")
    failed = driver.status()
    assert failed.state == PrinterState.FAILED
    assert failed.message is not None and "'Error'" in failed.message


def test_wrong_or_missing_api_key(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator()
    write_gcode(tmp_path / "a.gcode")
    wrong = make_octo_driver(emulator.port, api_key="0" * 32)
    with pytest.raises(DriverError, match=r"API key.*Settings > Application Keys"):
        wrong.status()
    with pytest.raises(DriverError, match="API key"):
        wrong.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    assert emulator.received == []
    with pytest.raises(DriverError, match="no OctoPrint API key"):
        make_octo_driver(emulator.port, api_key=None)
    forbidden = httpx.get(f"{emulator.url}/api/job")
    assert forbidden.status_code == 403 and "permission" in forbidden.json()["error"]


def test_unreachable_server_reads_offline_and_comes_back(
    make_emulator: MakeEmulator, make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator()
    driver = make_octo_driver(emulator.port)
    assert driver.status().state == PrinterState.IDLE

    emulator.stop()
    offline = driver.status()
    assert offline.state == PrinterState.OFFLINE and str(emulator.port) in (offline.message or "")
    write_gcode(tmp_path / "a.gcode")
    with pytest.raises(DriverError, match="no answer"):
        driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)
    with pytest.raises(DriverError, match="no answer"):
        driver.pause()

    emulator.start()
    assert driver.status().state == PrinterState.IDLE


# --------------------------------------------------------------------------- real OctoPrint


def _ensure_octoprint_venv() -> Path:
    """A separate venv: OctoPrint pins Click, psutil, flask, tornado... below the main venv's."""
    binary = OCTO_VENV / "bin" / "octoprint"
    if binary.exists():
        return binary
    print(f"\ninstalling {OCTO_VERSION} into {OCTO_VENV} (one-off, ~30 s) ...", file=sys.stderr)
    started = time.monotonic()
    subprocess.run(["python3", "-m", "venv", str(OCTO_VENV)], check=True)
    done = subprocess.run(
        [str(OCTO_VENV / "bin" / "pip"), "install", "-q", OCTO_VERSION], capture_output=True, text=True
    )
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"pip install {OCTO_VERSION} failed:\n{done.stderr[-3000:]}")
    print(f"installed OctoPrint in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return binary


def _write_basedir(binary: Path, base: Path) -> str:
    """config.yaml as in toolchain.md §4, an admin user, and an API key in users.yaml."""
    base.mkdir(parents=True, exist_ok=True)
    disabled = "softwareupdate, pluginmanager, announcements, tracking, errortracking, achievements, "
    disabled += "discovery, backup, firmware_check, pi_support"
    (base / "config.yaml").write_text(
        "server:\n  firstRun: false\n  onlineCheck: {enabled: false}\n  pluginBlacklist: {enabled: false}\n"
        "plugins:\n  virtual_printer: {enabled: true}\n  tracking: {enabled: false}\n"
        f"  _disabled: [{disabled}]\n"
        "serial:\n  autoconnect: false\n"  # the driver connects it, as it would a real printer
    )
    password = secrets.token_urlsafe(12)
    subprocess.run(
        [str(binary), "--basedir", str(base), "user", "add", "admin", "--password", password, "--admin"],
        check=True,
        capture_output=True,
    )
    key = secrets.token_hex(16).upper()
    users = (base / "users.yaml").read_text()
    assert "apikey: null" in users, users
    (base / "users.yaml").write_text(users.replace("apikey: null", f"apikey: {key}", 1))
    return key


@pytest.fixture(scope="session")
def real_octoprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    binary = _ensure_octoprint_venv()
    base = tmp_path_factory.mktemp("octoprint")
    key = _write_basedir(binary, base)
    port = free_port()
    log = (base / "serve.out").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.Popen(
        [str(binary), "serve", "--iknowwhatimdoing", "--host", "127.0.0.1", "--port", str(port),
         "--basedir", str(base)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, (base / "serve.out").read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/version", headers={"X-Api-Key": key}).is_success
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 60, "octoprint serve")
        yield port, key
    finally:
        stop_process(proc, 15, signal.SIGTERM)
        log.close()


@pytest.mark.timeout(120)
def test_real_octoprint_virtual_printer(
    real_octoprint: tuple[int, str], make_octo_driver: MakeDriver, tmp_path: Path
) -> None:
    port, key = real_octoprint
    driver = make_octo_driver(port, api_key=key, serial="VIRTUAL", timeout_s=15.0)
    with pytest.raises(DriverError, match="Application Keys"):
        make_octo_driver(port, api_key="0" * 32).status()

    first = driver.status()
    assert first.state == PrinterState.OFFLINE and "asked it to connect" in (first.message or "")
    wait_state(driver, PrinterState.IDLE, timeout=20)

    data = write_gcode(tmp_path / "tiny.gcode", moves=100, estimate=None)
    calls: list[tuple[int, int]] = []
    driver.upload(
        tmp_path / "tiny.gcode", "farm/tiny.gcode", start=True, progress=lambda s, t: calls.append((s, t))
    )
    assert calls[-1] == (len(data), len(data))
    seen: set[PrinterState] = set()
    progress: list[float] = []

    def finished() -> PrinterStatus | None:
        status = driver.status()
        seen.add(status.state)
        if status.progress is not None:
            progress.append(status.progress)
        return status if status.state == PrinterState.FINISHED else None

    done = wait_until(finished, 30, "the tiny print to finish", interval=0.1)
    assert done.file == "farm/tiny.gcode" and done.progress == 100.0
    assert PrinterState.PRINTING in seen and PrinterState.FAILED not in seen
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress)

    write_gcode(tmp_path / "long.gcode", moves=3000, estimate=None)
    driver.upload(tmp_path / "long.gcode", "farm/long.gcode", start=True)
    printing = wait_state(driver, PrinterState.PRINTING)
    assert printing.file == "farm/long.gcode"
    driver.pause()
    assert wait_state(driver, PrinterState.PAUSED).file == "farm/long.gcode"
    driver.resume()
    wait_state(driver, PrinterState.PRINTING)
    with pytest.raises(DriverError, match="did not start it"):
        driver.upload(tmp_path / "tiny.gcode", "farm/tiny.gcode", start=True)
    driver.cancel()
    cancelled = wait_state(driver, PrinterState.FAILED)
    assert (cancelled.message, cancelled.file, cancelled.progress) == ("cancelled", "farm/long.gcode", None)
    with pytest.raises(DriverError, match="neither printing nor paused"):
        driver.cancel()
