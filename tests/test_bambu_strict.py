"""The Bambu emulator as strict as the printers, and the driver surviving it: a busy `project_file`
(the A1 mini cancels its print), an upload over the file being printed, a P1 that goes silent
over an open MQTT session, packages the firmware cannot parse, and AMS tray mapping."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import ssl
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bambulabs_api import GcodeState, PrinterFTPClient, PrinterMQTTClient

from farm.core.states import PrinterState
from printers.drivers.bambu import error_code
from printers.drivers.bambu_tls import ImplicitFTPS
from printers.drivers.base import DriverError
from printers.emulators.bambu import BambuEmulator
from tests import test_bambu
from tests.printer_fixtures import wait_for
from tests.test_bambu import CODE, SERIAL, MakeDriver, MakeEmulator, _raw_client, make_package

pytestmark = pytest.mark.timeout(60)
make_emulator = test_bambu.make_emulator  # the same fixtures
make_driver = test_bambu.make_driver


def project_file(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "print": {
            "sequence_id": str(int(time.time() * 1000)),
            "command": "project_file",
            "param": "Metadata/plate_1.gcode",
            "url": f"ftp:///{name}",
            "file": name,
            "md5": "",
            "subtask_name": name.removesuffix(".gcode.3mf"),
            "use_ams": False,
            "ams_mapping": [],
            **extra,
        }
    }


def ftps_put(emulator: BambuEmulator, name: str, data: bytes) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = ImplicitFTPS(context=ctx, timeout=5)
    ftp.connect("127.0.0.1", emulator.ftps_port)
    ftp.login("bblp", CODE)
    ftp.prot_p()
    try:
        return ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    finally:
        ftp.quit()


def ack_for(seen: list[dict[str, Any]], seq: str) -> dict[str, Any] | None:
    return next((m["print"] for m in seen if m.get("print", {}).get("sequence_id") == seq), None)


# --------------------------------------------------------------------------- busy printers


@pytest.mark.parametrize(("model", "survives"), [("A1 mini", False), ("P1S", True), ("X1C", True)])
def test_project_file_while_busy(
    make_emulator: MakeEmulator, tmp_path: Path, model: str, survives: bool
) -> None:
    """bambuddy #2598: the A1 mini drops its running print; the others refuse with 0500_4004."""
    emulator = make_emulator(model=model, speed=1.0, max_print_s=30.0)
    for name in ("a.gcode.3mf", "b.gcode.3mf"):
        ftps_put(emulator, name, make_package(tmp_path, name).read_bytes())
    seen: list[dict[str, Any]] = []
    client = _raw_client(emulator, seen)
    try:
        request = f"device/{SERIAL}/request"
        client.publish(request, json.dumps(project_file("a.gcode.3mf")), qos=1)
        wait_for(lambda: emulator.state == "RUNNING", what="RUNNING")
        second = project_file("b.gcode.3mf")
        client.publish(request, json.dumps(second), qos=1)
        ack = wait_for(lambda: ack_for(seen, second["print"]["sequence_id"]), what="the ack")
    finally:
        client.loop_stop()
        client.disconnect()
    assert (ack["result"], ack["err_code"]) == ("failed", 0x05004004)
    assert emulator.state == ("RUNNING" if survives else "FAILED")
    assert emulator.printer.report()["subtask_name"] == "a"


def test_driver_never_sends_project_file_to_a_busy_printer(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(model="A1 mini", speed=1.0, max_print_s=30.0)
    driver = make_driver(emulator)
    driver.upload(make_package(tmp_path, "job1-a.gcode.3mf"), "job1-a.gcode.3mf", start=True)
    wait_for(lambda: emulator.state == "RUNNING", what="RUNNING")
    with pytest.raises(DriverError, match=r"cannot start 'job2-b\.gcode\.3mf' now: the printer is busy"):
        driver.upload(make_package(tmp_path, "job2-b.gcode.3mf"), "job2-b.gcode.3mf", start=True)
    with pytest.raises(DriverError, match="busy"):
        driver.start("job1-a.gcode.3mf")
    assert len(emulator.printer.project_files) == 1  # the A1 mini never saw a second one
    assert [p.name for p in emulator.received] == ["job1-a.gcode.3mf"]  # refused before uploading
    assert emulator.state == "RUNNING" and driver.status().state == PrinterState.PRINTING


def test_uploading_over_the_printing_file(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    """The printer lets an upload replace the file it prints, and the print dies; the driver
    refuses to do that, and the farm's names differ per job and attempt (`job<N>-`, `-a<k>-`)."""
    emulator = make_emulator(model="P1S", speed=1.0, max_print_s=30.0)
    driver = make_driver(emulator)
    package = make_package(tmp_path, "job3-a.gcode.3mf")
    driver.upload(package, "job3-a.gcode.3mf", start=True)
    wait_for(lambda: emulator.state == "RUNNING", what="RUNNING")
    with pytest.raises(DriverError, match=r"cannot replace 'job3-a\.gcode\.3mf': the printer is printing"):
        driver.upload(package, "job3-a.gcode.3mf", start=False)
    assert emulator.state == "RUNNING" and len(emulator.received) == 1

    assert ftps_put(emulator, "job3-a.gcode.3mf", package.read_bytes()).startswith("226")  # someone else
    failed = wait_for(lambda: (s := driver.status()).state == PrinterState.FAILED and s, what="FAILED")
    assert failed.error_code == "0500_C010" and "MicroSD" in (failed.message or "")


# --------------------------------------------------------------------------- a silent P1


def test_silent_printer_is_reconnected(make_emulator: MakeEmulator, make_driver: MakeDriver) -> None:
    emulator = make_emulator(model="P1S")
    driver = make_driver(emulator, stale_after_s=1.5)
    assert wait_for(lambda: driver.status().state == PrinterState.IDLE, what="connect")
    assert emulator.mqtt_connections == 1
    emulator.go_silent()
    emulator.start_local_print("from-the-screen.gcode.3mf", seconds=60.0)  # nothing is reported
    time.sleep(0.5)
    assert driver.status().state == PrinterState.IDLE  # what the driver last heard
    status = wait_for(
        lambda: (s := driver.status()).state == PrinterState.PRINTING and s, timeout=10, what="PRINTING"
    )
    assert status.file == "from-the-screen.gcode.3mf"
    assert driver.reconnects == 1 and emulator.mqtt_connections == 2
    time.sleep(2.0)  # reports flow again: no more reconnects
    assert driver.status().state == PrinterState.PRINTING and driver.reconnects == 1


# --------------------------------------------------------------------------- what the firmware parses


def rewrite(package: Path, out: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of `package` with entries changed (or dropped, when `change` returns None)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for entry in src.namelist():
            data = change(entry, src.read(entry))
            if data is not None:
                dst.writestr(entry, data)
    return out


def _drop_header(entry: str, data: bytes) -> bytes:
    if entry != "Metadata/plate_1.gcode":
        return data
    kept = [line for line in data.split(b"\n") if not line.startswith(b"; HEADER_BLOCK")]
    return b"\n".join(kept)


def _with_md5(package: Path, out: Path) -> Path:
    """Recompute the plate's .md5 after a change, so that only the change is wrong."""
    with zipfile.ZipFile(package) as zf:
        digest = hashlib.md5(zf.read("Metadata/plate_1.gcode")).hexdigest().upper().encode()
    return rewrite(package, out, lambda e, d: digest if e.endswith(".md5") else d)


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("no content types", "0500_4003", "unable to parse"),
        ("no rels", "0500_4003", "unable to parse"),
        ("plate md5 wrong", "0502_403D", "unable to process the 3MF"),
        ("no header block", "0500_4003", "unable to parse"),
        ("not a zip", "0502_403D", "unable to process the 3MF"),
    ],
)
def test_firmware_fails_what_it_cannot_parse(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path, case: str, code: str, words: str
) -> None:
    emulator = make_emulator(model="P1S", speed=300.0)
    driver = make_driver(emulator)
    good = make_package(tmp_path, "good.gcode.3mf")
    bad = tmp_path / "bad.gcode.3mf"
    if case == "no content types":
        rewrite(good, bad, lambda e, d: None if e == "[Content_Types].xml" else d)
    elif case == "no rels":
        rewrite(good, bad, lambda e, d: None if e == "_rels/.rels" else d)
    elif case == "plate md5 wrong":
        rewrite(good, bad, lambda e, d: b"0" * 32 if e.endswith(".md5") else d)
    elif case == "no header block":
        _with_md5(rewrite(good, tmp_path / "headless.zip", _drop_header), bad)
    if case == "not a zip":  # the driver itself refuses these; a foreign client can still send one
        ftps_put(emulator, "bad.gcode.3mf", b"PK\x03\x04 torn")
        client = PrinterMQTTClient("127.0.0.1", CODE, SERIAL, port=emulator.mqtt_port)
        client.connect()
        client.start()
        try:
            wait_for(client.ready, what="a report")
            assert client.start_print_3mf("bad.gcode.3mf", 1, use_ams=False)
            wait_for(lambda: client.get_printer_state() == GcodeState.FAILED, what="FAILED")
        finally:
            client.stop()
            client._client.disconnect()
    else:
        driver.upload(bad, "bad.gcode.3mf", start=True)  # acked; the printer fails it while unzipping
    failed = wait_for(lambda: (s := driver.status()).state == PrinterState.FAILED and s, what="FAILED")
    assert failed.error_code == code and words in (failed.message or "")
    assert error_code(emulator.printer.print_error) == code

    driver.upload(good, "good.gcode.3mf", start=True)  # the same printer takes a good package
    done = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    assert done.error_code is None and done.layer == 20


def test_layer_count_comes_from_the_gcode_markers(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    """Without M73 L / M991 S0 P the print runs, but the printer never counts a layer."""
    emulator = make_emulator(model="A1", speed=300.0)
    driver = make_driver(emulator)
    driver.upload(make_package(tmp_path, "bare.gcode.3mf", markers=False), "bare.gcode.3mf", start=True)
    bare = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    assert (bare.layer, bare.error_code) == (0, None)
    assert emulator.printer.report()["total_layer_num"] == 20
    driver.upload(make_package(tmp_path, "marked.gcode.3mf"), "marked.gcode.3mf", start=True)
    wait_for(lambda: driver.status().state == PrinterState.PRINTING, what="PRINTING")
    marked = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    assert marked.layer == 20


# --------------------------------------------------------------------------- AMS mapping

AMS = [("PLA", "C12E1FFF"), ("PETG", "0A2989FF"), ("PLA", "000000FF"), ("", "00000000")]


def sent_feed(emulator: BambuEmulator) -> tuple[Any, Any, Any]:
    cmd = emulator.printer.project_files[-1]
    return cmd["use_ams"], cmd["ams_mapping"], cmd["ams_mapping2"]


@pytest.mark.parametrize(
    ("material", "color", "feed"),
    [
        ("PETG", None, (True, [1], [{"ams_id": 0, "slot_id": 1}])),
        ("PLA", "black", (True, [2], [{"ams_id": 0, "slot_id": 2}])),
        ("PLA", None, (True, [0], [{"ams_id": 0, "slot_id": 0}])),  # tray_now feeds already
        (None, None, (True, [0], [{"ams_id": 0, "slot_id": 0}])),  # the package says PLA
        ("ABS", None, (False, [-1], [{"ams_id": 255, "slot_id": 0}])),  # on the external spool
    ],
)
def test_job_filament_is_mapped_to_a_tray(
    make_emulator: MakeEmulator,
    make_driver: MakeDriver,
    tmp_path: Path,
    material: str | None,
    color: str | None,
    feed: tuple[Any, Any, Any],
) -> None:
    emulator = make_emulator(model="P1S", speed=300.0, ams=AMS, spool=("ABS", "FFFFFFFF"))
    driver = make_driver(emulator)
    driver.want_filament(material, color)
    package = make_package(tmp_path, "m.gcode.3mf", material=material or "PLA")
    driver.upload(package, "m.gcode.3mf", start=True)
    assert sent_feed(emulator) == feed
    done = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    assert done.error_code is None


def test_no_slot_with_the_material_refuses_before_uploading(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(model="P1S", ams=AMS, spool=("PLA", "FFFFFFFF"))
    driver = make_driver(emulator)
    driver.want_filament("PETG", "red")
    with pytest.raises(DriverError, match=r"no filament slot holds PETG red: the AMS has tray 0: PLA red, "):
        driver.upload(make_package(tmp_path, "x.gcode.3mf", material="PETG"), "x.gcode.3mf", start=True)
    assert emulator.received == [] and emulator.printer.project_files == []


def test_without_an_ams_the_spool_feeds(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(model="P1S", speed=300.0)
    driver = make_driver(emulator)
    driver.want_filament("PLA", "white")
    driver.upload(make_package(tmp_path, "s.gcode.3mf"), "s.gcode.3mf", start=True)
    assert sent_feed(emulator) == (False, [], [])
    assert wait_for(lambda: driver.status().state == PrinterState.FINISHED, what="FINISH")


@pytest.mark.parametrize(
    ("ams", "use_ams", "mapping", "fails"),
    [
        (None, True, [0], True),  # use_ams without an AMS (P1S: 07FF_8012)
        (AMS, True, [1], True),  # tray 1 holds PETG, the file is PLA
        (AMS, True, [3], True),  # an empty tray
        (AMS, True, [9], True),  # no such tray
        (AMS, True, [2], False),
        (AMS, False, [], False),
    ],
)
def test_firmware_checks_the_ams_mapping(
    make_emulator: MakeEmulator,
    tmp_path: Path,
    ams: list[tuple[str, str]] | None,
    use_ams: bool,
    mapping: list[int],
    fails: bool,
) -> None:
    """bambulabs-api (written by others) sends project_file with its own use_ams/ams_mapping."""
    emulator = make_emulator(model="P1S", speed=300.0, ams=ams)
    package = make_package(tmp_path, "api.gcode.3mf", material="PLA")
    with package.open("rb") as f:
        PrinterFTPClient("127.0.0.1", CODE, port=emulator.ftps_port).upload_file(f, "api.gcode.3mf")
    client = PrinterMQTTClient("127.0.0.1", CODE, SERIAL, port=emulator.mqtt_port)
    client.connect()
    client.start()
    try:
        wait_for(client.ready, what="a report")
        assert client.start_print_3mf("api.gcode.3mf", 1, use_ams=use_ams, ams_mapping=mapping)
        end = GcodeState.FAILED if fails else GcodeState.FINISH
        wait_for(lambda: client.get_printer_state() == end, what=str(end))
        assert client.print_error_code() == (0x07FF8012 if fails else 0)
    finally:
        client.stop()
        client._client.disconnect()


# --------------------------------------------------------------------------- names per attempt


def test_each_attempt_of_a_job_has_its_own_name_on_the_printer(tmp_path: Path) -> None:
    """A pinned job's retry goes back to the same printer: its upload must not land on the file of
    the attempt before (dispatch.report and the claim the agent gets, on a real SQLite database)."""
    from sqlmodel import Session

    from farm.coordinator import dispatch
    from farm.coordinator.api.agents import _claim_view
    from farm.coordinator.db import make_engine
    from farm.core.names import check_segment
    from farm.core.states import JobState
    from tests.coordinator_fixtures import add_printer, ready_build

    engine = make_engine(f"sqlite:///{tmp_path / 'farm.coordinator.db'}")
    names = []
    with Session(engine, expire_on_commit=False) as s:
        printer = add_printer(s, "a", "X1C")
        (job,) = ready_build(s, models=["X1C"])
        job.pinned_printer, job.max_attempts = "a", 3
        s.add(job)
        s.commit()
        for _ in range(3):
            claimed = dispatch.claim(s, printer, lease_s=60)
            assert claimed is not None and claimed.id == job.id
            names.append(_claim_view(claimed, (dispatch_slice(s, claimed), "cube.gcode.3mf"))["gcode_name"])
            dispatch.report(s, claimed, printer, fence=claimed.fence, state=JobState.UPLOADING, lease_s=60)
            again = _claim_view(claimed, (dispatch_slice(s, claimed), "cube.gcode.3mf"))["gcode_name"]
            assert again == names[-1]  # the same for the whole attempt: a restarted agent finds it
            dispatch.report(
                s, claimed, printer, fence=claimed.fence, state=JobState.FAILED, lease_s=60, backoff_s=0
            )
    engine.dispose()
    j = job.id
    assert names == [f"job{j}-cube.gcode.3mf", f"job{j}-a2-cube.gcode.3mf", f"job{j}-a3-cube.gcode.3mf"]
    assert all(check_segment(n) == n for n in names)  # drivers accept them
    assert check_segment(f"job2147483647-a2147483647-{'x' * 86}.gcode.3mf")


def dispatch_slice(session: Any, job: Any) -> Any:
    from farm.coordinator.models import Slice

    return session.get(Slice, job.slice_id)


# --------------------------------------------------------------------------- the farm's own packages


@pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")
@pytest.mark.parametrize("model_name", ["A1MINI", "P1S"])
def test_the_farms_package_passes_the_firmware_checks(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path, model_name: str
) -> None:
    """What the real slice path makes for a Bambu model prints on the strict emulator, with an AMS
    tray mapped for its filament and every layer counted from its markers."""
    from farm.core.printer_models import MODELS
    from tests.test_slicer import box_triangles, write_binary_stl
    from workers.slicer import slice_mesh

    box = write_binary_stl(tmp_path / "box.stl", box_triangles((16, 10, 3)))
    package = slice_mesh(box, MODELS[model_name], tmp_path / "job5-box.gcode.3mf").gcode
    trays = [("PETG", "FFFFFFFF"), ("PLA", "FFFFFFFF")]
    emulator = make_emulator(model=model_name, speed=300.0, max_print_s=3.0, ams=trays)
    driver = make_driver(emulator)
    driver.want_filament("PLA", None)
    driver.upload(package, "job5-box.gcode.3mf", start=True)
    assert sent_feed(emulator) == (True, [1], [{"ams_id": 0, "slot_id": 1}])  # tray 0 is PETG
    done = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISH")
    total = emulator.printer.report()["total_layer_num"]
    assert done.error_code is None and total > 1 and done.layer == total
