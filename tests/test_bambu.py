"""Bambu LAN mode over real TLS sockets: our driver against our emulator, and bambulabs-api
(a client written by others, tested by its users against real printers) against the emulator
as a fidelity check of the MQTT broker and the implicit FTPS server."""

from __future__ import annotations

import ftplib
import io
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from bambulabs_api import GcodeState, PrinterFTPClient, PrinterMQTTClient
from paho.mqtt.enums import CallbackAPIVersion

from farm.core.states import PrinterState
from printers.drivers import DRIVERS
from printers.drivers.bambu import BambuDriver, deep_merge, error_code
from printers.drivers.bambu_tls import ImplicitFTPS
from printers.drivers.base import DriverError, PrinterConfig
from printers.emulators.bambu import BambuEmulator
from tests.printer_fixtures import (
    bambu_package,
    closing_all,
    driver_config,
    emulators,
    layered_gcode,
    wait_for,
)

pytestmark = pytest.mark.timeout(40)

SERIAL = "01S00A9C0300123"
CODE = "87654321"
MakeEmulator = Callable[..., BambuEmulator]
MakeDriver = Callable[..., BambuDriver]


def make_package(
    tmp_path: Path,
    name: str = "cube.gcode.3mf",
    *,
    estimate_s: int = 600,
    markers: bool = True,
    material: str | None = None,
) -> Path:
    gcode = tmp_path / "plain.gcode"
    gcode.write_text(layered_gcode(20, markers=markers))
    return bambu_package(gcode, tmp_path / name, estimate_s=estimate_s, material=material)


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[MakeEmulator]:
    with emulators(BambuEmulator, tmp_path, serial=SERIAL, access_code=CODE) as make:
        yield make


@pytest.fixture
def make_driver() -> Iterator[MakeDriver]:
    def make(emulator: BambuEmulator, **kwargs: Any) -> BambuDriver:
        fields = {"name": "x1c-1", "access_code": CODE, "serial": SERIAL, "timeout_s": 3.0}
        return BambuDriver(driver_config("bambu", emulator, **(fields | kwargs.pop("fields", {}))), **kwargs)

    with closing_all(make) as tracked:
        yield tracked


# --------------------------------------------------------------------------- driver


def test_upload_start_print_to_finish(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=300.0)  # a 600 s estimate prints in 2 s
    driver = make_driver(emulator)
    assert DRIVERS["bambu"] == "printers.drivers.bambu:BambuDriver"
    idle = driver.status()
    assert (idle.state, idle.progress, idle.file) == (PrinterState.IDLE, None, None)

    package = make_package(tmp_path)
    calls: list[tuple[int, int]] = []
    driver.upload(package, "cube.gcode.3mf", start=True, progress=lambda s, t: calls.append((s, t)))
    assert emulator.received[-1].read_bytes() == package.read_bytes()
    assert calls[-1] == (package.stat().st_size, package.stat().st_size)

    printing = driver.status()
    assert printing.state == PrinterState.PRINTING
    assert printing.file == "cube.gcode.3mf"
    assert printing.remaining_s is not None and 0 < printing.remaining_s <= 600
    running = wait_for(lambda: (s := driver.status()).progress and s, what="progress")
    assert running.temperatures["nozzle"] > 25.0 and running.layer is not None

    finished = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    assert (finished.progress, finished.remaining_s, finished.layer) == (100.0, 0, 20)
    assert finished.error_code is None

    driver.start("cube.gcode.3mf")  # FINISH is a state a new job may start from
    assert driver.status().state == PrinterState.PRINTING
    with pytest.raises(
        DriverError, match=r"cannot start 'cube\.gcode\.3mf' now: the printer is busy \((prepare|running)\)"
    ):
        driver.start("cube.gcode.3mf")


def test_the_pause_between_rounds_ends_at_the_finish_push(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    """Bambu gives the time left in whole minutes: the agent learns of a print's end from the
    FINISH push, which ends its pause between rounds, not from a guess at the time left."""
    emulator = make_emulator(speed=300.0)  # a 600 s estimate prints in about 2 s
    driver = make_driver(emulator)
    driver.upload(make_package(tmp_path), "cube.gcode.3mf", start=True)
    assert driver.status().state == PrinterState.PRINTING
    stop = threading.Event()
    begun = time.monotonic()
    driver.pause_until_change(stop, 30.0)  # PREPARE -> RUNNING, perhaps
    while driver.status().state == PrinterState.PRINTING and time.monotonic() - begun < 30:
        driver.pause_until_change(stop, 30.0)
    assert driver.status().state == PrinterState.FINISHED
    assert time.monotonic() - begun < 10  # woken by the pushes, not by the 30 s timeouts

    # With nothing changing, the pause lasts its time, and a stop ends it within a slice.
    begun = time.monotonic()
    driver.pause_until_change(stop, 0.6)
    assert 0.55 <= time.monotonic() - begun < 3
    threading.Timer(0.2, stop.set).start()
    begun = time.monotonic()
    driver.pause_until_change(stop, 30.0)
    assert time.monotonic() - begun < 2


def test_pause_resume_cancel(make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path) -> None:
    emulator = make_emulator(speed=60.0, max_print_s=20.0, model="P1S")
    driver = make_driver(emulator)
    driver.upload(make_package(tmp_path), "job.gcode.3mf", start=True)
    with pytest.raises(DriverError, match="cannot resume the print: the printer is"):
        driver.resume()

    driver.pause()
    paused = driver.status()
    assert paused.state == PrinterState.PAUSED and emulator.state == "PAUSE"
    time.sleep(0.6)
    assert driver.status().progress == paused.progress  # the clock stops while paused

    driver.resume()
    assert driver.status().state == PrinterState.PRINTING
    driver.cancel()
    cancelled = driver.status()
    assert (cancelled.state, cancelled.message, cancelled.error_code) == (
        PrinterState.FAILED,
        "cancelled",
        None,
    )
    with pytest.raises(DriverError, match="cannot cancel the print: the printer is failed"):
        driver.cancel()
    driver.start("job.gcode.3mf")  # FAILED is a state a new job may start from
    assert emulator.state in ("PREPARE", "RUNNING")


def test_developer_mode_off_refuses_commands(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(developer_mode=False)
    driver = make_driver(emulator)
    # reads still work without Developer Mode (the first connection may need a retry on a busy machine)
    assert wait_for(lambda: driver.status().state == PrinterState.IDLE, what="connect")
    with pytest.raises(DriverError, match=r"84033543.*enable LAN Only mode and then Developer Mode"):
        driver.upload(make_package(tmp_path), "a.gcode.3mf", start=True)
    assert emulator.received[-1].name == "a.gcode.3mf"  # FTPS is not gated; only commands are
    assert emulator.state == "IDLE"


def test_delta_reports_are_merged(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(model="A1", speed=300.0)
    assert emulator.delta_reports
    driver = make_driver(emulator)
    seen: list[dict[str, Any]] = []
    watcher = _raw_client(emulator, seen)
    try:
        driver.upload(make_package(tmp_path), "d.gcode.3mf", start=True)
        wait_for(lambda: driver.status().state == PrinterState.FINISHED, what="FINISH")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    pushes = [m["print"] for m in seen if m.get("print", {}).get("command") == "push_status"]
    partial = [p for p in pushes if "nozzle_target_temper" not in p]
    assert partial, "the A1 emulator sent no partial report"
    assert all("gcode_state" not in p for p in partial[-3:] if p.get("mc_percent") is None)
    final = driver.status()
    # the last delta holds no temperatures or file, yet the merged state still has them
    assert final.file == "d.gcode.3mf" and "bed" in final.temperatures and final.layer == 20


def test_offline_and_wrong_access_code(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator()
    driver = make_driver(emulator)
    assert wait_for(lambda: driver.status().state == PrinterState.IDLE, what="connect")
    emulator.stop()
    offline = wait_for(lambda: (s := driver.status()).state == PrinterState.OFFLINE and s, what="OFFLINE")
    assert "cannot reach the printer's MQTT" in (offline.message or "")
    with pytest.raises(DriverError, match="cannot pause"):
        driver.pause()
    with pytest.raises(DriverError, match="no FTPS answer"):
        driver.upload(make_package(tmp_path), "x.gcode.3mf", start=False)
    emulator.start()  # same ports: paho reconnects by itself and re-reads the full state
    assert wait_for(lambda: driver.status().state == PrinterState.IDLE, what="reconnect")

    wrong = make_driver(emulator, fields={"access_code": "00000000"}).status()
    assert wrong.state == PrinterState.OFFLINE and "refused the access code" in (wrong.message or "")
    with pytest.raises(DriverError, match="rejected the access code for FTPS"):
        make_driver(emulator, fields={"access_code": "00000000"}).upload(
            make_package(tmp_path), "x.gcode.3mf", start=False
        )


def test_only_sliced_3mf_packages(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    driver = make_driver(make_emulator())
    (tmp_path / "plain.gcode").write_text("G28\n")
    with pytest.raises(DriverError, match=r"only sliced \.gcode\.3mf"):
        driver.upload(tmp_path / "plain.gcode", "plain.gcode", start=True)
    with pytest.raises(DriverError, match=r"only sliced \.gcode\.3mf"):
        driver.upload(tmp_path / "plain.gcode", "plain.gcode.3mf", start=True)
    with pytest.raises(DriverError, match="needs `serial` and `access_code`"):
        BambuDriver(PrinterConfig(name="p", model="P1S", driver="bambu"))


def test_certificate_pinning(make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path) -> None:
    emulator = make_emulator()
    assert emulator.cert_sha256 is not None
    pinned = make_driver(emulator, cert_sha256=emulator.cert_sha256.upper())
    assert wait_for(lambda: pinned.status().state == PrinterState.IDLE, what="connect")
    pinned.upload(make_package(tmp_path), "p.gcode.3mf", start=False)

    wrong = make_driver(emulator, cert_sha256="00" * 32)
    status = wrong.status()
    assert status.state == PrinterState.OFFLINE and "not the pinned" in (status.message or "")
    with pytest.raises(DriverError, match="not the pinned"):
        wrong.upload(make_package(tmp_path), "p.gcode.3mf", start=False)


def test_helpers() -> None:
    assert error_code(117473286) == "0700_8006"
    state: dict[str, Any] = {"a": 1, "ams": {"tray_now": "1", "ams": [1]}, "hms": [1]}
    deep_merge(state, {"ams": {"ams": [2]}, "hms": [], "b": 2})
    assert state == {"a": 1, "ams": {"tray_now": "1", "ams": [2]}, "hms": [], "b": 2}


# --------------------------------------------------------------------------- protocol details


def _raw_client(emulator: BambuEmulator, sink: list[dict[str, Any]], password: str = CODE) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set("bblp", password)
    client.tls_set(cert_reqs=ssl.CERT_NONE)
    client.tls_insecure_set(True)
    client.on_message = lambda c, u, m: sink.append(json.loads(m.payload))
    client.connect("127.0.0.1", emulator.mqtt_port)
    client.subscribe(f"device/{SERIAL}/report", qos=1)
    client.loop_start()
    return client


def test_mqtt_broker_acks_and_refusals(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(developer_mode=False)
    seen: list[dict[str, Any]] = []
    client = _raw_client(emulator, seen)
    try:
        request = f"device/{SERIAL}/request"
        client.publish(request, json.dumps({"pushing": {"sequence_id": "0", "command": "pushall"}}), qos=1)
        client.publish(
            request, json.dumps({"print": {"sequence_id": "77", "command": "pause", "param": ""}}), qos=1
        )
        client.publish(request, json.dumps({"info": {"sequence_id": "5", "command": "get_version"}}), qos=0)
        wait_for(lambda: len(seen) >= 3, what="three reports")
        full = next(m["print"] for m in seen if m.get("print", {}).get("command") == "push_status")
        assert full["gcode_state"] == "IDLE" and full["fun"] == "3EC1AFFF9CFF" and full["msg"] == 0
        ack = next(m["print"] for m in seen if m.get("print", {}).get("sequence_id") == "77")
        assert ack == {
            "command": "pause",
            "sequence_id": "77",
            "param": "",
            "result": "failed",
            "reason": "mqtt message verify failed",
            "err_code": 84033543,
        }
        info = next(m["info"] for m in seen if "info" in m)
        assert info["module"][0]["project_name"] == "BL-P001" and info["sequence_id"] == "5"
    finally:
        client.loop_stop()
        client.disconnect()

    refused = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    refused.username_pw_set("bblp", "wrong")
    refused.tls_set(cert_reqs=ssl.CERT_NONE)
    refused.tls_insecure_set(True)
    codes: list[int] = []
    refused.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    refused.connect("127.0.0.1", emulator.mqtt_port)
    refused.loop(timeout=2.0)
    assert codes == [135]  # paho's v5 name for 3.1.1 CONNACK 5 "not authorized"


def test_ftps_requires_session_reuse_and_speaks_vsftpd(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()

    class NoReuse(ImplicitFTPS):
        def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[Any, int | None]:
            conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
            return self.context.wrap_socket(conn, server_hostname=self.host), size

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = NoReuse(context=ctx, timeout=5)
    assert ftp.connect("127.0.0.1", emulator.ftps_port) == "220 (vsFTPd 3.0.3)"
    with pytest.raises(ftplib.error_perm, match="530"):
        ftp.login("bblp", "wrong")
    assert ftp.login("bblp", CODE).startswith("230")
    assert ftp.prot_p().startswith("200 PROT now Private")
    ftp.transfercmd("STOR x.gcode.3mf").close()  # the handshake works; then the printer hangs up
    with pytest.raises(ftplib.error_perm, match="522 SSL connection failed: session reuse required"):
        ftp.voidresp()
    with pytest.raises(ftplib.error_perm, match="550"):
        ftp.size("x.gcode.3mf")
    ftp.quit()

    good = ImplicitFTPS(context=ctx, timeout=5)
    good.connect("127.0.0.1", emulator.ftps_port)
    good.login("bblp", CODE)
    good.prot_p()
    assert good.storbinary("STOR y.gcode.3mf", io.BytesIO(b"abc")).startswith("226")
    assert good.size("y.gcode.3mf") == 3
    assert good.nlst() == ["y.gcode.3mf"]
    good.quit()


# --------------------------------------------------------------------------- bambulabs-api


def test_bambulabs_api_uploads_and_tracks_a_print(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    emulator = make_emulator(speed=300.0, model="P1S")
    package = make_package(tmp_path, "api.gcode.3mf")

    # PrinterFTPClient takes the port as an argument (Printer() hard-codes 990)
    ftp = PrinterFTPClient("127.0.0.1", CODE, port=emulator.ftps_port)
    with package.open("rb") as f:
        assert ftp.upload_file(f, "api.gcode.3mf").startswith("226")
    assert emulator.received[-1].read_bytes() == package.read_bytes()

    client = PrinterMQTTClient("127.0.0.1", CODE, SERIAL, port=emulator.mqtt_port)
    client.connect()
    client.start()
    try:
        wait_for(client.ready, what="bambulabs-api to receive a report")
        assert client.get_printer_state() == GcodeState.IDLE
        assert client.start_print_3mf("api.gcode.3mf", 1, use_ams=False)
        wait_for(lambda: client.get_printer_state() == GcodeState.RUNNING, what="RUNNING")
        assert 0 <= int(client.get_last_print_percentage() or 0) <= 100
        wait_for(lambda: client.get_printer_state() == GcodeState.FINISH, what="FINISH")
        assert client.get_last_print_percentage() == 100
        assert client.current_layer_num() == 20
        assert client.get_file_name() == "api.gcode.3mf"
        assert (client.vt_tray().tray_type, client.vt_tray().tray_color) == ("PLA", "FFFFFFFF")
    finally:
        client.stop()
        client._client.disconnect()


def test_loaded_filament_comes_from_the_ams_or_the_spool(
    make_emulator: MakeEmulator, make_driver: MakeDriver
) -> None:
    spool = make_driver(make_emulator(spool=("PETG", "0A2989FF")))
    status = wait_for(lambda: (s := spool.status()).state == PrinterState.IDLE and s, what="connect")
    assert (status.material, status.color) == ("PETG", "blue")
    ams = make_emulator(ams=[("PLA", "C12E1FFF"), ("ABS", "000000FF")], model="P1S")
    fed = make_driver(ams)
    status = wait_for(lambda: (s := fed.status()).state == PrinterState.IDLE and s, what="connect")
    assert (status.material, status.color) == ("PLA", "red")  # tray_now 0 feeds, not the spool

    client = PrinterMQTTClient("127.0.0.1", CODE, SERIAL, port=ams.mqtt_port)  # software no one here wrote
    client.connect()
    client.start()
    try:
        wait_for(client.ready, what="bambulabs-api to receive a report")
        client.process_ams()
        trays = client.ams_hub[0].filament_trays
        assert (trays[0].tray_type, trays[1].tray_type, trays[1].tray_color) == ("PLA", "ABS", "000000FF")
    finally:
        client.stop()
        client._client.disconnect()
