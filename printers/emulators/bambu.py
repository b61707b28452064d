"""A Bambu Lab printer in LAN mode, emulated over real TLS sockets (protocols.md §A.10).

Two services, standard library only (the certificate comes from the `openssl` CLI), around the
printer (bambu_printer.py):

* bambu_mqtt.py: a minimal MQTT 3.1.1 broker over TLS 1.2 (the printer's broker: user `bblp` +
  access code, CONNACK 5 on a wrong code) run by asyncio in a daemon thread. It publishes
  `push_status` on `device/<serial>/report` — the full object every tick on X1, only the changed
  keys on P1/A1 (`delta_reports`), everything after `pushall` — and answers `print.*` commands on
  `device/<serial>/request` with acks echoing `sequence_id`. With `developer_mode=False`
  every `print.*` command gets the firmware's signature refusal (err_code 84033543).
* bambu_ftps.py: an implicit FTPS server (TLS from the first byte, vsFTPd's replies) that, like
  the printer, refuses a data connection that does not resume the control connection's TLS
  session, and sends 226 only once the file is complete on disk.

As strict as the printers: it checks each job the way firmware does (bambu_firmware.py: the
package layout, the plate MD5, the header block, layer markers, the AMS mapping) and fails it with
the screen's error code; `project_file` while busy is refused, and on the A1 mini it also kills
the running print (bambuddy #2598); an upload over the file being printed kills that print;
`go_silent()` stops the reports over open sessions, like a wedged P1, until a client reconnects.

Printing runs in accelerated time: the plate G-code's estimate divided by `speed`, at most
`max_print_s`. `mc_remaining_time` is in the printer's own minutes (the estimate), like a real
printer, not the accelerated wall time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from printers.emulators.bambu_camera import CameraServer
from printers.emulators.bambu_ftps import FtpsServer
from printers.emulators.bambu_mqtt import Broker
from printers.emulators.bambu_printer import RUNOUT, SD_ERROR, Printer
from printers.emulators.bambu_rtsp import RtspServer
from printers.emulators.common import LOCAL_PRINT_NAME, FaultSwitches, storage_folder

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- TLS


def make_certificate(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A self-signed EC certificate with CN = serial, like the printer's leaf (not its CA chain)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", f"/CN={common_name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # X1C/H2D only complete a TLS 1.2 handshake
    ctx.load_cert_chain(cert, key)
    return ctx


# --------------------------------------------------------------------------- the emulator


class BambuEmulator(FaultSwitches):
    """A Bambu printer on two real TLS ports. `start()` serves in daemon threads; `stop()` ends them."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        mqtt_port: int = 0,
        ftps_port: int = 0,
        serial: str = "01S00A000000001",
        access_code: str = "12345678",
        model: str = "X1C",
        storage_dir: Path,
        speed: float = 60.0,
        max_print_s: float | None = None,
        developer_mode: bool = True,
        delta_reports: bool | None = None,
        report_interval_s: float = 0.5,
        spool: tuple[str, str] = ("PLA", "FFFFFFFF"),
        ams: list[tuple[str, str]] | None = None,
        camera_port: int = 0,
    ) -> None:
        self.host = host
        # P1 and A1 send JPEG frames on TCP 6000 (bambu_camera); an X1 H.264 over RTSPS on 322 (bambu_rtsp).
        self._camera_requested = camera_port
        self._camera: CameraServer | RtspServer | None = None
        self.serial = serial
        self.access_code = access_code
        # X1 sends the full object every push; P1/A1 only what changed (§A.6)
        self.delta_reports = not model.upper().startswith("X1") if delta_reports is None else delta_reports
        self.report_interval_s = report_interval_s
        self.printer = Printer(
            root=storage_folder(storage_dir),
            model=model,
            speed=speed,
            max_print_s=max_print_s,
            developer_mode=developer_mode,
            spool=spool,
            ams=ams,
        )
        self._requested = (mqtt_port, ftps_port)
        self._cert_dir: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mqtt_server: asyncio.Server | None = None
        self._broker: Broker | None = None
        self._ftps: FtpsServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self.cert_sha256: str | None = None  # hex SHA-256 of the DER certificate, for pinning tests
        self.cut_upload_after: int | None = None  # abort_next_upload
        self.silent = False  # go_silent(): MQTT stays up, reports stop until a client reconnects

    @property
    def received(self) -> list[Path]:
        """Every file an FTPS upload stored, in order."""
        return self.printer.received

    @property
    def state(self) -> str:
        """The current `gcode_state` (IDLE, PREPARE, RUNNING, PAUSE, FINISH, FAILED)."""
        return self.printer.gcode_state()

    @property
    def model(self) -> str:
        return self.printer.model

    @property
    def developer_mode(self) -> bool:
        return self.printer.developer_mode

    @developer_mode.setter
    def developer_mode(self, value: bool) -> None:
        self.printer.developer_mode = value

    @property
    def mqtt_port(self) -> int:
        if self._mqtt_server is not None:
            return int(self._mqtt_server.sockets[0].getsockname()[1])
        if self._requested[0]:
            return self._requested[0]
        raise RuntimeError("the emulator is not started; port=0 is resolved by start()")

    @property
    def ftps_port(self) -> int:
        if self._ftps is not None:
            return self._ftps.port
        if self._requested[1]:
            return self._requested[1]
        raise RuntimeError("the emulator is not started; port=0 is resolved by start()")

    port = mqtt_port  # the port a PrinterConfig names

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"mqtts://{host}:{self.mqtt_port}"

    def start(self) -> BambuEmulator:
        if self._loop is not None:
            return self
        self._stopped.clear()
        if self._cert_dir is None:
            self._cert_dir = Path(tempfile.mkdtemp(prefix="bambu-emu-"))
            cert, _key = make_certificate(self._cert_dir, self.serial)
            self.cert_sha256 = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
        context = server_context(self._cert_dir / "cert.pem", self._cert_dir / "key.pem")
        self._ftps = FtpsServer(self, context, self._requested[1])
        self._start_thread(self._ftps.serve, "bambu-ftps-accept")
        camera = RtspServer if self.model.upper().startswith("X1") else CameraServer
        self._camera = camera(self.host, self._camera_requested, context, self.access_code)
        self._start_thread(self._camera.serve, "bambu-camera-accept")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._start_thread(lambda: self._run_loop(context, ready), "bambu-mqtt")
        if not ready.wait(10.0) or self._mqtt_server is None:
            self.stop()
            raise RuntimeError(f"the MQTT broker did not start on {self.host}:{self._requested[0]}")
        log.info("Bambu emulator (%s) MQTT on %s, FTPS on %d", self.model, self.url, self.ftps_port)
        return self

    def _start_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run_loop(self, context: ssl.SSLContext, ready: threading.Event) -> None:
        assert self._loop is not None
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._broker = Broker(self)

        async def serve() -> None:
            assert self._broker is not None
            try:
                self._mqtt_server = await asyncio.start_server(
                    self._broker.handle, self.host, self._requested[0], ssl=context
                )
            finally:
                ready.set()
            loop.create_task(self._broker.tick())

        loop.run_until_complete(serve())
        loop.run_forever()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    @property
    def camera_port(self) -> int | None:
        """The camera's port once started: a P1/A1's JPEG stream, an X1's RTSPS (None: not started)."""
        return self._camera.port if self._camera is not None else None

    def stop(self) -> None:
        if self._camera is not None:
            self._camera_requested = self._camera.port
            self._camera.close()
            self._camera = None
        if self._ftps is not None:
            self._requested = (self._requested[0], self._ftps.port)  # a restart comes back on these ports
            self._ftps.close()
            self._ftps = None
        loop, self._loop = self._loop, None
        if loop is not None and self._mqtt_server is not None:
            self._requested = (self.mqtt_port, self._requested[1])
            asyncio.run_coroutine_threadsafe(self._close_mqtt(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._mqtt_server = None
        self._stopped.set()

    # -- fault switches (common.FaultSwitches)

    def go_offline(self) -> None:
        self.stop()

    def come_back(self) -> None:
        self.start()

    def go_silent(self) -> None:
        """Stop publishing reports but keep every MQTT session open, like a wedged P1; the next
        client CONNECT brings the reports back (what bambuddy's 60 s reconnect relies on)."""
        self.silent = True

    @property
    def mqtt_connections(self) -> int:
        return self._broker.connections if self._broker is not None else 0

    def abort_next_upload(self, after_bytes: int = 64 * 1024) -> None:
        self.cut_upload_after = after_bytes

    def fail_print(self, message: str = "MicroSD read/write exception", code: int | None = None) -> None:
        self.printer.fail(SD_ERROR if code is None else code)  # the report carries the code only

    def start_local_print(self, name: str = LOCAL_PRINT_NAME, seconds: float = 600.0) -> None:
        self.printer.start_local(name, seconds)

    def need_attention(self, message: str = "Filament runout", code: int | None = None) -> None:
        self.printer.need_attention(RUNOUT if code is None else code)

    def attend(self) -> None:
        self.printer.resume()

    def close(self) -> None:
        """Stop and remove the generated certificate."""
        self.stop()
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None

    async def _close_mqtt(self) -> None:
        assert self._mqtt_server is not None and self._broker is not None
        self._mqtt_server.close()
        for session in list(self._broker.sessions):
            session.writer.close()
        self._broker.sessions.clear()
        await self._mqtt_server.wait_closed()

    def serve_forever(self) -> None:
        """Start if needed and block until `stop()` is called from another thread."""
        self.start()
        while not self._stopped.wait(0.5):
            pass

    def __enter__(self) -> BambuEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
