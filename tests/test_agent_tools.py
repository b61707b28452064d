"""`farm agent check` / `farm agent print` against a real PrusaLink emulator on a loopback port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from farm.commands.agent_tools import register
from farm.core.states import PrinterState
from printers.drivers.base import DriverError, PrinterConfig
from printers.emulators.prusalink import PrusaLinkEmulator
from printers.tools import check, print_file, printer_config_from_flags

pytestmark = pytest.mark.timeout(90)  # a hang guard: the tests start `farm` CLI processes

PASSWORD = "tX9mQ2vLpA7c"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[PrusaLinkEmulator]:
    emu = PrusaLinkEmulator(
        password=PASSWORD, storage_dir=tmp_path / "usb", speed=10_000, max_print_s=0.5
    ).start()
    yield emu
    emu.stop()


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def flags(emu: PrusaLinkEmulator, password: str = PASSWORD) -> list[str]:
    return ["--driver", "prusalink", "--host", "127.0.0.1", "--port", str(emu.port), "--password", password]


def write_gcode(path: Path) -> bytes:
    moves = "".join(f"G1 X{i % 180} Y{(i * 7) % 180} E0.05\n" for i in range(5000))
    data = (
        'M862.3 P "MINI" ; printer model check\nM104 S210\nM140 S60\nG28\n'
        + moves
        + "M104 S0\n; estimated printing time (normal mode) = 10m 0s\n"
    ).encode()
    path.write_bytes(data)
    return data


def test_check_shows_idle(cli: typer.Typer, emulator: PrusaLinkEmulator) -> None:
    result = CliRunner().invoke(cli, ["check", *flags(emulator), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["state"] == "idle"
    assert doc["temperatures"]["nozzle"] == pytest.approx(24.8)

    human = CliRunner().invoke(cli, ["check", *flags(emulator), "--name", "mini-1"])
    assert human.exit_code == 0
    assert human.stdout.startswith("mini-1: idle")


def test_print_finishes_and_the_printer_has_the_exact_bytes(
    cli: typer.Typer, emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    data = write_gcode(tmp_path / "part.gcode")
    result = CliRunner().invoke(
        cli, ["print", str(tmp_path / "part.gcode"), *flags(emulator), "--poll", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "finished | part.gcode" in result.stdout
    assert "upload" in result.stderr and "print" in result.stderr  # both progress bars drawn
    assert [p.name for p in emulator.received] == ["part.gcode"]
    assert emulator.received[0].read_bytes() == data


def test_print_file_reports_upload_then_print(emulator: PrusaLinkEmulator, tmp_path: Path) -> None:
    write_gcode(tmp_path / "part.gcode")
    config = PrinterConfig(name="p", model="MINI", driver="prusalink", port=emulator.port, password=PASSWORD)
    seen: list[tuple[str, float | None]] = []
    status = print_file(config, tmp_path / "part.gcode", on_progress=lambda *a: seen.append(a), poll_s=0.05)
    assert status.state == PrinterState.FINISHED
    phases = [phase for phase, _ in seen]
    assert phases[0] == "upload" and seen[phases.index("print") - 1] == ("upload", 100.0)
    assert "print" in phases and phases.index("print") > max(i for i, p in enumerate(phases) if p == "upload")


def test_print_of_a_file_for_another_model_stops_at_attention(
    cli: typer.Typer, emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    gcode = tmp_path / "mk4.gcode"
    gcode.write_bytes(write_gcode(gcode).replace(b'"MINI"', b'"MK4S"'))
    result = CliRunner().invoke(cli, ["print", str(gcode), *flags(emulator), "--poll", "0.05"])
    assert result.exit_code == 1
    assert "attention" in result.stdout and "screen" in result.stdout
    assert emulator.state == "ATTENTION"


def test_stop_returns_the_latest_status_while_printing(emulator: PrusaLinkEmulator, tmp_path: Path) -> None:
    slow = PrusaLinkEmulator(password=PASSWORD, storage_dir=tmp_path / "slow", speed=1.0).start()
    try:
        write_gcode(tmp_path / "part.gcode")
        config = PrinterConfig(name="p", model="MINI", driver="prusalink", port=slow.port, password=PASSWORD)
        stop = threading.Event()
        stop.set()
        status = print_file(config, tmp_path / "part.gcode", on_progress=lambda *_: None, stop=stop)
        assert status.state == PrinterState.PRINTING
        assert status.file == "part.gcode"
    finally:
        slow.stop()


def test_wrong_password_is_an_error_without_traceback(cli: typer.Typer, emulator: PrusaLinkEmulator) -> None:
    result = CliRunner().invoke(cli, ["check", *flags(emulator, password="wrong")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "rejected the password" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_of_an_unreachable_printer_says_offline(cli: typer.Typer, emulator: PrusaLinkEmulator) -> None:
    port = emulator.port
    emulator.stop()
    result = CliRunner().invoke(cli, ["check", *flags(emulator), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "offline"
    assert str(port) in json.loads(result.stdout)["message"]


def test_missing_flags_are_named(cli: typer.Typer, tmp_path: Path) -> None:
    nothing = CliRunner().invoke(cli, ["check"])
    assert nothing.exit_code == 1
    assert "missing --driver" in nothing.stderr

    no_auth = CliRunner().invoke(cli, ["check", "--driver", "prusalink"])
    assert no_auth.exit_code == 1
    assert "--host" in no_auth.stderr and "--password or --api-key" in no_auth.stderr

    gcode = tmp_path / "x.gcode"
    gcode.write_text("G28\n")
    octo = CliRunner().invoke(cli, ["print", str(gcode), "--driver", "octoprint", "--host", "pi.local"])
    assert octo.exit_code == 1
    assert "missing --api-key" in octo.stderr


def test_config_file_printer_table_without_coordinator(emulator: PrusaLinkEmulator, tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[printer]\nname = "mini-7"\nmodel = "MINI"\ndriver = "prusalink"\nport = {emulator.port}\n'
        f'password = "{PASSWORD}"\n'
    )
    config = printer_config_from_flags(toml, None, None, None, None, None, None, None, None, None, None)
    assert (config.name, config.model, config.port) == ("mini-7", "MINI", emulator.port)
    assert check(config).state == PrinterState.IDLE

    overridden = printer_config_from_flags(toml, None, None, None, None, None, "bad", None, None, None, None)
    with pytest.raises(DriverError, match="rejected the password"):
        check(overridden)

    toml.write_text('[printer]\nname = "mini-7"\ndriver = "prusalink"\n')
    with pytest.raises(ValueError, match=r"\[printer\] needs password or api_key"):
        printer_config_from_flags(toml, None, None, None, None, None, None, None, None, None, None)
    with pytest.raises(ValueError, match="has no \\[printer\\] table"):
        toml.write_text('[coordinator]\ntoken = "t"\n')
        printer_config_from_flags(toml, None, None, None, None, None, None, None, None, None, None)
