"""Camera stills over each printer's own protocol: PrusaLink's /api/v1/cameras/snap, OctoPrint's
configured webcam snapshot URL, Moonraker's /server/webcams/list; each emulator serves a PNG that
Pillow decodes. Bambu: a P1S's JPEG frames on port 6000, an X1's H.264 over RTSPS. (The agent
uploading them with jobs, `farm job N --snapshot` and stills on request: test_snapshots_e2e.)"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from printers.drivers import make_driver
from printers.drivers.bambu import BambuDriver
from printers.drivers.base import DriverError, PrinterConfig
from printers.emulators.bambu import BambuEmulator
from printers.emulators.bambu_rtsp import rtp_packets
from printers.emulators.camera import state_color, x1_frame_nals
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


def _camera_jpeg(tmp_path: Path, model: str, access_code: str, refused: str) -> bytes | None:
    """A still from a Bambu `model` emulator's camera through the driver, given `access_code`: the
    JPEG, or None when the code is wrong and the driver said so (`refused`, a pattern)."""
    emu = BambuEmulator(model=model, storage_dir=tmp_path, access_code="12345678").start()
    assert emu.camera_port is not None
    config = PrinterConfig(
        name=model.lower(), model=model, driver="bambu", port=emu.mqtt_port, ftps_port=emu.ftps_port,
        camera_port=emu.camera_port, serial=emu.serial, access_code=access_code, cert_sha256=emu.cert_sha256,
    )  # fmt: skip
    driver = BambuDriver(config)
    try:
        if access_code != emu.access_code:
            with pytest.raises(DriverError, match=refused):
                driver.snapshot()
            return None
        shot = driver.snapshot()
    finally:
        driver.close()
        emu.stop()
    assert shot is not None and shot[1] == "image/jpeg"
    return shot[0]


@pytest.mark.parametrize("access_code", ["12345678", "wrong-one"])
def test_a_p1s_camera_sends_a_jpeg_frame_over_tls(tmp_path: Path, access_code: str) -> None:
    """Port 6000's framing (OpenBambuAPI video.md); Pillow decodes the frame; a wrong access code
    gets the connection closed, a clear DriverError here."""
    jpeg = _camera_jpeg(tmp_path, "P1S", access_code, refused="no frame from the camera")
    if jpeg is None:
        return
    with Image.open(io.BytesIO(jpeg)) as decoded:
        decoded.load()
        assert decoded.format == "JPEG" and decoded.size == (64, 36)


# ffmpeg's test pattern in the emulator's X1 frame: colour bars along row 10 (x: RGB).
BARS = {
    2: (0, 0, 0),
    12: (0, 255, 255),
    22: (255, 0, 255),
    42: (0, 255, 0),
    52: (255, 0, 0),
    62: (255, 255, 255),
}


def _bars(image: Image.Image) -> None:
    rgb = image.convert("RGB")
    for x, want in BARS.items():  # within what JPEG's compression changes
        assert all(abs(a - b) <= 24 for a, b in zip(rgb.getpixel((x, 10)), want, strict=True)), (x, want)


@pytest.mark.parametrize("access_code", ["12345678", "wrong-one"])
def test_an_x1_camera_is_h264_over_rtsps(tmp_path: Path, access_code: str) -> None:
    """The driver speaks RTSP over the printer's pinned TLS, gathers a key frame from RTP (FU-A
    fragments: the emulator cuts the IDR slice) and ffmpeg makes it a JPEG that Pillow reads; a
    wrong access code is the camera's 401, said plainly."""
    jpeg = _camera_jpeg(tmp_path, "X1C", access_code, refused=r"refused the access code \(RTSP 401\)")
    if jpeg is None:
        return
    with Image.open(io.BytesIO(jpeg)) as decoded:
        decoded.load()
        assert decoded.format == "JPEG" and decoded.size == (64, 48)
        _bars(decoded)


def test_ffmpeg_reads_the_x1_emulators_camera(tmp_path: Path) -> None:
    """Foreign software as the peer: ffmpeg's own RTSPS client (digest auth, interleaved RTP,
    its H.264 depacketiser) takes a frame from the emulator; a wrong code gets nothing."""
    emu = BambuEmulator(model="X1C", storage_dir=tmp_path, access_code="12345678").start()

    def grab(code: str) -> subprocess.CompletedProcess[bytes]:
        url = f"rtsps://bblp:{code}@127.0.0.1:{emu.camera_port}/streaming/live/1"
        argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", url,
                "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "pipe:1"]  # fmt: skip
        return subprocess.run(argv, capture_output=True, timeout=20, check=False)

    try:
        good, bad = grab("12345678"), grab("87654321")
    finally:
        emu.stop()
    assert good.returncode == 0, good.stderr
    with Image.open(io.BytesIO(good.stdout)) as decoded:
        assert decoded.size == (64, 48)
        _bars(decoded)
    assert bad.returncode != 0 and b"401" in bad.stderr and not bad.stdout


def test_rtp_packets_cut_big_nal_units_into_fu_a_fragments() -> None:
    nals = x1_frame_nals()
    packets = rtp_packets(nals, seq=65534, timestamp=1, ssrc=7)
    assert [p[12] & 0x1F for p in packets[:2]] == [7, 8] and all(p[12] & 0x1F == 28 for p in packets[2:])
    assert [p[1] & 0x80 for p in packets] == [0] * (len(packets) - 1) + [0x80]  # marker: the last
    assert [int.from_bytes(p[2:4], "big") for p in packets[:3]] == [65534, 65535, 0]  # wraps
    rebuilt = bytes([(packets[2][12] & 0xE0) | (packets[2][13] & 0x1F)]) + b"".join(
        p[14:] for p in packets[2:]
    )
    assert rebuilt == nals[2] and packets[2][13] & 0x80 and packets[-1][13] & 0x40


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
