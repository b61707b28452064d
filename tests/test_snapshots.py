"""Camera stills over each printer's own protocol: PrusaLink's /api/v1/cameras/snap, OctoPrint's
configured webcam snapshot URL, Moonraker's /server/webcams/list; each emulator serves a PNG that
Pillow decodes. (The agent uploading them with a job, and `farm job N --snapshot`: test_enroll.)"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from printers.drivers import make_driver
from printers.drivers.bambu import BambuDriver
from printers.drivers.base import DriverError, PrinterConfig
from printers.emulators.bambu import BambuEmulator
from printers.emulators.camera import state_color
from printers.emulators.moonraker import MoonrakerEmulator
from printers.emulators.octoprint import OctoPrintEmulator
from printers.emulators.prusalink import PrusaLinkEmulator

pytestmark = pytest.mark.timeout(30)


def _prusalink(tmp: Path) -> tuple[object, dict[str, object], str]:
    emu = PrusaLinkEmulator(password="pw", storage_dir=tmp).start()
    return emu, {"driver": "prusalink", "port": emu.port, "password": "pw", "model": "MK4"}, "IDLE"


def _octoprint(tmp: Path) -> tuple[object, dict[str, object], str]:
    emu = OctoPrintEmulator(api_key="KEY", storage_dir=tmp).start()
    return emu, {"driver": "octoprint", "port": emu.port, "api_key": "KEY", "model": "MK3S"}, "Operational"


def _moonraker(tmp: Path) -> tuple[object, dict[str, object], str]:
    emu = MoonrakerEmulator(storage_dir=tmp).start()
    return emu, {"driver": "moonraker", "port": emu.port, "model": "MK3S"}, "standby"


@pytest.mark.parametrize(
    "start", [_prusalink, _octoprint, _moonraker], ids=["prusalink", "octoprint", "moonraker"]
)
def test_each_protocol_gives_a_still_pillow_reads(
    start: Callable[[Path], tuple[object, dict[str, object], str]], tmp_path: Path
) -> None:
    emu, settings, state = start(tmp_path)
    driver = make_driver(PrinterConfig.model_validate({"name": "p", "host": "127.0.0.1", **settings}))
    try:
        shot = driver.snapshot()
    finally:
        driver.close()
        emu.stop()  # type: ignore[attr-defined]
    assert shot is not None
    image, kind = shot
    assert kind == "image/png"
    with Image.open(io.BytesIO(image)) as decoded:
        decoded.load()  # every chunk's CRC and the pixel data checked
        assert decoded.size == (160, 120)
        assert decoded.getpixel((0, 0)) == state_color(state)  # the emulator's state when taken


@pytest.mark.parametrize("access_code", ["12345678", "wrong-one"])
def test_a_p1s_camera_sends_a_jpeg_frame_over_tls(tmp_path: Path, access_code: str) -> None:
    """Port 6000's framing (OpenBambuAPI video.md); Pillow decodes the frame; a wrong access code
    gets the connection closed, a clear DriverError here."""
    emu = BambuEmulator(model="P1S", storage_dir=tmp_path, access_code="12345678").start()
    assert emu.camera_port is not None
    config = PrinterConfig(
        name="p1s", model="P1S", driver="bambu", port=emu.mqtt_port, ftps_port=emu.ftps_port,
        camera_port=emu.camera_port, serial=emu.serial, access_code=access_code, cert_sha256=emu.cert_sha256,
    )  # fmt: skip
    driver = BambuDriver(config)
    try:
        if access_code != emu.access_code:
            with pytest.raises(DriverError, match="no frame from the camera"):
                driver.snapshot()
            return
        shot = driver.snapshot()
    finally:
        driver.close()
        emu.stop()
    assert shot is not None and shot[1] == "image/jpeg"
    with Image.open(io.BytesIO(shot[0])) as decoded:
        decoded.load()
        assert decoded.format == "JPEG" and decoded.size == (64, 36)


def test_an_x1_camera_is_rtsps_and_not_read_yet(tmp_path: Path) -> None:
    emu = BambuEmulator(model="X1C", storage_dir=tmp_path).start()
    try:
        assert emu.camera_port is None
        config = PrinterConfig(name="x1", model="X1C", driver="bambu", serial=emu.serial, access_code="1")
        assert BambuDriver(config).snapshot() is None
    finally:
        emu.stop()


def test_a_prusalink_on_a_pi_has_no_camera(tmp_path: Path) -> None:
    emu = PrusaLinkEmulator(password="pw", storage_dir=tmp_path, model="MK3S").start()
    driver = make_driver(
        PrinterConfig(
            name="p", model="MK3S", driver="prusalink", port=emu.port, password="pw", username="maker"
        )
    )
    try:
        assert driver.snapshot() is None  # 204: nothing to keep
    finally:
        driver.close()
        emu.stop()
