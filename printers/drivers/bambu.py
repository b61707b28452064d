"""Bambu Lab driver (X1, P1, A1) for printers in LAN mode (protocols.md §A).

MQTT over TLS (port 8883, user `bblp`, password = the LAN access code) carries status and
commands; jobs are uploaded by implicit FTPS (port 990) and started with `project_file`.
One MQTT connection per printer stays open (P1 serves a single client reliably); P1/A1 send
only the changed keys, so the reports are deep-merged into one state.

The printer's certificate is signed by Bambu's private CA, so it is not verified by default;
`cert_sha256` pins the certificate's SHA-256 fingerprint instead (TOFU).
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import json
import logging
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farm.core.states import PrinterState
from printers.colors import color_name
from printers.drivers import bambu_rtsp
from printers.drivers.bambu_ams import Feed, choose_feed, json_object
from printers.drivers.bambu_package import ONLY_3MF, plate_entry, project_file
from printers.drivers.bambu_tls import ImplicitFTPS, tls_context
from printers.drivers.base import (
    Driver,
    DriverError,
    PrinterConfig,
    PrinterStatus,
    ProgressCallback,
    printer_path,
)

log = logging.getLogger(__name__)

MQTT_PORT = 8883
FTPS_PORT = 990
USERNAME = "bblp"
SIGNATURE_REFUSED = 84033543  # 0x05024007 "mqtt message verify failed"
CANCELLED = 50348044  # 0x0300400C, what `stop` leaves in print_error
CHUNK_BYTES = 64 * 1024
STOP_CHECK_S = 0.5  # pause_until_change looks at `stop` this often
UPLOAD_MIN_TIMEOUT_S = 60.0
UPLOAD_BYTES_PER_S = 25_000  # printers write slowly; a 226 can take 30 s+ on H2D (bambuddy)
DEVELOPER_MODE_HINT = (
    "the printer refused an unsigned command (err_code 84033543, 'mqtt message verify failed'): "
    "enable LAN Only mode and then Developer Mode on the printer's screen "
    "(Settings > Network / LAN Only Mode > Developer Mode)"
)
ACCESS_CODE_HINT = "the access code is shown on the printer's screen (Settings > Network / LAN Only Mode)"
READY = ("IDLE", "FINISH", "FAILED")
BUSY_STATES = ("PREPARE", "SLICING", "RUNNING", "PAUSE")
# P1 firmware can keep MQTT up yet stop publishing; bambuddy reconnects after 60 s of silence
STALE_AFTER_S = 60.0
# What the printer's screen says for the codes a farm meets (protocols.md §A.6, BambuStudio issues)
KNOWN_ERRORS = {
    0x05004003: "the printer was unable to parse the file",
    0x0502403D: "the printer was unable to process the 3MF file",
    0x05004004: "device busy, cannot start a new task",
    0x0500C010: "MicroSD read/write exception",
    0x07FF8012: "failed to get AMS mapping table",
    0x07008012: "failed to get AMS mapping table",
}
_STATES: dict[str, PrinterState] = {
    "IDLE": PrinterState.IDLE,
    "PREPARE": PrinterState.PRINTING,
    "SLICING": PrinterState.PRINTING,
    "RUNNING": PrinterState.PRINTING,
    "PAUSE": PrinterState.PAUSED,
    "FINISH": PrinterState.FINISHED,
    "FAILED": PrinterState.FAILED,
}


def error_code(value: int) -> str:
    """117473286 -> '0700_8006', the form Bambu's wiki and the printer's screen use."""
    text = f"{value:08X}"
    return f"{text[:4]}_{text[4:]}"


def deep_merge(into: dict[str, Any], delta: dict[str, Any]) -> None:
    """Merge a P1/A1 partial report; nested objects merge, lists and scalars replace."""
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


class BambuDriver(Driver):
    protocol = "bambu"

    def __init__(
        self,
        config: PrinterConfig,
        *,
        ftps_port: int | None = None,
        cert_sha256: str | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        super().__init__(config)
        if not config.serial or not config.access_code:
            raise DriverError(
                f"printer {config.name!r} needs `serial` and `access_code` for the Bambu driver: "
                + ACCESS_CODE_HINT
            )
        self.serial: str = config.serial
        self.access_code: str = config.access_code
        self.mqtt_port = config.port or MQTT_PORT
        self.ftps_port = ftps_port or config.ftps_port or FTPS_PORT
        self._tls = tls_context(cert_sha256 or config.cert_sha256)
        self._lock = threading.Condition()
        self._state: dict[str, Any] = {}
        self._acks: dict[str, dict[str, Any]] = {}
        self._online = False
        self._attempted = False
        self._error: str | None = None
        self._seq = int(time.time() * 1000) % 2_000_000_000
        self._started_names: dict[str, str] = {}  # subtask_name -> remote name we started
        self._client: mqtt.Client | None = None
        self.stale_after_s = stale_after_s
        self._last_report_at = 0.0  # monotonic time of the last push_status
        self.reconnects = 0  # sessions dropped because the printer went silent

    # -- Driver interface

    def status(self) -> PrinterStatus:
        report = self._report()
        if report is None:
            return PrinterStatus(PrinterState.OFFLINE, message=self._offline_message())
        return self._unasked_pause(self._to_status(report))

    def pause_until_change(self, stop: threading.Event, timeout_s: float) -> None:
        """Ends early when a push changes gcode_state: the firmware gives the time left in whole
        minutes, so a print's end is seen from its FINISH push, not guessed from the time left."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            before = self._state.get("gcode_state")
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self._state.get("gcode_state") != before:
                    return
                # Slices, so that a `stop` (which cannot notify this lock) is seen within one.
                self._lock.wait(min(left, STOP_CHECK_S))

    def upload(
        self, path: Path, remote_name: str, *, start: bool, progress: ProgressCallback | None = None
    ) -> None:
        name = "/".join(p for p in printer_path(remote_name) if p)
        if not name.endswith(".gcode.3mf"):
            raise DriverError(f"cannot send {remote_name!r}: {ONLY_3MF}")
        plate, types = plate_entry(path)
        feed = self._may_store(name, start, types[0] if types else None)
        md5 = self._ftps_store(path, name, progress)
        if start:
            self._start(name, plate, md5, feed)

    def start(self, remote_name: str) -> None:
        name = "/".join(p for p in printer_path(remote_name) if p)
        self._start(name, "Metadata/plate_1.gcode", "", None)

    def _may_store(self, name: str, start: bool, file_material: str | None) -> Feed | None:
        """Checks before anything is uploaded; the slot to feed from when `start`.

        The printer lets an upload overwrite the file it is printing, which kills that print; and
        a job that cannot start here (busy, no slot with its material) is better refused before
        minutes of upload."""
        report = self._report()
        if report is None:
            if start:
                raise DriverError(f"cannot start {name!r}: {self._offline_message()}")
            return None  # the upload itself will say what is wrong
        state = str(report.get("gcode_state", "UNKNOWN"))
        if state in BUSY_STATES and self._file(report) == name.rsplit("/", 1)[-1]:
            raise DriverError(f"cannot replace {name!r}: the printer is printing that file")
        if not start:
            return None
        if state not in READY:  # project_file while busy can cancel the running job (bambuddy #2598)
            raise DriverError(f"cannot start {name!r} now: the printer is busy ({state.lower()})")
        material, color = self.filament
        return choose_feed(report, material or file_material, color)

    def pause(self) -> None:
        self._control("pause", ("PREPARE", "RUNNING"), ("PAUSE",))
        self.paused_by_farm = True

    def resume(self) -> None:
        self._control("resume", ("PAUSE",), ("RUNNING", "PREPARE"))
        self.paused_by_farm = False

    def cancel(self) -> None:
        self._control("stop", ("PREPARE", "RUNNING", "PAUSE", "SLICING"), ("FAILED", "IDLE"))
        self.paused_by_farm = False

    def snapshot(self) -> tuple[bytes, str] | None:
        """One JPEG frame from a P1/A1 camera (TCP 6000, TLS; bambu_camera's docstring has the
        framing); an X1's key frame (RTSPS on 322, H.264) made a JPEG by ffmpeg (bambu_rtsp)."""
        if self.config.model.upper().replace(" ", "").startswith("X1"):
            return self._x1_snapshot()
        port = self.config.camera_port or CAMERA_PORT
        where = f"{self.config.host}:{port}"
        auth = struct.pack("<IIII32s32s", 0x40, 0x3000, 0, 0, b"bblp", self.access_code.encode())
        try:
            with (
                socket.create_connection((self.config.host, port), timeout=self.config.timeout_s) as raw,
                self._tls.wrap_socket(raw, server_hostname=self.serial) as sock,
            ):
                sock.sendall(auth)
                size = struct.unpack("<IIII", _recv_exactly(sock, 16))[0]
                if not 0 < size <= MAX_FRAME:
                    raise DriverError(f"the camera at {where} announced a {size}-byte frame")
                frame = _recv_exactly(sock, size)
        except (OSError, ssl.SSLError, EOFError) as exc:
            raise DriverError(f"no frame from the camera at {where} (access code right?): {exc!r}") from exc
        if not (frame.startswith(b"\xff\xd8") and frame.endswith(b"\xff\xd9")):
            raise DriverError(f"the camera at {where} sent something other than a JPEG")
        return frame, "image/jpeg"

    def _x1_snapshot(self) -> tuple[bytes, str]:
        port = self.config.camera_port or RTSP_PORT
        try:
            image = bambu_rtsp.grab_jpeg(
                self._tls, self.config.host, port, self.serial, self.access_code, self.config.timeout_s
            )
        except (OSError, ssl.SSLError, subprocess.SubprocessError, bambu_rtsp.CameraError) as exc:
            where = f"rtsps://{self.config.host}:{port}{bambu_rtsp.PATH}"
            raise DriverError(f"no still from the camera at {where}: {exc}") from exc
        return image, "image/jpeg"

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        with self._lock:
            self._online = self._attempted = False
            self._state.clear()

    # -- MQTT connection

    @property
    def _report_topic(self) -> str:
        return f"device/{self.serial}/report"

    def _ensure_client(self) -> None:
        if self._client is not None:
            return
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"printfarm-{self.serial}-{id(self):x}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(USERNAME, self.access_code)
        client.tls_set_context(self._tls)
        client.tls_insecure_set(True)  # the CA is Bambu's private one; see `cert_sha256`
        client.max_inflight_messages_set(1000)  # paho's 20 wedges Bambu's broker (bambuddy #1164)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(self.config.host, self.mqtt_port, keepalive=30)
        self._client = client  # before loop_start: on_connect may run at once
        client.loop_start()

    def _on_connect(self, client: mqtt.Client, _: Any, __: Any, rc: Any, ___: Any) -> None:
        if client is not self._client:
            return  # a session dropped by close() or a stale-report reconnect
        with self._lock:
            self._attempted = True
            if rc.is_failure:
                self._online = False
                self._error = (
                    f"the printer refused the access code: {ACCESS_CODE_HINT}"
                    if rc.value in (4, 5, 134, 135)
                    else f"the printer refused the MQTT connection ({rc})"
                )
            else:
                self._online, self._error = True, None
                self._last_report_at = time.monotonic()  # the printer gets stale_after_s to speak
            self._lock.notify_all()
        if not rc.is_failure:
            client.subscribe(self._report_topic, qos=0)
            # one full snapshot after connecting; P1/A1 send only deltas after that
            client.publish(
                f"device/{self.serial}/request",
                json.dumps({"pushing": {"sequence_id": "0", "command": "pushall"}}),
                qos=0,
            )

    def _on_connect_fail(self, client: mqtt.Client, _: Any) -> None:
        if client is not self._client:
            return
        with self._lock:
            self._attempted, self._online = True, False
            self._error = self._tls.pin_error or "no MQTT answer (network down, printer off or wrong address)"
            self._lock.notify_all()

    def _on_disconnect(self, client: mqtt.Client, _: Any, __: Any, rc: Any, ___: Any) -> None:
        if client is not self._client:
            return
        with self._lock:
            self._online = False
            self._state.clear()  # a partial-report printer must be re-read in full
            self._error = self._error or f"the MQTT connection was lost ({rc})"
            self._lock.notify_all()

    def _on_message(self, client: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(message.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(doc, dict) or client is not self._client:
            return
        with self._lock:
            for cls, body in doc.items():
                if not isinstance(body, dict):
                    continue
                if cls == "print" and body.get("command") == "push_status":
                    deep_merge(self._state, body)
                    self._last_report_at = time.monotonic()
                elif body.get("sequence_id") is not None:
                    self._acks[str(body["sequence_id"])] = body
            self._lock.notify_all()

    def _report(self) -> dict[str, Any] | None:
        """The merged state; None when offline. Waits up to timeout_s for the first snapshot."""
        self._reconnect_if_silent()
        self._ensure_client()
        deadline = time.monotonic() + self.config.timeout_s
        with self._lock:
            self._lock.wait_for(
                lambda: (
                    (self._online and "gcode_state" in self._state) or (self._attempted and not self._online)
                ),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if not self._online or "gcode_state" not in self._state:
                return None
            return json.loads(json.dumps(self._state))  # a copy the MQTT thread cannot change

    def _reconnect_if_silent(self) -> None:
        """A printer that has published nothing for stale_after_s gets a fresh MQTT session, which
        sends pushall: a wedged P1 keeps the old one open but silent (§A.3)."""
        with self._lock:
            silent_for = time.monotonic() - self._last_report_at
            stale = self._client is not None and self._online and silent_for > self.stale_after_s
        if stale:
            name = self.config.name
            log.warning("%s: no report for %.0f s over an open MQTT session: reconnecting", name, silent_for)
            self.reconnects += 1
            self.close()

    def _offline_message(self) -> str:
        where = f"{self.config.host}:{self.mqtt_port}"
        if self._online:
            return f"connected to {where} but the printer sent no status report"
        return f"cannot reach the printer's MQTT at {where}: {self._error or 'no answer'}"

    def _publish(self, payload: dict[str, Any], *, qos: int) -> None:
        assert self._client is not None
        self._client.publish(f"device/{self.serial}/request", json.dumps(payload), qos=qos)

    def _next_seq(self) -> str:
        with self._lock:
            self._seq = self._seq % 2_000_000_000 + 1
            return str(self._seq)

    # -- commands

    def _command(self, body: dict[str, Any], reached: Iterable[str]) -> None:
        """Publish a `print` command; wait for its ack and for the state it leads to.

        A success ack alone does not mean the state moved yet (and some firmwares do not ack
        every command), so either the ack or the expected gcode_state ends the wait."""
        seq = self._next_seq()
        command = body["command"]
        self._publish({"print": {"sequence_id": seq, **body}}, qos=1)
        targets = set(reached)
        deadline = time.monotonic() + self.config.timeout_s
        with self._lock:

            def done() -> bool:
                ack = self._acks.get(seq)
                failed = ack is not None and str(ack.get("result", "")).lower() in ("failed", "fail")
                return failed or self._state.get("gcode_state") in targets or not self._online

            self._lock.wait_for(done, timeout=max(0.0, deadline - time.monotonic()))
            ack = self._acks.pop(seq, None)
            state = self._state.get("gcode_state")
        if ack is not None and str(ack.get("result", "")).lower() in ("failed", "fail"):
            raise DriverError(_refusal(command, ack))
        if state not in targets and ack is None:
            raise DriverError(
                f"the printer did not answer the {command!r} command within {self.config.timeout_s:g} s"
            )

    def _control(self, command: str, allowed: tuple[str, ...], reached: tuple[str, ...]) -> None:
        verb = {"stop": "cancel"}.get(command, command)
        report = self._report()
        if report is None:
            raise DriverError(f"cannot {verb}: {self._offline_message()}")
        state = str(report.get("gcode_state", "UNKNOWN"))
        if state not in allowed:
            raise DriverError(f"cannot {verb} the print: the printer is {state.lower()}")
        self._command({"command": command, "param": ""}, reached)

    def _start(self, name: str, plate: str, md5: str, feed: Feed | None) -> None:
        report = self._report()
        if report is None:
            raise DriverError(f"cannot start {name!r}: {self._offline_message()}")
        state = str(report.get("gcode_state", "UNKNOWN"))
        if state not in READY:  # project_file while busy can cancel the running job (bambuddy #2598)
            raise DriverError(f"cannot start {name!r} now: the printer is busy ({state.lower()})")
        if feed is None:
            feed = choose_feed(report, *self.filament)
        subtask = name.rsplit("/", 1)[-1].removesuffix(".gcode.3mf")
        job_id = str(int(time.time() * 1000) % 2_147_483_647 or 1)  # fresh per job, int32 for P1S
        with self._lock:
            self._started_names[subtask] = name
        self.paused_by_farm = False
        self._command(project_file(name, plate, md5, subtask, job_id, feed), ("PREPARE", "RUNNING"))

    # -- FTPS

    def _ftps_store(self, path: Path, name: str, progress: ProgressCallback | None) -> str:
        """STOR `path` as `name`, streamed; returns its MD5. Returns only after the printer's 226."""
        try:
            size = path.stat().st_size
            source = path.open("rb")
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror}") from exc
        where = f"{self.config.host}:{self.ftps_port}"
        ftp = ImplicitFTPS(context=self._tls, timeout=self.config.timeout_s)
        md5 = hashlib.md5()
        sent = 0
        try:
            with source:
                ftp.connect(self.config.host, self.ftps_port)
                ftp.login(USERNAME, self.access_code)
                ftp.prot_p()
                ftp.voidcmd("TYPE I")
                with contextlib.closing(ftp.transfercmd(f"STOR {name}")) as conn:
                    while chunk := source.read(CHUNK_BYTES):
                        conn.sendall(chunk)
                        md5.update(chunk)
                        sent += len(chunk)
                        if progress is not None:
                            progress(sent, size)
                # no TLS close_notify (unwrap): some firmwares hang on it; then wait for the 226
                if ftp.sock is not None:  # None only after quit()
                    ftp.sock.settimeout(max(UPLOAD_MIN_TIMEOUT_S, size / UPLOAD_BYTES_PER_S))
                ftp.voidresp()
        except ftplib.error_perm as exc:
            raise DriverError(_ftp_error(name, str(exc))) from exc
        except ftplib.Error as exc:
            if str(exc).startswith("426"):  # the printer lost the data connection mid-transfer
                raise DriverError(
                    f"cannot upload {name!r}: the FTPS connection to {where} broke off ({exc}); "
                    "nothing was started"
                ) from exc
            raise DriverError(f"upload of {name!r} to {where} failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            detail = self._tls.pin_error or repr(exc)
            if sent:
                raise DriverError(
                    f"cannot upload {name!r}: the FTPS connection to {where} broke off after "
                    f"{sent} of {size} bytes ({detail}); nothing was started"
                ) from exc
            raise DriverError(f"cannot upload {name!r}: no FTPS answer from {where} ({detail})") from exc
        finally:
            if ftp.sock is not None:
                with contextlib.suppress(OSError, EOFError, ftplib.Error):
                    ftp.quit()
            ftp.close()
        return md5.hexdigest().upper()  # the stock plugin sends it upper-case

    # -- status mapping

    def _to_status(self, report: dict[str, Any]) -> PrinterStatus:
        raw = str(report.get("gcode_state", "")).upper()
        state = _STATES.get(raw, PrinterState.BUSY)
        err = _int(report.get("print_error")) or 0
        message = None
        if raw not in _STATES:
            message = f"the printer reports {raw or 'no state'}"
        elif state == PrinterState.FAILED:
            known = KNOWN_ERRORS.get(err, "check the printer's screen")
            message = (
                "cancelled" if err in (0, CANCELLED) else f"the print failed ({error_code(err)}): {known}"
            )
        elif state == PrinterState.PAUSED and err:  # the printer paused itself: runout, a jam, an HMS error
            state = PrinterState.ATTENTION
            message = f"the printer paused the print ({error_code(err)}): someone must fix it at the printer"
        remaining = _int(report.get("mc_remaining_time"))
        tray = _feeding_tray(report)
        return PrinterStatus(
            state=state,
            progress=_float(report.get("mc_percent")) if state != PrinterState.IDLE else None,
            remaining_s=remaining * 60 if remaining is not None and state != PrinterState.IDLE else None,
            layer=_int(report.get("layer_num")) if state != PrinterState.IDLE else None,
            file=self._file(report),
            temperatures=_temperatures(report),
            error_code=error_code(err) if err and err != CANCELLED else None,
            message=message,
            material=str(tray["tray_type"]).upper() if tray else None,
            color=color_name(str(tray.get("tray_color") or "")) if tray else None,
        )

    def _file(self, report: dict[str, Any]) -> str | None:
        """The job's 3MF name: X1 reports the plate path inside it, so fall back on the subtask."""
        gcode_file = str(report.get("gcode_file") or "")
        if gcode_file.endswith(".3mf"):
            return gcode_file.rsplit("/", 1)[-1]
        subtask = str(report.get("subtask_name") or "")
        if not subtask:
            return None
        with self._lock:
            return self._started_names.get(subtask, f"{subtask}.gcode.3mf")


def _refusal(command: str, ack: dict[str, Any]) -> str:
    err = _int(ack.get("err_code")) or 0
    reason = str(ack.get("reason") or "")
    if err == SIGNATURE_REFUSED or "verify failed" in reason:
        return DEVELOPER_MODE_HINT
    code = f" ({error_code(err)})" if err else ""
    return f"the printer refused {command!r}{code}: {reason or 'no reason given'}"


def _ftp_error(name: str, text: str) -> str:
    if text.startswith("530"):
        return f"the printer rejected the access code for FTPS: {ACCESS_CODE_HINT}"
    if text.startswith(("553", "550")):
        return f"the printer cannot store {name!r} ({text}): is its SD card inserted and not full?"
    return f"the printer refused the upload of {name!r}: {text}"


def _feeding_tray(report: dict[str, Any]) -> dict[str, Any] | None:
    """The filament slot that feeds the nozzle: the AMS tray `tray_now` names (global id =
    unit * 4 + slot), or the external spool (`vt_tray`, tray_now 254) when there is no AMS."""
    ams = json_object(report.get("ams"))
    units = ams.get("ams") or []
    now = str(ams.get("tray_now", "254"))
    tray: Any = None
    if units and now.isdigit() and int(now) < 254:
        unit_id, slot = divmod(int(now), 4)
        unit: dict[str, Any] = next((u for u in units if str(u.get("id")) == str(unit_id)), {})
        tray = next((t for t in unit.get("tray") or [] if str(t.get("id")) == str(slot)), None)
    elif not units or now == "254":
        tray = report.get("vt_tray")
    return tray if isinstance(tray, dict) and tray.get("tray_type") else None


def _temperatures(report: dict[str, Any]) -> dict[str, float]:
    pairs = {"nozzle": "nozzle_temper", "bed": "bed_temper", "chamber": "chamber_temper"}
    return {key: float(report[f]) for key, f in pairs.items() if isinstance(report.get(f), int | float)}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return int(value) if isinstance(value, int | float) else None


CAMERA_PORT = 6000
RTSP_PORT = 322  # an X1's camera
MAX_FRAME = 8 << 20  # a 1280x720 JPEG is ~100 kB


def _recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 16))
        if not chunk:
            raise EOFError("the camera closed the connection")
        data += chunk
    return bytes(data)
