"""Every fault switch, on every protocol: the driver must end in the right normalised state.

Each emulator offers the same switches (printers/emulators/common.py `FaultSwitches`); each test
runs once per protocol against the real driver over real sockets. The Bambu-only switch (firmware
that refuses unsigned commands) is in tests/test_bambu.py::test_developer_mode_off_refuses_commands.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.core.states import PrinterState
from printers.drivers.base import PAUSED_AT_PRINTER, DriverError
from printers.emulators.common import LOCAL_PRINT_NAME, FaultSwitches
from tests import printer_fixtures
from tests.printer_fixtures import PROTOCOLS, Rig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=PROTOCOLS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with printer_fixtures.rig(request.param, tmp_path) as setup:
        assert isinstance(setup.emulator, FaultSwitches)
        yield setup


def test_offline_mid_print_and_back(rig: Rig, tmp_path: Path) -> None:
    rig.upload(rig.job_file(tmp_path))
    assert rig.state_is(PrinterState.PRINTING).file == rig.remote

    rig.emulator.go_offline()
    offline = rig.state_is(PrinterState.OFFLINE)
    assert offline.message and ("reach" in offline.message or "lost" in offline.message), offline.message
    time.sleep(1.0)  # the print goes on without the network

    rig.emulator.come_back()
    back = rig.state_is(PrinterState.PRINTING, PrinterState.FINISHED)
    assert back.file == rig.remote  # still our job: the agent can pick it up again
    assert back.state == PrinterState.FINISHED or (back.progress or 0) > 0


def test_aborted_upload_leaves_nothing_and_the_printer_usable(rig: Rig, tmp_path: Path) -> None:
    path = rig.job_file(tmp_path)
    assert path.stat().st_size > 256 * 1024
    rig.emulator.abort_next_upload(after_bytes=128 * 1024)
    with pytest.raises(DriverError) as failure:
        rig.upload(path)
    message = str(failure.value)
    assert rig.remote in message and "broke off" in message, message  # not "no answer": it did answer
    assert rig.emulator.received == []  # nothing half-written was kept
    assert rig.driver.status().state == PrinterState.IDLE  # and nothing started

    rig.upload(path)  # the next attempt goes through
    assert rig.state_is(PrinterState.PRINTING).file == rig.remote
    assert rig.emulator.received[-1].read_bytes() == path.read_bytes()


def test_print_fails_with_an_error(rig: Rig, tmp_path: Path) -> None:
    rig.upload(rig.job_file(tmp_path))
    rig.state_is(PrinterState.PRINTING)
    rig.emulator.fail_print("Thermal runaway on the hotend", code=0x0300_8014)

    failed = rig.state_is(PrinterState.FAILED)
    assert failed.message, "a failed print must say why"
    if rig.protocol == "bambu":  # the MQTT report carries only the code
        assert failed.error_code == "0300_8014" and "0300_8014" in failed.message
    else:  # the HTTP protocols carry the firmware's text
        assert "Thermal runaway on the hotend" in failed.message
    assert failed.message != "cancelled"


def test_busy_with_a_print_started_at_the_printer(rig: Rig, tmp_path: Path) -> None:
    local = LOCAL_PRINT_NAME.replace(".gcode", ".gcode.3mf") if rig.protocol == "bambu" else LOCAL_PRINT_NAME
    rig.emulator.start_local_print(local, seconds=30.0)

    busy = rig.state_is(PrinterState.PRINTING)
    assert busy.file == local and busy.file != rig.remote  # the agent sees it is not its job
    with pytest.raises(DriverError) as refused:
        rig.upload(rig.job_file(tmp_path))
    message = str(refused.value).lower()
    assert any(word in message for word in ("busy", "printing", "running", "not ready", "now")), message
    still = rig.driver.status()
    assert (still.state, still.file) == (PrinterState.PRINTING, local)  # someone's print was not touched


def test_attention_waits_for_a_person(rig: Rig, tmp_path: Path) -> None:
    rig.upload(rig.job_file(tmp_path))
    rig.state_is(PrinterState.PRINTING)
    rig.driver.pause()  # a pause the farm asked for is just PAUSED
    assert rig.state_is(PrinterState.PAUSED).state == PrinterState.PAUSED
    rig.driver.resume()
    rig.state_is(PrinterState.PRINTING)

    rig.emulator.need_attention()
    waiting = rig.state_is(PrinterState.ATTENTION)
    assert waiting.file == rig.remote
    assert waiting.message
    if rig.protocol != "octoprint":  # OctoPrint cannot say why the firmware paused; the others can
        assert waiting.message != PAUSED_AT_PRINTER, waiting.message
    frozen = waiting.progress
    time.sleep(0.6)
    assert rig.driver.status().progress == frozen  # nothing prints while it waits

    rig.emulator.attend()
    assert rig.state_is(PrinterState.PRINTING).file == rig.remote
