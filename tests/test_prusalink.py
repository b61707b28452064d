"""PrusaLink over real loopback sockets: our driver against our emulator, raw HTTP against the
emulator's protocol details, and pyprusalink (the Home Assistant client, written by others)
against the emulator as a fidelity check."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyprusalink import PrusaLink
from pyprusalink.types import Conflict, InvalidAuth, NotFound

from farm.core.states import PrinterState
from printers.drivers.base import DriverError
from printers.drivers.prusalink import PrusaLinkDriver
from printers.emulators.common import MODEL_CHECK_BYTES, inspect_gcode, parse_duration
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.printer_fixtures import closing_all, driver_config, emulators, prusa_gcode, wait_for

pytestmark = pytest.mark.timeout(30)

PASSWORD = "tX9mQ2vLpA7c"  # the shape of a Buddy-generated password
CHALLENGE_RE = re.compile(r'Digest realm="Printer API", nonce="([0-9a-f]{16})", stale=(true|false)')

MakeEmulator = Callable[..., PrusaLinkEmulator]
MakeDriver = Callable[..., PrusaLinkDriver]


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[MakeEmulator]:
    with emulators(PrusaLinkEmulator, tmp_path, password=PASSWORD) as make:
        yield make


@pytest.fixture
def make_driver() -> Iterator[MakeDriver]:
    def make(emulator: PrusaLinkEmulator, **overrides: Any) -> PrusaLinkDriver:
        fields = {"name": "mini-1", "model": "MINI", "password": PASSWORD} | overrides
        return PrusaLinkDriver(driver_config("prusalink", emulator, **fields))

    with closing_all(make) as tracked:
        yield tracked


def raw_client(emulator: PrusaLinkEmulator, password: str = PASSWORD) -> httpx.Client:
    return httpx.Client(base_url=emulator.url, auth=httpx.DigestAuth("maker", password), timeout=5.0)


def job_id(emulator: PrusaLinkEmulator) -> int:
    with raw_client(emulator) as client:
        return int(client.get("/api/v1/status").json()["job"]["id"])


# --------------------------------------------------------------------------- driver <-> emulator


def test_upload_streams_exact_bytes_and_prints_to_finished(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=300.0)  # 10 min estimate -> 2 s
    driver = make_driver(emulator)
    data = prusa_gcode(tmp_path / "box.gcode")
    calls: list[tuple[int, int]] = []

    driver.upload(  # a name as the farm makes them (printer_path refuses spaces); the "+" is quoted
        tmp_path / "box.gcode",
        "parts/Box+version2.gcode",
        start=True,
        progress=lambda s, t: calls.append((s, t)),
    )

    assert [p.relative_to(emulator.printer.root).as_posix() for p in emulator.received] == [
        "parts/Box+version2.gcode"
    ]
    assert emulator.received[0].read_bytes() == data
    assert len(calls) > 1 and calls[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in calls)
    printing = driver.status()
    assert printing.state == PrinterState.PRINTING
    assert printing.progress is not None and 0.0 <= printing.progress < 100.0
    assert printing.remaining_s is not None and 0 < printing.remaining_s <= 2
    assert printing.file == "parts/Box+version2.gcode"  # the long name, not the 8.3 alias
    assert 205.0 <= printing.temperatures["nozzle"] <= 210.0  # M104 S210 from the file
    assert 50.0 <= printing.temperatures["bed"] <= 55.0

    done = wait_for(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, what="FINISHED")
    assert done.progress == 100.0 and done.remaining_s == 0 and done.file == "parts/Box+version2.gcode"
    time.sleep(0.2)
    assert driver.status().state == PrinterState.FINISHED  # persists until the next job


def test_model_mismatch_leaves_the_printer_in_attention(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(model="MINI", speed=60.0)
    driver = make_driver(emulator)
    prusa_gcode(tmp_path / "mk4.gcode", model="MK4S")

    driver.upload(tmp_path / "mk4.gcode", "mk4.gcode", start=True)

    status = driver.status()
    assert status.state == PrinterState.ATTENTION
    assert status.message is not None and "screen" in status.message
    with raw_client(emulator) as client:
        assert client.get("/api/v1/job").json()["state"] == "PAUSED"  # the API has no ATTENTION job state
    time.sleep(0.3)
    assert driver.status().progress == 0.0  # nothing moves until someone answers the dialog
    with pytest.raises(DriverError, match="resume"):
        driver.resume()  # resume is for PAUSED only, as on the firmware
    emulator.press_continue()
    assert driver.status().state == PrinterState.PRINTING
    driver.cancel()
    cancelled = driver.status()
    assert (cancelled.state, cancelled.message) == (PrinterState.FAILED, "stopped")


def test_wrong_password_and_api_key(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator()
    prusa_gcode(tmp_path / "a.gcode", kib=1)

    wrong = make_driver(emulator, password="not-it")
    with pytest.raises(DriverError, match=r"password.*Settings > Network > PrusaLink"):
        wrong.status()
    with pytest.raises(DriverError, match="password"):
        wrong.upload(tmp_path / "a.gcode", "a.gcode", start=False)
    assert emulator.received == []

    assert make_driver(emulator, password=None, api_key=PASSWORD).status().state == PrinterState.IDLE
    with pytest.raises(DriverError, match="password"):
        make_driver(emulator, password=None, api_key="nope").status()
    with pytest.raises(DriverError, match="no PrusaLink password"):
        make_driver(emulator, password=None)


def test_stopped_printer_reads_offline_and_comes_back(
    make_emulator: MakeEmulator, make_driver: MakeDriver
) -> None:
    emulator = make_emulator()
    driver = make_driver(emulator)
    assert driver.status().state == PrinterState.IDLE  # leaves a keep-alive connection in the pool

    emulator.stop()
    offline = driver.status()
    assert offline.state == PrinterState.OFFLINE
    assert offline.message and str(emulator.port) in offline.message
    with pytest.raises(DriverError, match="no answer"):
        driver.pause()

    emulator.start()  # same port again
    assert driver.status().state == PrinterState.IDLE


def test_pause_resume_cancel(make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path) -> None:
    emulator = make_emulator(speed=60.0, max_print_s=30.0)  # a 10 s print
    driver = make_driver(emulator)
    prusa_gcode(tmp_path / "long.gcode")
    driver.upload(tmp_path / "long.gcode", "long.gcode", start=True)
    first_id = job_id(emulator)

    driver.pause()
    paused = driver.status()
    assert paused.state == PrinterState.PAUSED
    time.sleep(0.3)
    assert driver.status().progress == paused.progress  # the clock stops while paused
    with pytest.raises(DriverError, match="cannot pause the print: the printer is paused"):
        driver.pause()

    driver.resume()
    assert driver.status().state == PrinterState.PRINTING
    wait_for(lambda: (driver.status().progress or 0) > (paused.progress or 0), what="progress after resume")

    driver.cancel()
    stopped = driver.status()
    assert (stopped.state, stopped.message) == (PrinterState.FAILED, "stopped")
    with pytest.raises(DriverError, match="cannot cancel"):
        driver.cancel()
    with pytest.raises(DriverError, match="cannot resume"):
        driver.resume()

    driver.start("long.gcode")  # STOPPED is a state a new print may start from
    assert driver.status().state == PrinterState.PRINTING
    assert job_id(emulator) == first_id + 1


def test_start_refused_while_printing(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0)
    driver = make_driver(emulator)
    prusa_gcode(tmp_path / "a.gcode")
    second = prusa_gcode(tmp_path / "b.gcode", kib=8)
    driver.upload(tmp_path / "a.gcode", "a.gcode", start=True)

    with pytest.raises(DriverError, match="could not start"):
        driver.upload(tmp_path / "b.gcode", "b.gcode", start=True)
    assert emulator.received[-1].name == "b.gcode" and emulator.received[-1].read_bytes() == second
    with pytest.raises(DriverError, match=r"cannot start 'b\.gcode' now"):
        driver.start("b.gcode")
    with pytest.raises(DriverError, match="printing that file"):
        driver.upload(tmp_path / "a.gcode", "a.gcode", start=False)
    with pytest.raises(DriverError, match=r"only \.gcode/\.bgcode"):
        driver.upload(tmp_path / "a.gcode", "a.txt", start=False)
    driver.cancel()
    with pytest.raises(DriverError, match=r"no file 'missing\.gcode'"):
        driver.start("missing.gcode")
    driver.start("b.gcode")
    assert driver.status().file == "b.gcode"


def test_stale_nonces_are_handled_transparently(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = make_emulator(nonce_lifetime_s=0.2)
    driver = make_driver(emulator)
    data = prusa_gcode(tmp_path / "s.gcode", kib=300)

    assert driver.status().state == PrinterState.IDLE
    time.sleep(0.3)
    assert driver.status().state == PrinterState.IDLE  # 401 stale=true, then a retry with the new nonce

    # Without the priming GET the PUT itself meets the stale nonce: httpx must send the body twice.
    # (The storage list is read once per connection, by the first upload: not between them.)
    driver.upload(tmp_path / "s.gcode", "first.gcode", start=False)
    monkeypatch.setattr(driver, "_prime_auth", lambda: None)
    time.sleep(0.3)
    calls: list[int] = []
    driver.upload(tmp_path / "s.gcode", "s.gcode", start=False, progress=lambda sent, _: calls.append(sent))
    assert emulator.received[-1].read_bytes() == data
    assert any(later < earlier for earlier, later in itertools.pairwise(calls)), "body was not re-sent"
    assert calls[-1] == len(data)


# --------------------------------------------------------------------------- protocol details


def _digest(method: str, uri: str, nonce: str, password: str = PASSWORD) -> str:
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    response = md5(f"{md5(f'maker:Printer API:{password}')}:{nonce}:{md5(f'{method}:{uri}')}")
    return (
        f'Digest username="maker", realm="Printer API", nonce="{nonce}", uri="{uri}", response="{response}"'
    )


def test_digest_challenge_and_stale_flag(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(nonce_lifetime_s=0.2)
    with httpx.Client(base_url=emulator.url, timeout=5.0) as client:
        challenge = client.get("/api/v1/status")
        assert challenge.status_code == 401
        assert challenge.headers["content-type"] == "text/plain"
        assert challenge.text.startswith("401: Unauthorized")
        match = CHALLENGE_RE.fullmatch(challenge.headers["www-authenticate"])
        assert match and match.group(2) == "false"
        nonce = match.group(1)

        ok = client.get("/api/v1/status", headers={"Authorization": _digest("GET", "/api/v1/status", nonce)})
        assert ok.status_code == 200
        time.sleep(0.3)
        stale = client.get(
            "/api/v1/status", headers={"Authorization": _digest("GET", "/api/v1/status", nonce)}
        )
        assert stale.status_code == 401
        assert CHALLENGE_RE.fullmatch(stale.headers["www-authenticate"]).group(2) == "true"  # type: ignore[union-attr]
        bad = _digest("GET", "/api/v1/status", nonce, password="wrong")
        assert (
            "stale=false"
            in client.get("/api/v1/status", headers={"Authorization": bad}).headers["www-authenticate"]
        )
        other_uri = _digest(
            "GET", "/api/v1/info", CHALLENGE_RE.fullmatch(stale.headers["www-authenticate"]).group(1)
        )  # type: ignore[union-attr]
        assert client.get("/api/v1/status", headers={"Authorization": other_uri}).status_code == 401

        assert client.get("/api/v1/info", headers={"X-Api-Key": PASSWORD}).json()["serial"] == emulator.serial
        assert client.get("/api/v1/info", headers={"X-Api-Key": "nope"}).status_code == 401


def test_endpoints_and_error_pages(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator()
    with raw_client(emulator) as client:
        assert client.get("/api/v1/job").status_code == 204
        assert client.get("/api/v1/transfer").status_code == 204
        assert client.get("/api/v1/storage").json() == {
            "storage_list": [
                {"path": "/usb/", "name": "usb", "type": "USB", "read_only": False, "available": True}
            ]
        }
        status = client.get("/api/v1/status").json()
        assert "job" not in status and status["printer"]["state"] == "IDLE"
        assert {"temp_bed", "target_bed", "temp_nozzle", "target_nozzle", "axis_z"} <= status[
            "printer"
        ].keys()

        assert client.get("/api/v1/nope").status_code == 404
        assert client.get("/api/v1/files/local/x.gcode").status_code == 403
        assert client.put("/api/v1/status").status_code == 405
        assert client.patch("/api/v1/files/usb/x.gcode").status_code == 405
        as_json = client.get("/api/v1/nope", headers={"Accept": "application/json"})
        assert as_json.json()["code"] == 404

        txt = client.put("/api/v1/files/usb/notes.txt", content=b"hello")
        assert (txt.status_code, txt.text) == (415, "415: Unsupported Media Type\n\nNot a GCODE\n")
        assert client.put("/api/v1/files/usb/d/x.gcode", content=b"G28\n").status_code == 201
        again = client.put("/api/v1/files/usb/d/x.gcode", content=b"G28\n")
        assert (again.status_code, again.text.split("\n\n")[1].strip()) == (409, "File already exists")
        replaced = client.put("/api/v1/files/usb/d/x.gcode", content=b"G28 X\n", headers={"Overwrite": "?1"})
        assert replaced.status_code == 201 and replaced.json()["display_name"] == "x.gcode"
        assert (emulator.printer.root / "d" / "x.gcode").read_bytes() == b"G28 X\n"

        head = client.head("/api/v1/files/usb/d/x.gcode")
        assert (head.status_code, head.headers["read-only"], head.headers["currently-printing"]) == (
            200,
            "?0",
            "?0",
        )
        assert client.head("/api/v1/files/usb/d/none.gcode").status_code == 404
        listing = client.get("/api/v1/files/usb/").json()
        assert [c["display_name"] for c in listing["children"]] == ["d"]

    chunked = httpx.put(
        f"{emulator.url}/api/v1/files/usb/c.gcode", content=iter([b"G28\n"]), headers={"X-Api-Key": PASSWORD}
    )
    assert chunked.status_code == 411


def test_job_id_gating_and_file_rules(make_emulator: MakeEmulator) -> None:
    emulator = make_emulator(speed=1.0, max_print_s=20.0)
    with raw_client(emulator) as client:
        client.put("/api/v1/files/usb/p.gcode", content=b'M862.3 P "MINI"\nG28\n')
        assert client.post("/api/v1/files/usb/missing.gcode").status_code == 404
        assert client.post("/api/v1/files/usb/p.gcode").status_code == 204
        assert client.post("/api/v1/files/usb/p.gcode").status_code == 409  # already printing
        current = client.get("/api/v1/status").json()["job"]["id"]
        job = client.get("/api/v1/job").json()
        assert (job["id"], job["state"], job["file"]["display_name"]) == (current, "PRINTING", "p.gcode")
        assert "time_remaining" not in job  # no slicer estimate in this file

        assert client.delete("/api/v1/job/abc").status_code == 400
        assert client.delete(f"/api/v1/job/{current + 1}").status_code == 404
        assert client.put(f"/api/v1/job/{current}/resume").status_code == 409
        assert client.put(f"/api/v1/job/{current}/jump").status_code == 400
        busy = client.delete("/api/v1/files/usb/p.gcode")
        assert (busy.status_code, "File is busy" in busy.text) == (409, True)
        assert client.head("/api/v1/files/usb/p.gcode").headers["currently-printing"] == "?1"

        assert client.delete(f"/api/v1/job/{current}").status_code == 204
        assert client.delete(f"/api/v1/job/{current}").status_code == 409  # STOPPED: nothing to stop
        assert client.get("/api/v1/job").json()["state"] == "STOPPED"
        assert client.delete("/api/v1/files/usb/p.gcode").status_code == 204
        assert client.delete("/api/v1/files/usb/p.gcode").status_code == 404


def test_truncated_upload_keeps_nothing_and_blocks_a_second_transfer(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator()
    driver = make_driver(emulator)
    prusa_gcode(tmp_path / "other.gcode", kib=1)
    request = (
        "PUT /api/v1/files/usb/cut.gcode HTTP/1.1\r\nHost: printer\r\n"
        f"X-Api-Key: {PASSWORD}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with raw_client(emulator) as client:
        with socket.create_connection(("127.0.0.1", emulator.port)) as sock:
            sock.sendall(request + b"G1 X1\n" * 100)
            transfer = wait_for(lambda: client.get("/api/v1/transfer"), what="transfer").json()
            assert (transfer["display_name"], transfer["size"]) == ("cut.gcode", 100000)
            with pytest.raises(DriverError, match="another file"):
                driver.upload(tmp_path / "other.gcode", "other.gcode", start=False)
        wait_for(lambda: client.get("/api/v1/transfer").status_code == 204, what="the transfer to end")
    assert emulator.received == []
    assert list(emulator.printer.root.iterdir()) == []  # no half file, no temp file


def test_gcode_inspection_reads_only_what_the_firmware_reads(tmp_path: Path) -> None:
    assert parse_duration("1d 2h 21m 13s") == 86400 + 2 * 3600 + 21 * 60 + 13
    assert parse_duration("n/a") is None
    late = tmp_path / "late.gcode"
    late.write_bytes(b"G28\n" + b";" * MODEL_CHECK_BYTES + b'\nM862.3 P "XL"\n')
    assert inspect_gcode(late).model is None  # beyond the head the firmware scans
    prusa_gcode(tmp_path / "x.gcode", model="COREONE", estimate="1h 2m 3s")
    facts = inspect_gcode(tmp_path / "x.gcode")
    assert (facts.model, facts.estimate_s, facts.nozzle_c, facts.bed_c) == ("COREONE", 3723.0, 210.0, 55.0)


# --------------------------------------------------------------------------- pyprusalink


def test_pyprusalink_reads_and_controls_the_emulator(
    make_emulator: MakeEmulator, make_driver: MakeDriver, tmp_path: Path
) -> None:
    emulator = make_emulator(speed=60.0, max_print_s=20.0)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            api = PrusaLink(http, emulator.url, "maker", PASSWORD)
            version = await api.get_version()
            assert (version["text"], version["hostname"], version["nozzle_diameter"]) == (
                "PrusaLink",
                "prusa-mini",
                0.4,
            )
            assert version["capabilities"]["upload-by-put"] is True  # type: ignore[typeddict-item]
            assert await api.get_job() is None
            assert (await api.get_storage())[0]["path"] == "/usb/"
            assert (await api.get_info())["serial"] == emulator.serial

            prusa_gcode(tmp_path / "ha.gcode")
            await asyncio.to_thread(
                make_driver(emulator).upload, tmp_path / "ha.gcode", "ha.gcode", start=True
            )

            status = await api.get_status()
            assert status["printer"]["state"] == "PRINTING"
            assert 190.0 < float(status["printer"]["temp_nozzle"] or 0) <= 210.0
            job = await api.get_job()
            assert job is not None and job["id"] == status["job"]["id"] and job["state"] == "PRINTING"
            assert job["file"] is not None and job["file"].get("display_name") == "ha.gcode"
            assert job["time_remaining"] is not None and 0 < job["time_remaining"] <= 10

            await api.pause_job(job["id"])
            assert (await api.get_status())["printer"]["state"] == "PAUSED"
            with pytest.raises(Conflict):
                await api.pause_job(job["id"])
            with pytest.raises(NotFound):
                await api.cancel_job(job["id"] + 1)
            await api.cancel_job(job["id"])
            assert (await api.get_status())["printer"]["state"] == "STOPPED"
            stopped = await api.get_job()
            assert stopped is not None and stopped["state"] == "STOPPED"

            with pytest.raises(InvalidAuth):
                await PrusaLink(http, emulator.url, "maker", "wrong").get_status()

    asyncio.run(scenario())
