"""The real Prusa-Link (PyPI `prusalink` 0.8.1, the MK3S's PrusaLink on a Raspberry Pi) as a peer:
our driver uploads to it and starts a print, which it streams over a serial port to a Marlin-like
MK3S on a pty (tests/marlin_pty.py); and our MK3S emulator is compared with its answers.

It runs from a venv of its own (`.venv-prusalink`, made on first use): it pins pydantic 1.x, and two
of its requirements cannot be installed here, so they are replaced by stand-ins that this file
writes: python-prctl (thread names; needs libcap headers to build) and PyTurboJPEG (camera JPEG
encoding; needs libturbojpeg). Neither is on the path a print takes. Its data folder cannot be under
/tmp: Prusa-Link ignores storages there (const.BLACKLISTED_PATHS); a checkout under /tmp (as CI's
may be) puts it in /var/tmp instead."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from farm.core.states import PrinterState
from printers.drivers.base import PrinterConfig
from printers.drivers.prusalink import PrusaLinkDriver
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import REPO, free_port, stop_process, wait_until
from tests.marlin_pty import MarlinPty

pytestmark = pytest.mark.timeout(240)

VENV = REPO / ".venv-prusalink"
VERSION = "prusalink==0.8.1"
# prusalink 0.8.1's requirements.txt, less python-prctl and PyTurboJPEG (see the module docstring).
REQUIREMENTS = [
    "prusa.connect.sdk.printer==0.8.1",
    "py-gcode-metadata",
    "bidict~=0.22.1",
    "blinker~=1.5",
    "extendparser~=0.3.1",
    "jinja2-template-info~=0.2.4",
    "lockfile~=0.12.2",
    "packaging~=23.0",
    "PoorWSGI~=2.5.0",
    "pydantic==1.10.12",
    "pyric~=0.1.6.3",
    "python-daemon~=3.0.1",
    "python-magic~=0.4.27",
    "pyudev~=0.24.0",
    "PyYAML~=6.0",
    "requests>=2.31.0",
    "sortedcontainers~=2.4.0",
    "unidecode~=1.3.6",
    "validators~=0.20.0",
    "zeroconf~=0.47.4",
    "numpy",  # PyTurboJPEG brought it; prusa/link/cameras/encoders.py imports it at start-up
]
STAND_INS = {
    "prctl.py": '"""Stand-in for python-prctl: thread names only."""\n\n\n'
    "def set_name(name):\n    pass\n\n\ndef set_proctitle(title):\n    pass\n",
    "turbojpeg.py": '"""Stand-in for PyTurboJPEG: no camera here."""\n\nTJSAMP_422 = 1\n\n\n'
    "class TurboJPEG:\n    def __init__(self, *args, **kwargs):\n        pass\n\n"
    "    def encode(self, *args, **kwargs):\n        raise RuntimeError('no libturbojpeg')\n",
}
PASSWORD = "farm-mk3s-pw1"


def _ensure_prusalink() -> Path:
    binary = VENV / "bin" / "prusalink"
    if binary.exists():
        return binary
    print(f"\ninstalling {VERSION} into {VENV} (one-off, 1-3 min) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    for args in (REQUIREMENTS, ["--no-deps", VERSION]):
        done = subprocess.run([*pip, *args], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    site = next((VENV / "lib").glob("python3*/site-packages"))
    for name, text in STAND_INS.items():
        (site / name).write_text(text)
    return binary


@dataclass
class RealLink:
    url: str
    port: int
    printer: MarlinPty
    home: Path


# Prusa-Link's const.BLACKLISTED_PATHS: a storage inside one of these is never offered.
BLACKLISTED = ("/dev", "/sys", "/proc", "/tmp")


def _run_base() -> Path:
    venv = VENV.resolve()
    if any(venv.is_relative_to(p) for p in BLACKLISTED):
        return Path("/var/tmp/printfarm-prusalink")
    return VENV


@pytest.fixture(scope="module")
def real_link() -> Iterator[RealLink]:
    binary = _ensure_prusalink()
    home = _run_base() / f"run-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    digest = hashlib.md5(f"maker:Administrator:{PASSWORD}".encode()).hexdigest()
    # What the first-run wizard writes: the printer type and the web user (web/lib/wizard.py).
    (home / "prusa_printer_settings.ini").write_text(
        f"[printer]\ntype = MK3S\nname = farm-mk3s\n\n[service::local]\nenable = 1\nusername = maker\n"
        f"digest = {digest}\n"
    )
    printer = MarlinPty().start()
    port = free_port()
    config = home / "prusalink.ini"
    config.write_text(
        f"[daemon]\ndata_dir = {home}\n\n[http]\naddress = 127.0.0.1\nport = {port}\n\n"
        f"[printer]\nport = {printer.port}\n"
    )
    log = (home / "prusalink.out").open("wb")
    proc = subprocess.Popen(
        [str(binary), "-f", "-c", str(config), "-i"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    auth = httpx.DigestAuth("maker", PASSWORD)

    def idle() -> bool:
        assert proc.poll() is None, (home / "prusalink.out").read_text()[-3000:]
        try:
            response = httpx.get(f"{url}/api/v1/status", auth=auth)
        except httpx.TransportError:
            return False
        printer = response.json()["printer"] if response.status_code == 200 else {}
        # IDLE, and the printer's autoreported temperatures are in (after Prusa-Link's M155).
        return printer.get("state") == "IDLE" and "temp_nozzle" in printer

    try:
        # It gives a port 8 s to boot before it asks what printer is there.
        wait_until(idle, 90, "Prusa-Link to find the printer on the pty and go IDLE")
        yield RealLink(url, port, printer, home)
    finally:
        stop_process(proc, 20, signal.SIGTERM)
        log.close()
        printer.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_the_driver_uploads_and_prints_on_the_real_prusa_link(real_link: RealLink, tmp_path: Path) -> None:
    config = PrinterConfig(
        name="mk3s", model="MK3S", driver="prusalink", port=real_link.port, password=PASSWORD, timeout_s=15
    )
    driver = PrusaLinkDriver(config)
    moves = [f"G1 X{10 + i % 150}.5 Y{20 + i % 90}.5 E0.05" for i in range(400)]
    gcode = tmp_path / "cube.gcode"
    gcode.write_text(
        "; generated by PrusaSlicer 2.5.2+linux-x64-GTK3 on 2026-12-06 at 23:00:00 UTC\n"
        'M862.3 P "MK3S" ; printer model check\nG28\n' + "\n".join(moves) + "\n"
        "; estimated printing time (normal mode) = 1m 0s\n"
    )
    try:
        assert driver.status().state == PrinterState.IDLE
        driver.upload(gcode, "farm/job1-cube.gcode", start=True)
        stored = real_link.home / "PrusaLink gcodes" / "farm" / "job1-cube.gcode"
        assert stored.read_bytes() == gcode.read_bytes()  # on its `local` storage, byte for byte
        started = wait_until(
            lambda: (s := driver.status()).state in (PrinterState.PRINTING, PrinterState.FINISHED) and s,
            20,
            "the print to start",
        )
        assert started.file in ("farm/job1-cube.gcode", None)  # FINISHED reports no file
        done = wait_until(lambda: (s := driver.status()).state == PrinterState.FINISHED and s, 60, "finish")
        assert done.state == PrinterState.FINISHED
        streamed = [c for c in real_link.printer.received if c.startswith("G1 ")]
        assert streamed == moves  # every move went down the serial line, in order
    finally:
        driver.close()


def test_the_mk3s_emulator_answers_as_the_real_prusa_link(real_link: RealLink, tmp_path: Path) -> None:
    emulator = PrusaLinkEmulator(password=PASSWORD, model="MK3S", storage_dir=tmp_path / "local").start()
    answers = []
    try:
        for url in (real_link.url, emulator.url):
            with httpx.Client(base_url=url, auth=httpx.DigestAuth("maker", PASSWORD), timeout=15) as http:
                challenge = httpx.get(f"{url}/api/version").headers["WWW-Authenticate"]
                octet = {"Content-Type": "application/octet-stream"}
                answers.append(
                    {
                        "challenge": challenge.split('nonce="')[0],
                        "version": http.get("/api/version").json(),
                        "info": http.get("/api/v1/info").json(),
                        "storage": http.get("/api/v1/storage").json()["storage_list"],
                        "status": http.get("/api/v1/status").json(),
                        "usb": http.put("/api/v1/files/usb/x.gcode", content=b"G28\n", headers=octet),
                        "sdcard": http.put("/api/v1/files/sdcard/x.gcode", content=b"G28\n", headers=octet),
                        "octet": http.put("/api/v1/files/local/new.gcode", content=b"G28\n", headers=octet),
                    }
                )
    finally:
        emulator.stop()
    real, ours = answers
    assert (
        real["challenge"]
        == ours["challenge"]
        == 'Digest realm="Administrator",qop="auth",algorithm="MD5-sess",'
    )
    assert set(real["version"]) == set(ours["version"])
    for key in ("api", "original", "capabilities"):
        assert real["version"][key] == ours["version"][key], key
    assert set(real["info"]) == set(ours["info"])
    assert [(s["type"], s["path"], s["read_only"], s["available"]) for s in real["storage"]][:1] == [
        (s["type"], s["path"], s["read_only"], s["available"]) for s in ours["storage"]
    ][:1]
    assert [set(s) for s in real["storage"]][:1] == [set(s) for s in ours["storage"]][:1]
    assert real["storage"][0]["name"] == ours["storage"][0]["name"] == "PrusaLink gcodes"
    assert set(real["status"]["printer"]) == set(ours["status"]["printer"]), real["status"]
    assert [s["path"] for s in real["status"]["storage"]] == [s["path"] for s in ours["status"]["storage"]]
    for key in ("usb", "sdcard", "octet"):
        assert real[key].status_code == ours[key].status_code, (key, real[key].text)
        assert real[key].text.splitlines()[:2] == ours[key].text.splitlines()[:2], key
