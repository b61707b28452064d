"""An MK3S's PrusaLink is Prusa-Link on a Raspberry Pi (prusa3d/Prusa-Link 0.8), not Buddy firmware:
storages `local` and a read-only `sdcard`, no `usb`; realm "Administrator", RFC 2617 MD5-sess digest.
Our driver against the emulator in that mode, raw HTTP against what the Pi's source answers, and
pyprusalink (Home Assistant's client, written by others) against it."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pyprusalink import PrusaLink
from pyprusalink.types import Conflict

from farm.core.states import PrinterState
from printers.drivers.base import DriverError, PrinterConfig
from printers.drivers.prusalink import PrusaLinkDriver
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.printer_fixtures import prusa_gcode, wait_for
from tests.test_prusalink import PASSWORD

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def mk3s(tmp_path: Path) -> Iterator[PrusaLinkEmulator]:
    emulator = PrusaLinkEmulator(
        password=PASSWORD, model="MK3S", storage_dir=tmp_path / "local", speed=300.0, max_print_s=20.0
    ).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def driver(mk3s: PrusaLinkEmulator) -> Iterator[PrusaLinkDriver]:
    config = PrinterConfig(
        name="mk3s-1", model="MK3S", driver="prusalink", port=mk3s.port, password=PASSWORD, timeout_s=5.0
    )
    driver = PrusaLinkDriver(config)
    yield driver
    driver.close()


def client(emulator: PrusaLinkEmulator, **kwargs: str) -> httpx.Client:
    auth = httpx.DigestAuth("maker", PASSWORD)
    return httpx.Client(base_url=emulator.url, auth=auth, timeout=5.0, headers=kwargs)


def test_the_driver_uploads_to_local_and_prints_to_finished(
    mk3s: PrusaLinkEmulator, driver: PrusaLinkDriver, tmp_path: Path
) -> None:
    """Before the driver read /api/v1/storage it PUT to /api/v1/files/usb/…: the Pi answers 404."""
    data = prusa_gcode(tmp_path / "cube.gcode", model="MK3S", kib=200)
    driver.upload(tmp_path / "cube.gcode", "farm/job1-cube.gcode", start=True)

    assert mk3s.received == [mk3s.printer.root / "farm" / "job1-cube.gcode"]
    assert mk3s.received[0].read_bytes() == data
    printing = driver.status()
    # The Pi reports "/PrusaLink gcodes/farm/job1-cube.gcode" as the job's path: the driver gives it
    # back relative to the storage, as it was uploaded.
    assert (printing.state, printing.file) == (PrinterState.PRINTING, "farm/job1-cube.gcode")
    # No "File is busy" on a Pi (web/files.py has no such check): the upload replaces the file.
    driver.upload(tmp_path / "cube.gcode", "farm/job1-cube.gcode", start=False)
    assert mk3s.received[-1] == mk3s.received[0] and driver.status().state == PrinterState.PRINTING
    with client(mk3s) as http:
        job = http.get("/api/v1/job").json()
    assert job["file"]["path"] == job["file"]["display_path"] == "/PrusaLink gcodes/farm/job1-cube.gcode"
    done = wait_for(lambda: driver.status().state == PrinterState.FINISHED and driver.status(), "finish", 10)
    assert done.file == "farm/job1-cube.gcode"

    # start() goes to the same storage
    mk3s.dismiss()
    driver.start("farm/job1-cube.gcode")
    assert driver.status().state == PrinterState.PRINTING
    driver.cancel()
    with pytest.raises(DriverError, match=r"no file 'nope\.gcode' in its storage 'local'"):
        driver.start("nope.gcode")


def test_usb_and_sdcard_are_refused_as_the_pi_refuses_them(mk3s: PrusaLinkEmulator) -> None:
    body = b"G28\n"
    headers = {"Content-Type": "application/octet-stream"}
    with client(mk3s) as http:
        usb = http.put("/api/v1/files/usb/a.gcode", content=body, headers=headers)
        sd = http.put("/api/v1/files/sdcard/a.gcode", content=body, headers=headers)
        start_usb = http.post("/api/v1/files/usb/a.gcode")
        as_json = http.put(
            "/api/v1/files/usb/a.gcode", content=body, headers=headers | {"Accept": "application/json"}
        )
        wrong_type = http.put(
            "/api/v1/files/local/a.gcode", content=body, headers={"Content-Type": "image/png"}
        )
    # prusa/link/web/lib/files.py: check_storage (404 LocationNotFound), check_read_only (409)
    assert (usb.status_code, usb.text.splitlines()[:2]) == (
        404,
        ["Location Not Found", "Location not found, use local."],
    )
    assert usb.headers["Content-Location"].endswith("/error/location-not-found")
    assert (sd.status_code, sd.text.splitlines()[:2]) == (
        409,
        ["SD Card Read Only", "SD Card storage is read only."],
    )
    assert start_usb.status_code == 404
    assert as_json.json() == {
        "title": "Location Not Found",
        "message": "Location not found, use local.",
        "url": usb.headers["Content-Location"],
    }
    assert wrong_type.status_code == 415
    assert mk3s.received == []


def test_storage_version_info_and_status_as_the_pi_answers(mk3s: PrusaLinkEmulator) -> None:
    with client(mk3s) as http:
        storages = http.get("/api/v1/storage").json()["storage_list"]
        version = http.get("/api/version").json()
        info = http.get("/api/v1/info").json()
        status = http.get("/api/v1/status").json()
    assert [(s["type"], s["path"], s["name"], s["read_only"], s["available"]) for s in storages] == [
        ("LOCAL", "/local", "PrusaLink gcodes", False, True),
        ("SDCARD", "/sdcard", "SD Card", True, True),
    ]
    local = storages[0]
    assert local["free_space"] > 0 and local["total_space"] >= local["free_space"]
    assert local["print_files"] == local["system_files"] == 0
    assert "free_space" not in storages[1]
    assert (version["api"], version["original"], version["text"]) == (
        "2.0.0",
        "PrusaLink I3MK3S",
        "PrusaLink 0.8.1",
    )
    assert version["capabilities"] == {"upload-by-put": True} and "nozzle_diameter" not in version
    assert (info["min_extrusion_temp"], info["serial"], info["farm_mode"]) == (170, mk3s.serial, False)
    assert [s["path"] for s in status["storage"]] == ["/local", "/sdcard"]  # a list, where Buddy has one
    assert status["printer"]["state"] == "IDLE"
    assert status["printer"]["status_printer"] == {"ok": True, "message": "OK"}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def authorization(challenge: str, method: str, uri: str, password: str = PASSWORD) -> str:
    """RFC 2617 MD5-sess with qop=auth, written out: an independent check of the emulator's arithmetic."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    nonce, cnonce, nc = fields["nonce"], "0a4f113b", "00000001"
    ha1 = md5(f"{md5(f'maker:Administrator:{password}')}:{nonce}:{cnonce}")
    response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{md5(f'{method}:{uri}')}")
    return (
        f'Digest username="maker", realm="Administrator", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm="MD5-sess", opaque="{fields["opaque"]}", qop="auth", '
        f'nc={nc}, cnonce="{cnonce}"'
    )


def test_digest_is_poorwsgis_rfc2617_with_a_user_agent_bound_nonce(mk3s: PrusaLinkEmulator) -> None:
    url = f"{mk3s.url}/api/v1/status"
    challenge = httpx.get(url, headers={"User-Agent": "farm-a"}).headers["WWW-Authenticate"]
    assert challenge.startswith('Digest realm="Administrator",qop="auth",algorithm="MD5-sess",nonce="')
    assert challenge.endswith(f'opaque="{hashlib.sha256(b"localhost").hexdigest()}"')
    signed = authorization(challenge, "GET", "/api/v1/status")
    assert httpx.get(url, headers={"User-Agent": "farm-a", "Authorization": signed}).status_code == 200
    wrong = authorization(challenge, "GET", "/api/v1/status", password="nope")
    denied = httpx.get(url, headers={"User-Agent": "farm-a", "Authorization": wrong})
    assert denied.status_code == 401 and "stale" not in denied.headers["WWW-Authenticate"]
    # The nonce hashes the User-Agent in (poorwsgi.session.check_token): another client's is stale.
    stale = httpx.get(url, headers={"User-Agent": "farm-b", "Authorization": signed})
    assert stale.status_code == 401 and stale.headers["WWW-Authenticate"].endswith(",stale=true")
    wrong_key = httpx.get(url, headers={"X-Api-Key": "nope"})
    assert (wrong_key.status_code, wrong_key.text) == (403, "Bad X-Api-Key.")


def test_pyprusalink_reads_and_controls_the_mk3s(
    mk3s: PrusaLinkEmulator, driver: PrusaLinkDriver, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            api = PrusaLink(http, mk3s.url, "maker", PASSWORD)
            version = await api.get_version()
            assert (version["text"], version["api"]) == ("PrusaLink 0.8.1", "2.0.0")
            assert [s["path"] for s in await api.get_storage()] == ["/local", "/sdcard"]
            assert (await api.get_info())["serial"] == mk3s.serial

            prusa_gcode(tmp_path / "ha.gcode", model="MK3S")
            await asyncio.to_thread(driver.upload, tmp_path / "ha.gcode", "ha.gcode", start=True)
            status = await api.get_status()
            assert status["printer"]["state"] == "PRINTING"
            job = await api.get_job()
            assert job is not None and job["file"] is not None
            assert (job["file"]["path"], job["state"]) == ("/PrusaLink gcodes/ha.gcode", "PRINTING")
            await api.pause_job(job["id"])
            with pytest.raises(Conflict):
                await api.pause_job(job["id"])
            await api.cancel_job(job["id"])
            assert (await api.get_status())["printer"]["state"] == "STOPPED"

    asyncio.run(scenario())


def test_only_text_x_gcode_uploads_work_as_on_prusa_link_0_8_1(mk3s: PrusaLinkEmulator) -> None:
    """web/files.py sniffs an octet-stream upload's destination with libmagic before moving the
    upload there (seen on the real server, test_prusalink_server.py): new file 500, old file 415."""
    octet, gcode = {"Content-Type": "application/octet-stream"}, {"Content-Type": "text/x.gcode"}
    with client(mk3s) as http:
        new = http.put("/api/v1/files/local/a.gcode", content=b"G28\n", headers=octet)
        stored = http.put("/api/v1/files/local/a.gcode", content=b"G28\n", headers=gcode)
        replaced = http.put(
            "/api/v1/files/local/a.gcode", content=b"G28\n", headers=octet | {"Overwrite": "?1"}
        )
    assert new.status_code == 500 and "<title>500 - Internal Server Error</title>" in new.text
    assert stored.status_code == 201 and stored.content == b""
    assert replaced.status_code == 415 and not (mk3s.printer.root / "a.gcode").exists()
    assert mk3s.received == [mk3s.printer.root / "a.gcode"]  # the one upload that was stored


def test_no_writable_storage_is_said_plainly(
    mk3s: PrusaLinkEmulator, driver: PrusaLinkDriver, tmp_path: Path
) -> None:
    """Prusa-Link lists `local` as unavailable when it ignores its data folder (one under /tmp: seen
    when setting up the real server); the SD card is read-only. The driver sends nothing."""
    mk3s.local_storage = False
    prusa_gcode(tmp_path / "cube.gcode", model="MK3S", kib=8)
    with pytest.raises(
        DriverError, match=r"no writable storage for prints: local \(unavailable\), sdcard \(read-only\)"
    ):
        driver.upload(tmp_path / "cube.gcode", "cube.gcode", start=True)
    assert mk3s.received == []
    mk3s.local_storage = True  # a failed look is not cached: the next upload reads the list again
    driver.upload(tmp_path / "cube.gcode", "cube.gcode", start=True)
    assert mk3s.received == [mk3s.printer.root / "cube.gcode"]


@pytest.mark.parametrize(
    ("typed", "bambu", "claimed"),
    [
        ("MK3S+", False, "MK3S"),
        ("mk3s", False, "MK3S"),
        ("Core One", False, "COREONE"),
        ("core-one", False, "COREONE"),
        ("MK3", False, "MK3"),  # a Pi model the farm does not slice for: kept as typed
        ("A1 mini", True, "A1MINI"),
        ("X1 Carbon", True, "X1C"),
    ],
)
def test_farm_emulate_takes_model_names_as_printed_on_the_machine(
    typed: str, bambu: bool, claimed: str
) -> None:
    from farm.commands.emulate import emulated_model

    assert emulated_model(typed, bambu=bambu) == claimed


def test_an_emulator_started_as_mk3s_plus_prints_the_farms_mk3s_gcode(tmp_path: Path) -> None:
    """`farm emulate prusalink --model MK3S+` claimed "MK3S+", and the model check of every MK3S
    G-code (`M862.3 P "MK3S"`) left the print waiting at the screen (ATTENTION)."""
    from farm.commands.emulate import emulated_model

    prusa_gcode(tmp_path / "cube.gcode", model="MK3S", kib=8)
    states = {}
    for name in ("MK3S+", emulated_model("MK3S+", bambu=False)):
        emulator = PrusaLinkEmulator(
            password=PASSWORD, model=name, storage_dir=tmp_path / name, speed=300.0, max_print_s=20.0
        ).start()
        try:
            assert emulator.pi  # Prusa-Link on a Pi either way
            (tmp_path / name / "cube.gcode").write_bytes((tmp_path / "cube.gcode").read_bytes())
            emulator.printer.start_print("cube.gcode")
            with client(emulator) as http:
                states[name] = http.get("/api/v1/status").json()["printer"]["state"]
        finally:
            emulator.stop()
    assert states == {"MK3S+": "ATTENTION", "MK3S": "PRINTING"}
