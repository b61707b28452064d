"""The printer inside the Bambu emulator: its jobs, the firmware's checks and state moves, and the
`push_status` report it publishes (protocols.md §A). The services that reach it are bambu_mqtt.py
(the broker) and bambu_ftps.py (file uploads); bambu.py puts them together."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from printers.emulators.bambu_firmware import check_ams_mapping, inspect_package
from printers.emulators.common import FALLBACK_PRINT_S, PrintClock, record_print

log = logging.getLogger(__name__)

USERNAME = "bblp"
CANCELLED = 50348044  # 0x0300400C, reported after `stop`
BUSY = 0x05004004  # "device busy, cannot start a new task"
BAD_3MF = 0x0502403D  # "unable to process the 3MF"
SD_ERROR = 0x0500C010  # "MicroSD read/write exception": a print that dies mid-way
RUNOUT = 0x07FF8011  # the external spool ran out: the printer pauses and waits for a person
STAGE_PAUSED_BY_USER, STAGE_RUNOUT = 16, 6  # stg_cur while paused (pybambu CURRENT_STAGE_IDS)
PREPARE_S = 0.5  # PREPARE (download/unzip/heat) before RUNNING, in real seconds
UNZIP_S = 0.2  # a package the firmware cannot use fails this far into PREPARE
CANCEL_ERROR_S = 2.0  # how long print_error stays at CANCELLED after a stop
AMBIENT_C = 25.0
CHUNK_BYTES = 64 * 1024
# `print.fun` on X1: bit 0x20000000 set = signatures required (pybambu Print_Fun_Values).
FUN_DEV_MODE = "3EC18FFF9CFF"
FUN_SIGNED = "3EC1AFFF9CFF"
_URL_PREFIXES = ("ftp:///", "ftp://", "file:///sdcard/", "file:///mnt/sdcard/")


@dataclass
class Job(PrintClock):
    """A print: PREPARE_S of preparing, then `duration_s` of printing, on the shared clock."""

    file: str
    subtask_name: str
    task_id: str
    estimate_s: float
    layers: int
    started: float
    marked_layers: int | None = None  # layer changes the G-code announces; None: count by progress
    doomed: tuple[int, str] | None = None  # the firmware will fail it while unzipping: (code, reason)
    paused_at: float | None = None
    stopped_at: float | None = None

    @property
    def total_s(self) -> float:
        return PREPARE_S + self.duration_s

    def hold(self, now: float) -> None:
        """Paused, by a command or by the printer waiting for a person."""
        self.paused_at = now
        self.halt(now)

    def go_on(self, now: float) -> None:
        self.paused_at = None
        self.run(now)

    def end(self, now: float) -> None:
        """Stopped for good (cancelled or failed); a paused print stopped when it paused."""
        self.stopped_at = self.paused_at or now
        self.halt(now)


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
            job.end(job.started + UNZIP_S)
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
                    self.job.end(now)
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
            begun = time.monotonic()  # the print's clock starts once the checks above are done
            self.job = Job(
                file=name,
                subtask_name=str(cmd.get("subtask_name") or Path(name).name.removesuffix(".gcode.3mf")),
                task_id=str(cmd.get("task_id") or self._next_task),
                estimate_s=estimate,
                duration_s=duration,
                layers=plate.layers or 1,
                started=begun,
                running_since=begun,
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
                    job.end(now)
                    self.print_error = SD_ERROR

    def pause(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING"):
                raise CommandError("no print to pause")
            self.job.hold(now)
            self.pause_stage = STAGE_PAUSED_BY_USER

    def resume(self) -> None:
        with self._lock:
            job = self.job
            if job is None or job.paused_at is None or job.stopped_at is not None:
                raise CommandError("no paused print to resume")
            job.go_on(time.monotonic())
            self.print_error = 0

    # -- faults

    def fail(self, code: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING", "PAUSE"):
                raise RuntimeError("fail_print needs a running print")
            self.job.end(now)
            self.print_error = code

    def need_attention(self, code: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING"):
                raise RuntimeError("need_attention needs a running print")
            self.job.hold(now)
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
                running_since=now,
            )
            self._next_task += 1

    def stop(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self.job is None or self._state(now) not in ("PREPARE", "RUNNING", "PAUSE"):
                raise CommandError("no print to stop")
            self.job.end(now)
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
