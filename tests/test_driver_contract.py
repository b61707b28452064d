"""The driver contract: what printers/drivers/base.py `Driver` promises, checked once for every
protocol in `printers.drivers.DRIVERS`, each against its emulator over real loopback sockets.

The interface has no file listing or deletion, so neither is part of the contract. Where a
protocol truly cannot do something the case is skipped with the reason (see CANNOT), never passed.
Protocol details (messages, quirks, fidelity against other clients) stay in the per-protocol tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.core.states import PrinterState
from printers.drivers import DRIVERS, make_driver
from printers.drivers.base import Driver, DriverError
from tests import printer_fixtures
from tests.conftest import free_port
from tests.printer_fixtures import PROTOCOLS, Rig, driver_config, wait_for, wait_state

pytestmark = pytest.mark.timeout(90)

FAST = 120.0  # emulator speed: the 600 s estimate prints in 5 s
SLOW = 20.0  # 30 s: time enough to pause, look and cancel

# (protocol, case) -> why the protocol cannot do it. Empty today: every protocol does every case.
CANNOT: dict[tuple[str, str], str] = {}


def skip_if_cannot(protocol: str, case: str) -> None:
    if (why := CANNOT.get((protocol, case))) is not None:
        pytest.skip(f"{protocol} cannot {case}: {why}")


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fast(protocol: str, tmp_path: Path) -> Iterator[Rig]:
    with printer_fixtures.rig(protocol, tmp_path, speed=FAST) as setup:
        yield setup


@pytest.fixture
def slow(protocol: str, tmp_path: Path) -> Iterator[Rig]:
    with printer_fixtures.rig(protocol, tmp_path, speed=SLOW) as setup:
        yield setup


def stored(rig: Rig) -> list[str]:
    """The names of the files the emulator's storage received, in order."""
    return [path.name for path in rig.emulator.received]


def test_every_driver_is_in_the_contract() -> None:
    assert set(PROTOCOLS) == set(DRIVERS), "a new protocol needs its emulator in tests/printer_fixtures.py"


def test_status_when_idle(fast: Rig) -> None:
    idle = fast.driver.status()
    assert idle.state == PrinterState.IDLE
    assert idle.progress in (None, 0.0)
    assert idle.file is None  # nothing printed yet
    assert idle.error_code is None
    assert idle.temperatures and all(isinstance(t, float) for t in idle.temperatures.values())
    assert fast.emulator.received == []
    for command in (fast.driver.pause, fast.driver.resume, fast.driver.cancel):
        with pytest.raises(DriverError):
            command()  # nothing to pause, resume or cancel
    assert fast.driver.status().state == PrinterState.IDLE


def test_upload_streams_the_file_under_the_farm_name_without_starting(fast: Rig, tmp_path: Path) -> None:
    path = fast.job_file(tmp_path)
    calls: list[tuple[int, int]] = []

    fast.driver.upload(path, fast.remote, start=False, progress=lambda s, t: calls.append((s, t)))

    assert stored(fast) == [fast.remote]
    assert fast.emulator.received[0].read_bytes() == path.read_bytes()
    size = path.stat().st_size
    assert calls and calls[-1] == (size, size)
    assert all(total == size for _, total in calls)
    sent = [s for s, _ in calls]
    assert sent == sorted(sent), "upload progress went backwards"
    assert fast.driver.status().state == PrinterState.IDLE  # start=False: nothing started

    fast.driver.start(fast.remote)
    printing = wait_state(fast.driver, PrinterState.PRINTING)
    assert printing.file == fast.remote


def test_upload_and_start_prints_with_rising_progress_to_finished(fast: Rig, tmp_path: Path) -> None:
    fast.upload(fast.job_file(tmp_path), start=True)
    first = wait_state(fast.driver, PrinterState.PRINTING)
    assert first.file == fast.remote

    seen: list[float] = []
    while (status := fast.driver.status()).state == PrinterState.PRINTING:
        assert status.file == fast.remote
        if status.progress is not None:
            assert 0.0 <= status.progress <= 100.0
            seen.append(status.progress)
        assert len(seen) < 2000, "the print never finished"
        time.sleep(0.1)
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert len(set(seen)) >= 2 and seen[-1] > seen[0], f"progress did not rise: {seen}"

    done = wait_state(fast.driver, PrinterState.FINISHED)
    assert (done.file, done.progress) == (fast.remote, 100.0)
    assert done.remaining_s in (None, 0)
    assert done.error_code is None


def test_pause_resume_cancel(slow: Rig, tmp_path: Path) -> None:
    driver = slow.driver
    slow.upload(slow.job_file(tmp_path), start=True)
    wait_state(driver, PrinterState.PRINTING)
    with pytest.raises(DriverError):
        driver.resume()  # nothing to resume

    driver.pause()
    paused = wait_state(driver, PrinterState.PAUSED)  # asked for by the farm: not ATTENTION
    assert paused.file == slow.remote
    time.sleep(0.6)
    assert driver.status().progress == paused.progress, "the print went on while paused"

    driver.resume()
    resumed = wait_state(driver, PrinterState.PRINTING)
    assert resumed.file == slow.remote
    wait_for(lambda: (driver.status().progress or 0) > (paused.progress or 0), "progress after resume")

    driver.cancel()
    cancelled = wait_state(driver, PrinterState.FAILED)
    assert cancelled.message, "a stopped print must say why"
    with pytest.raises(DriverError):
        driver.cancel()  # nothing left to cancel
    with pytest.raises(DriverError):
        driver.resume()

    driver.start(slow.remote)  # the file stays on the printer; FAILED is a state a job may start from
    assert wait_state(driver, PrinterState.PRINTING).file == slow.remote


def test_refused_uploads_raise_and_leave_the_running_print_alone(slow: Rig, tmp_path: Path) -> None:
    path = slow.job_file(tmp_path)
    for unsafe in ("../escape", "a/../../escape", "bad\\name", "new\nline"):
        with pytest.raises(DriverError):
            slow.driver.upload(path, slow.named(unsafe), start=False)
    assert slow.emulator.received == []

    slow.upload(path, start=True)
    wait_state(slow.driver, PrinterState.PRINTING)
    other = slow.named("farm-job-8")
    with pytest.raises(DriverError):
        slow.driver.upload(path, other, start=True)  # busy: a second print cannot start
    with pytest.raises(DriverError):
        slow.driver.upload(path, slow.remote, start=False)  # the file being printed cannot be replaced
    with pytest.raises(DriverError):
        slow.driver.start(other)
    still = slow.driver.status()
    assert (still.state, still.file) == (PrinterState.PRINTING, slow.remote)


def test_starting_a_file_the_printer_lacks_raises(fast: Rig) -> None:
    skip_if_cannot(fast.protocol, "refuse to start a missing file")
    missing = fast.named("farm-job-404")
    with pytest.raises(DriverError):
        fast.driver.start(missing)
    assert wait_state(fast.driver, PrinterState.IDLE, PrinterState.FAILED).file != missing


def unreachable_driver(protocol: str, rig: Rig) -> Driver:
    """A driver for `protocol` pointed at loopback ports where nothing listens."""
    ports = {"port": free_port()} | ({"ftps_port": free_port()} if protocol == "bambu" else {})
    return make_driver(driver_config(protocol, rig.emulator, timeout_s=2.0, **ports))


def test_an_unreachable_printer_reads_offline_and_refuses_commands(fast: Rig, tmp_path: Path) -> None:
    driver = unreachable_driver(fast.protocol, fast)
    try:
        offline = driver.status()  # OFFLINE, not an exception
        assert offline.state == PrinterState.OFFLINE
        assert offline.message, "OFFLINE must say why"
        path = fast.job_file(tmp_path)
        for command in (
            lambda: driver.upload(path, fast.remote, start=True),
            lambda: driver.upload(path, fast.remote, start=False),
            lambda: driver.start(fast.remote),
            driver.pause,
            driver.resume,
            driver.cancel,
        ):
            with pytest.raises(DriverError):
                command()
    finally:
        driver.close()
    assert fast.emulator.received == []  # the real printer was never touched


def test_a_printer_that_went_away_reads_offline_and_comes_back(fast: Rig) -> None:
    fast.emulator.go_offline()
    offline = wait_state(fast.driver, PrinterState.OFFLINE)
    assert offline.message
    with pytest.raises(DriverError):
        fast.driver.pause()
    fast.emulator.come_back()
    wait_state(fast.driver, PrinterState.IDLE, timeout=20.0)


WRONG = {
    "prusalink": {"password": "not-it"},
    "octoprint": {"api_key": "0" * 32},
    "moonraker": {"api_key": "wrong"},
    "bambu": {"access_code": "00000000"},
}


def test_wrong_credentials_are_refused_with_a_reason(fast: Rig, tmp_path: Path) -> None:
    driver = make_driver(driver_config(fast.protocol, fast.emulator, **WRONG[fast.protocol]))
    try:
        # HTTP printers answer, so the driver raises; Bambu's broker refuses the MQTT session, which
        # reads as OFFLINE with the reason. Either way the operator is told, and it is never IDLE.
        try:
            status = driver.status()
        except DriverError as exc:
            assert str(exc)
        else:
            assert status.state == PrinterState.OFFLINE and status.message
            assert "access code" in status.message
        with pytest.raises(DriverError):
            driver.upload(fast.job_file(tmp_path), fast.remote, start=True)
        with pytest.raises(DriverError):
            driver.start(fast.remote)
    finally:
        driver.close()
    assert fast.emulator.received == []
    assert fast.driver.status().state == PrinterState.IDLE  # the right credentials still work


MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8"}


def test_snapshot_is_an_image_of_the_kind_it_says(fast: Rig) -> None:
    skip_if_cannot(fast.protocol, "take a snapshot")  # the interface's None: no camera
    shot = fast.driver.snapshot()
    assert shot is not None, "every emulator has a camera"
    image, kind = shot
    assert kind in MAGIC and image.startswith(MAGIC[kind]), (kind, image[:8])
