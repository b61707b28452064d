"""A Bambu Lab printer in LAN mode, emulated over real TLS sockets (protocols.md §A.10).

Two services, standard library only (the certificate comes from the `openssl` CLI):

* a minimal MQTT 3.1.1 broker over TLS 1.2 (the printer's broker: user `bblp` + access code,
  CONNACK 5 on a wrong code) run by asyncio in a daemon thread. It publishes `push_status` on
  `device/<serial>/report` — the full object every tick on X1, only the changed keys on P1/A1
  (`delta_reports`), everything after `pushall` — and answers `print.*` commands on
  `device/<serial>/request` with acks echoing `sequence_id`. With `developer_mode=False`
  every `print.*` command gets the firmware's signature refusal (err_code 84033543).
* an implicit FTPS server (TLS from the first byte, vsFTPd's replies) that, like the printer,
  refuses a data connection that does not resume the control connection's TLS session, and
  sends 226 only once the file is complete on disk.

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
import contextlib
import hashlib
import json
import logging
import math
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from printers.emulators.bambu_camera import CameraServer
from printers.emulators.bambu_firmware import check_ams_mapping, inspect_package
from printers.emulators.bambu_rtsp import RtspServer
from printers.emulators.common import (
    FALLBACK_PRINT_S,
    LOCAL_PRINT_NAME,
    FaultSwitches,
    record_print,
)
from printers.emulators.tls_server import TlsThreadServer

log = logging.getLogger(__name__)

USERNAME = "bblp"
SIGNATURE_REFUSED = 84033543  # 0x05024007
VERIFY_FAILED = "mqtt message verify failed"
CANCELLED = 50348044  # 0x0300400C, reported after `stop`
BUSY = 0x05004004  # "device busy, cannot start a new task"
BAD_3MF = 0x0502403D  # "unable to process the 3MF"
SD_ERROR = 0x0500C010  # "MicroSD read/write exception": a print that dies mid-way
RUNOUT = 0x07FF8011  # the external spool ran out: the printer pauses and waits for a person
STAGE_PAUSED_BY_USER, STAGE_RUNOUT = 16, 6  # stg_cur while paused (pybambu CURRENT_STAGE_IDS)
PREPARE_S = 0.5  # PREPARE (download/unzip/heat) before RUNNING, in real seconds
UNZIP_S = 0.2  # a package the firmware cannot use fails this far into PREPARE
SILENT_HEARTBEAT_S = 5.0  # a P1/A1 with nothing new still pushes a few keys this often
CANCEL_ERROR_S = 2.0  # how long print_error stays at CANCELLED after a stop
AMBIENT_C = 25.0
CHUNK_BYTES = 64 * 1024
MODEL_CODES = {
    "X1C": "BL-P001",
    "X1": "BL-P002",
    "X1E": "C13",
    "P1P": "C11",
    "P1S": "C12",
    "A1": "N2S",
    "A1MINI": "N1",
}
# `print.fun` on X1: bit 0x20000000 set = signatures required (pybambu Print_Fun_Values).
FUN_DEV_MODE = "3EC18FFF9CFF"
FUN_SIGNED = "3EC1AFFF9CFF"
_URL_PREFIXES = ("ftp:///", "ftp://", "file:///sdcard/", "file:///mnt/sdcard/")


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


# --------------------------------------------------------------------------- printer


@dataclass
class Job:
    file: str
    subtask_name: str
    task_id: str
    estimate_s: float
    duration_s: float
    layers: int
    started: float
    marked_layers: int | None = None  # layer changes the G-code announces; None: count by progress
    doomed: tuple[int, str] | None = None  # the firmware will fail it while unzipping: (code, reason)
    paused_at: float | None = None
    paused_total: float = 0.0
    stopped_at: float | None = None

    def elapsed(self, now: float) -> float:
        end = self.stopped_at or self.paused_at or now
        return max(0.0, end - self.started - self.paused_total)


class CommandError(Exception):
    def __init__(self, reason: str, print_error: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.print_error = print_error


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            md5.update(block)
    return md5.hexdigest()


class Printer:
    """The job state machine; every method takes the lock (FTPS threads and the MQTT loop share it)."""

    def __init__(
        self,
        *,
        root: Path,
        model: str,
        speed: float,
        max_print_s: float | None,
        developer_mode: bool,
        spool: tuple[str, str] = ("PLA", "FFFFFFFF"),
        ams: list[tuple[str, str]] | None = None,
    ) -> None:
        self.root = root
        self.model = model
        self.spool = spool  # the external spool: (type, RGBA colour)
        self.ams = ams  # one AMS unit's trays, the first one feeding; None: no AMS
        self.speed = speed
        self.max_print_s = max_print_s
        self.developer_mode = developer_mode
        self.received: list[Path] = []
        self.project_files: list[dict[str, Any]] = []  # every project_file command, as received
        self.job: Job | None = None
        self.print_error = 0
        self.pause_stage = STAGE_PAUSED_BY_USER
        self._lock = threading.RLock()
        self._next_task = 1

    def local_path(self, name: str) -> Path:
        path = (self.root / name.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise CommandError(f"{name!r} is outside the storage")
        return path

    def gcode_state(self, now: float | None = None) -> str:
        with self._lock:
            return self._state(time.monotonic() if now is None else now)

    def _state(self, now: float) -> str:
        job = self.job
        if job is None:
            return "IDLE"
        if job.doomed is not None and job.stopped_at is None and now - job.started >= UNZIP_S:
            job.stopped_at = job.started + UNZIP_S
            self.print_error = job.doomed[0]
            log.info("the firmware failed %s: %s", job.file, job.doomed[1])
        if job.stopped_at is not None:
            return "FAILED"
        if job.paused_at is not None:
            return "PAUSE"
        elapsed = job.elapsed(now)
        if elapsed < PREPARE_S:
            return "PREPARE"
        return "RUNNING" if elapsed < PREPARE_S + job.duration_s else "FINISH"

    @property
    def a1_mini(self) -> bool:
        return self.model.upper().replace(" ", "").replace("-", "") in ("A1MINI", "A1M", "N1")

    def project_file(self, cmd: dict[str, Any]) -> None:
        with self._lock:
            self.project_files.append(dict(cmd))
            now = time.monotonic()
            if self._state(now) not in ("IDLE", "FINISH", "FAILED"):
                if self.a1_mini and self.job is not None:  # bambuddy #2598: the running print is lost
                    self.job.stopped_at = self.job.paused_at or now
                self.print_error = BUSY
                raise CommandError("device busy, cannot start a new task", BUSY)
            url = str(cmd.get("url") or cmd.get("file") or "")
            name = next((url[len(p) :] for p in _URL_PREFIXES if url.startswith(p)), url)
            path = self.local_path(name)
            if not path.is_file():
                raise CommandError(f"no file {name!r} on the storage", BAD_3MF)
            md5 = str(cmd.get("md5") or "")
            if md5 and md5.lower() != file_md5(path):
                raise CommandError("md5 of the 3MF does not match", BAD_3MF)
            plate = inspect_package(path, str(cmd.get("param") or "Metadata/plate_1.gcode"))
            doomed = plate.problem or check_ams_mapping(cmd, self.ams, self.spool, plate.filament_types)
            estimate = plate.estimate_s or FALLBACK_PRINT_S * self.speed
            duration = estimate / self.speed
            if self.max_print_s is not None:
                duration = min(duration, self.max_print_s)
            self.print_error = 0
            self.job = Job(
                file=name,
                subtask_name=str(cmd.get("subtask_name") or Path(name).name.removesuffix(".gcode.3mf")),
                task_id=str(cmd.get("task_id") or self._next_task),
                estimate_s=estimate,
                duration_s=duration,
                layers=plate.layers or 1,
                started=time.monotonic(),
                marked_layers=plate.marked_layers,
                doomed=doomed,
            )
            self._next_task += 1
            if doomed is None:
                record_print(self.root, name, duration)

    def overwrite(self, path: Path) -> None:
        """An upload is replacing `path`: a print reading it from the card dies (the file changes
        under it), as on the real printer, which lets a client overwrite the file it prints."""
        with self._lock:
            job, now = self.job, time.monotonic()
            if job is None or self._state(now) not in ("PREPARE", "RUNNING", "PAUSE"):
                return
            with contextlib.suppress(CommandError):
                if self.local_path(job.file) == path.resolve():
                    job.stopped_at = job.paused_at or now
                    self.print_error = SD_ERROR

    def pause(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING"):
                raise CommandError("no print to pause")
            self.job.paused_at = now
            self.pause_stage = STAGE_PAUSED_BY_USER

    def resume(self) -> None:
        with self._lock:
            job = self.job
            if job is None or job.paused_at is None or job.stopped_at is not None:
                raise CommandError("no paused print to resume")
            job.paused_total += time.monotonic() - job.paused_at
            job.paused_at = None
            self.print_error = 0

    # -- faults

    def fail(self, code: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING", "PAUSE"):
                raise RuntimeError("fail_print needs a running print")
            self.job.stopped_at = self.job.paused_at or now
            self.print_error = code

    def need_attention(self, code: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING"):
                raise RuntimeError("need_attention needs a running print")
            self.job.paused_at = now
            self.print_error, self.pause_stage = code, STAGE_RUNOUT

    def start_local(self, name: str, seconds: float) -> None:
        """A print started from the printer's screen: a file on its storage, not from the farm."""
        with self._lock:
            now = time.monotonic()
            if self._state(now) not in ("IDLE", "FINISH", "FAILED"):
                raise RuntimeError(f"the printer is {self._state(now)}, not ready for a local print")
            self.print_error = 0
            self.job = Job(
                file=name,
                subtask_name=Path(name).name.removesuffix(".gcode.3mf").removesuffix(".gcode"),
                task_id=str(self._next_task),
                estimate_s=seconds * self.speed,
                duration_s=max(seconds, 0.001),
                layers=10,
                started=now,
            )
            self._next_task += 1

    def stop(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING", "PAUSE"):
                raise CommandError("no print to stop")
            self.job.stopped_at = self.job.paused_at or now
            self.print_error = CANCELLED

    def report(self) -> dict[str, Any]:
        """The push_status fields the farm and the common clients read (§A.6)."""
        with self._lock:
            now = time.monotonic()
            state, job = self._state(now), self.job
            stopped = job.stopped_at if job is not None else None
            if stopped is not None and self.print_error == CANCELLED and now - stopped > CANCEL_ERROR_S:
                self.print_error = 0  # the cancel code is reported only briefly
            data: dict[str, Any] = {
                "command": "push_status",
                "gcode_state": state,
                "print_error": self.print_error,
                "hms": [],
                "print_type": "idle" if job is None else "local",
                "sdcard": True,
                "spd_lvl": 2,
                "spd_mag": 100,
                "lights_report": [{"node": "chamber_light", "mode": "on"}],
                "wifi_signal": "-42dBm",
                "vt_tray": _tray("254", *self.spool),
                "ams": self._ams_report(),
                "chamber_temper": AMBIENT_C,
                **self._job_fields(state, job, now),
            }
            if self.model.upper().startswith("X1"):
                data["fun"] = FUN_DEV_MODE if self.developer_mode else FUN_SIGNED
            return data

    def _ams_report(self) -> dict[str, Any]:
        if not self.ams:
            return {"ams": [], "ams_exist_bits": "0", "tray_exist_bits": "0", "tray_now": "254"}
        trays = [_tray(str(i), kind, color) for i, (kind, color) in enumerate(self.ams[:4])]
        unit = {"id": "0", "humidity": "4", "temp": "24.5", "tray": trays}
        bits = f"{(1 << len(trays)) - 1:x}"
        return {"ams": [unit], "ams_exist_bits": "1", "tray_exist_bits": bits, "tray_now": "0"}

    def _job_fields(self, state: str, job: Job | None, now: float) -> dict[str, Any]:
        if job is None:
            return {
                "mc_percent": 0, "mc_remaining_time": 0, "layer_num": 0, "total_layer_num": 0,
                "subtask_name": "", "gcode_file": "", "gcode_file_prepare_percent": "0",
                "stg_cur": 255, "mc_print_stage": "1", "task_id": "0", "subtask_id": "0",
                "project_id": "0", "profile_id": "0", **_temperatures(0.0, 0.0),
            }  # fmt: skip
        elapsed = job.elapsed(now)
        fraction = min(1.0, max(0.0, elapsed - PREPARE_S) / job.duration_s) if job.duration_s else 1.0
        busy = state in ("PREPARE", "RUNNING", "PAUSE")
        heat = min(1.0, elapsed / PREPARE_S)
        return {
            "mc_percent": int(fraction * 100),
            "mc_remaining_time": math.ceil(job.estimate_s * (1 - fraction) / 60) if busy else 0,
            "layer_num": _layer(job, fraction),
            "total_layer_num": job.layers,
            "subtask_name": job.subtask_name,
            # X1 reports the plate inside the unpacked job, P1/A1 the 3MF itself (pybambu models.py)
            "gcode_file": "/data/Metadata/plate_1.gcode" if self.model.upper().startswith("X1") else job.file,
            "gcode_file_prepare_percent": str(int(heat * 100)),
            "stg_cur": {"PREPARE": 2, "RUNNING": 0, "PAUSE": self.pause_stage}.get(state, 255),
            "mc_print_stage": "2" if busy else "1",
            "task_id": job.task_id,
            "subtask_id": job.task_id,
            "project_id": job.task_id,
            "profile_id": "0",
            **_temperatures(heat if busy else 0.0, 1.0 if busy else 0.0),
        }


def _layer(job: Job, fraction: float) -> int:
    """The firmware counts layers from the G-code's M73 L / M991 markers: none, and it stays 0."""
    marked = job.layers if job.marked_layers is None else min(job.layers, job.marked_layers)
    return min(marked, math.ceil(fraction * marked))


def _tray(tray_id: str, kind: str, color: str) -> dict[str, Any]:
    """One filament slot as the printer reports it (every field bambulabs-api's FilamentTray reads)."""
    hot = {"PLA": (190, 230), "PETG": (220, 260), "ABS": (240, 270), "ASA": (240, 270), "TPU": (200, 250)}
    low, high = hot.get(kind.upper(), (190, 250))
    return {
        "id": tray_id, "k": 0.02, "n": 1, "tag_uid": "0000000000000000", "tray_id_name": "",
        "tray_info_idx": "", "tray_type": kind, "tray_sub_brands": "", "tray_color": color,
        "tray_weight": "1000", "tray_diameter": "1.75", "tray_temp": "0", "tray_time": "0",
        "bed_temp_type": "0", "bed_temp": "0", "nozzle_temp_max": str(high), "nozzle_temp_min": str(low),
        "xcam_info": "", "tray_uuid": "00000000000000000000000000000000", "remain": 80,
    }  # fmt: skip


def _temperatures(heat: float, target: float) -> dict[str, float]:
    nozzle, bed = 220.0 * target, 55.0 * target
    return {
        "nozzle_temper": round(AMBIENT_C + (max(nozzle, AMBIENT_C) - AMBIENT_C) * heat, 1),
        "nozzle_target_temper": nozzle,
        "bed_temper": round(AMBIENT_C + (max(bed, AMBIENT_C) - AMBIENT_C) * heat, 1),
        "bed_target_temper": bed,
    }


# --------------------------------------------------------------------------- MQTT 3.1.1 wire format

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
CONNACK_BAD_PROTOCOL, CONNACK_NOT_AUTHORIZED = 1, 5


class MqttProtocolError(Exception):
    pass


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + encode_length(len(body)) + body


def mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


class Reader:
    """Cursor over one packet's body."""

    def __init__(self, body: bytes) -> None:
        self.body, self.pos = body, 0

    def u8(self) -> int:
        if self.pos >= len(self.body):
            raise MqttProtocolError("truncated packet")
        self.pos += 1
        return self.body[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise MqttProtocolError("truncated packet")
        (value,) = struct.unpack_from("!H", self.body, self.pos)
        self.pos += 2
        return int(value)

    def raw(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.body):
            raise MqttProtocolError("truncated packet")
        self.pos, value = self.pos + n, self.body[self.pos : self.pos + n]
        return value

    def text(self) -> str:
        return self.raw().decode("utf-8", "replace")

    def rest(self) -> bytes:
        return self.body[self.pos :]

    def done(self) -> bool:
        return self.pos >= len(self.body)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return first >> 4, first & 0x0F, await reader.readexactly(length)
    raise MqttProtocolError("malformed remaining length")


def topic_matches(pattern: str, topic: str) -> bool:
    pat, top = pattern.split("/"), topic.split("/")
    for i, part in enumerate(pat):
        if part == "#":
            return True
        if i >= len(top) or (part != "+" and part != top[i]):
            return False
    return len(pat) == len(top)


@dataclass(eq=False)
class Session:
    writer: asyncio.StreamWriter
    client_id: str = ""
    filters: set[str] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


# --------------------------------------------------------------------------- MQTT broker


class Broker:
    """The printer's broker and the printer's MQTT brain, on one asyncio loop."""

    def __init__(self, emulator: BambuEmulator) -> None:
        self.emu = emulator
        self.sessions: set[Session] = set()
        self.report_topic = f"device/{emulator.serial}/report"
        self.request_topic = f"device/{emulator.serial}/request"
        self._last_sent: dict[str, Any] = {}
        self._last_push = 0.0
        self._push_seq = 0
        self.connections = 0  # MQTT sessions accepted, for tests of reconnects

    # -- connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        try:
            kind, _, body = await asyncio.wait_for(read_packet(reader), 10.0)
            keepalive = self._connect(session, kind, body)
            if keepalive is None:
                return
            self.sessions.add(session)
            timeout = keepalive * 1.5 if keepalive else None
            while True:
                kind, flags, body = await asyncio.wait_for(read_packet(reader), timeout)
                if kind == DISCONNECT:
                    return
                self._dispatch(session, kind, flags, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass
        except MqttProtocolError as exc:
            log.info("MQTT client %r: protocol error: %s", session.client_id, exc)
        finally:
            self.sessions.discard(session)
            writer.close()

    def _connect(self, session: Session, kind: int, body: bytes) -> int | None:
        """CONNACK; returns the keepalive, or None when the client is refused."""
        if kind != CONNECT:
            raise MqttProtocolError("first packet is not CONNECT")
        r = Reader(body)
        name, level, flags, keepalive = r.text(), r.u8(), r.u8(), r.u16()
        if name != "MQTT" or level != 4:
            session.send(packet(CONNACK, bytes([0, CONNACK_BAD_PROTOCOL])))
            return None
        session.client_id = r.text()
        if flags & 0x04:  # will topic and message: accepted, never sent
            r.raw(), r.raw()
        user = r.text() if flags & 0x80 else None
        password = r.text() if flags & 0x40 else None
        if user != USERNAME or password != self.emu.access_code:
            session.send(packet(CONNACK, bytes([0, CONNACK_NOT_AUTHORIZED])))
            return None
        session.send(packet(CONNACK, bytes([0, 0])))
        self.connections += 1
        self.emu.silent = False  # what clients do to a silent P1 works: a new session gets reports
        return keepalive

    def _dispatch(self, session: Session, kind: int, flags: int, body: bytes) -> None:
        r = Reader(body)
        if kind == PUBLISH:
            qos = (flags >> 1) & 3
            topic = r.text()
            if qos == 2:
                raise MqttProtocolError("QoS 2 is not supported")
            if qos == 1:
                session.send(packet(PUBACK, struct.pack("!H", r.u16())))
            self._on_publish(topic, r.rest())
        elif kind == SUBSCRIBE:
            pid, granted = r.u16(), bytearray()
            while not r.done():
                session.filters.add(r.text())
                granted.append(min(r.u8() & 3, 1))
            session.send(packet(SUBACK, struct.pack("!H", pid) + bytes(granted)))
        elif kind == UNSUBSCRIBE:
            pid = r.u16()
            while not r.done():
                session.filters.discard(r.text())
            session.send(packet(UNSUBACK, struct.pack("!H", pid)))
        elif kind == PINGREQ:
            session.send(packet(PINGRESP, b""))
        else:
            raise MqttProtocolError(f"unexpected packet type {kind}")

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        data = packet(PUBLISH, mqtt_string(topic) + json.dumps(payload).encode())
        for session in list(self.sessions):
            if any(topic_matches(f, topic) for f in session.filters):
                session.send(data)

    # -- the printer's side

    def _on_publish(self, topic: str, payload: bytes) -> None:
        if topic != self.request_topic:
            return
        try:
            message = json.loads(payload)
        except json.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        # bambulabs-api sends pushing + info + upgrade in one message: handle every class
        for cls, cmd in message.items():
            if isinstance(cmd, dict):
                self._on_command(cls, cmd)

    def _on_command(self, cls: str, cmd: dict[str, Any]) -> None:
        command = str(cmd.get("command", ""))
        if cls == "pushing" and command in ("pushall", "start"):
            self.push(full=True)
        elif cls == "info" and command == "get_version":
            self._ack(cls, cmd, module=self._modules())
        elif cls == "print":
            self._on_print(cmd, command)

    def _on_print(self, cmd: dict[str, Any], command: str) -> None:
        if not self.emu.printer.developer_mode:
            self._ack("print", cmd, result="failed", reason=VERIFY_FAILED, err_code=SIGNATURE_REFUSED)
            return
        actions = {
            "project_file": self.emu.printer.project_file,
            "pause": lambda _: self.emu.printer.pause(),
            "resume": lambda _: self.emu.printer.resume(),
            "stop": lambda _: self.emu.printer.stop(),
        }
        try:
            if command in actions:
                actions[command](cmd)
        except CommandError as exc:
            self.push(full=False)
            self._ack("print", cmd, result="failed", reason=exc.reason, err_code=exc.print_error)
            return
        self.push(full=False)  # the new state before the ack, so an acked command is visible
        self._ack("print", cmd, result="success", reason="success")

    def _ack(self, cls: str, cmd: dict[str, Any], **fields: Any) -> None:
        ack = {k: v for k, v in cmd.items() if k in ("command", "sequence_id", "param", "url")}
        self.publish(self.report_topic, {cls: ack | fields})

    def _modules(self) -> list[dict[str, str]]:
        code = MODEL_CODES.get(self.emu.printer.model.upper().replace(" ", ""), "BL-P001")
        serial = self.emu.serial
        return [
            {"name": "ota", "sw_ver": "01.08.02.00", "hw_ver": "", "sn": serial, "project_name": code},
            {"name": "mc", "sw_ver": "00.00.30.00", "hw_ver": "MC01", "sn": serial},
        ]

    def push(self, *, full: bool) -> None:
        """A push_status: the whole object, or (P1/A1 between pushalls) only the changed keys."""
        if self.emu.silent:  # a P1 that keeps TCP up but publishes nothing (§A.3)
            return
        report = self.emu.printer.report()
        body = report
        if not full and self.emu.delta_reports:
            body = {k: v for k, v in report.items() if self._last_sent.get(k) != v}
            quiet = time.monotonic() - self._last_push < SILENT_HEARTBEAT_S
            if set(body) <= {"command"} and quiet:
                return
            body["command"] = "push_status"
        self._last_push = time.monotonic()
        self._last_sent = report
        self._push_seq += 1
        msg = 0 if full or not self.emu.delta_reports else 1  # 0 = full snapshot (ha-bambulab)
        body = body | {"sequence_id": str(self._push_seq), "msg": msg}
        self.publish(self.report_topic, {"print": body})

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.emu.report_interval_s)
            self.push(full=not self.emu.delta_reports)


# --------------------------------------------------------------------------- FTPS


class FtpsServer(TlsThreadServer):
    """Implicit FTPS (vsFTPd replies), one thread per control connection, passive mode only."""

    thread_name = "bambu-ftps"

    def __init__(self, emulator: BambuEmulator, context: ssl.SSLContext, port: int) -> None:
        super().__init__(emulator.host, port, context)
        self.emu = emulator

    def handle(self, sock: ssl.SSLSocket) -> None:
        FtpSession(self, sock).run()


class FtpSession:
    def __init__(self, server: FtpsServer, sock: ssl.SSLSocket) -> None:
        self.server = server
        self.sock = sock
        self.file = sock.makefile("rb")
        self.user: str | None = None
        self.logged_in = False
        self.prot_private = False
        self.passive: socket.socket | None = None

    def reply(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def run(self) -> None:
        self.reply("220 (vsFTPd 3.0.3)")
        try:
            while line := self.file.readline(4096):
                verb, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
                if not self.command(verb.upper(), arg):
                    return
        finally:
            if self.passive is not None:
                self.passive.close()

    def command(self, verb: str, arg: str) -> bool:
        """Answer one command; False ends the session."""
        if verb == "QUIT":
            self.reply("221 Goodbye.")
            return False
        if verb == "USER":
            self.user = arg
            self.reply("331 Please specify the password.")
        elif verb == "PASS":
            self.logged_in = self.user == USERNAME and arg == self.server.emu.access_code
            self.reply("230 Login successful." if self.logged_in else "530 Login incorrect.")
        elif not self.logged_in:
            self.reply("530 Please login with USER and PASS.")
        else:
            handler = getattr(self, f"_{verb.lower()}", None)
            if handler is None:
                self.reply("500 Unknown command.")
            else:
                handler(arg)
        return True

    # -- session settings

    def _pbsz(self, _: str) -> None:
        self.reply("200 PBSZ set to 0.")

    def _prot(self, arg: str) -> None:
        self.prot_private = arg.upper() == "P"
        self.reply("200 PROT now Private." if self.prot_private else "200 PROT now Clear.")

    def _type(self, arg: str) -> None:
        mode = "ASCII" if arg.upper().startswith("A") else "Binary"
        self.reply(f"200 Switching to {mode} mode.")

    def _syst(self, _: str) -> None:
        self.reply("215 UNIX Type: L8")

    def _noop(self, _: str) -> None:
        self.reply("200 NOOP ok.")

    def _pwd(self, _: str) -> None:
        self.reply('257 "/" is the current directory')

    def _cwd(self, arg: str) -> None:
        if arg in ("/", "."):
            self.reply("250 Directory successfully changed.")
        else:
            self.reply("550 Failed to change directory.")

    def _pasv(self, _: str) -> None:
        port = self._listen()
        host = self.sock.getsockname()[0].replace(".", ",")
        self.reply(f"227 Entering Passive Mode ({host},{port >> 8},{port & 0xFF}).")

    def _epsv(self, _: str) -> None:
        self.reply(f"229 Entering Extended Passive Mode (|||{self._listen()}|)")

    def _listen(self) -> int:
        if self.passive is not None:
            self.passive.close()
        self.passive = socket.create_server((self.sock.getsockname()[0], 0))
        self.passive.settimeout(10.0)
        return int(self.passive.getsockname()[1])

    # -- files

    def _path(self, arg: str) -> Path | None:
        try:
            return self.server.emu.printer.local_path(arg)
        except CommandError:
            return None

    def _size(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.is_file():
            self.reply("550 Could not get file size.")
        else:
            self.reply(f"213 {path.stat().st_size}")

    def _dele(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.is_file():
            self.reply("550 Delete operation failed.")
        else:
            path.unlink()
            self.reply("250 Delete operation successful.")

    def _stor(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.parent.is_dir() or not arg.strip("/"):
            self.reply("553 Could not create file.")
            return
        data = self._data_connection("150 Ok to send data.")
        if data is None:
            return
        tmp = path.with_name(f".{path.name}.part")
        self.server.emu.printer.overwrite(path)
        cut_after, self.server.emu.cut_upload_after = self.server.emu.cut_upload_after, None
        try:
            with data, tmp.open("wb") as out:
                while chunk := data.recv(CHUNK_BYTES):
                    out.write(chunk)
                    if cut_after is not None and out.tell() >= cut_after:  # abort_next_upload
                        data.shutdown(socket.SHUT_RDWR)
                        raise ConnectionAbortedError("upload cut by the fault switch")
                _close_notify(data)
            tmp.replace(path)  # complete on disk before the 226 (§A.8: 0500_C010 otherwise)
        except (OSError, ssl.SSLError):
            tmp.unlink(missing_ok=True)
            self.reply("426 Failure reading network stream.")
            return
        self.server.emu.printer.received.append(path)
        self.reply("226 Transfer complete.")

    def _list(self, _: str, *, names_only: bool = False) -> None:
        data = self._data_connection("150 Here comes the directory listing.")
        if data is None:
            return
        root = self.server.emu.printer.root
        lines = []
        for p in sorted(root.iterdir()):
            if p.name.startswith("."):
                continue
            if names_only:
                lines.append(p.name)
            else:
                kind, size = ("d", 0) if p.is_dir() else ("-", p.stat().st_size)
                lines.append(f"{kind}rw-r--r--    1 0        0        {size:>10} Jan 01 00:00 {p.name}")
        with data:
            data.sendall("".join(f"{line}\r\n" for line in lines).encode())
            _close_notify(data)
        self.reply("226 Directory send OK.")

    def _nlst(self, arg: str) -> None:
        self._list(arg, names_only=True)

    def _data_connection(self, preliminary: str) -> socket.socket | None:
        """Accept the passive connection and, under PROT P, require TLS session reuse like vsFTPd."""
        if self.passive is None:
            self.reply("425 Use PORT or PASV first.")
            return None
        listener, self.passive = self.passive, None
        self.reply(preliminary)
        try:
            with listener:
                conn, _ = listener.accept()
        except OSError:
            self.reply("425 Failed to establish connection.")
            return None
        conn.settimeout(30.0)
        if not self.prot_private:
            return conn
        try:
            tls = self.server.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            self.reply("425 Failed to establish connection.")
            return None
        if not tls.session_reused:
            tls.close()
            self.reply("522 SSL connection failed: session reuse required")
            return None
        return tls


def _close_notify(data: socket.socket) -> None:
    """End TLS cleanly: ftplib's clients unwrap() the data channel and wait for our close_notify."""
    if isinstance(data, ssl.SSLSocket):
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            data.unwrap()


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
        storage_dir = Path(storage_dir)
        storage_dir.mkdir(parents=True, exist_ok=True)
        self.printer = Printer(
            root=storage_dir,
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
