"""The emulated PrusaLink printer: its state machine, its jobs and transfers, and its USB stick (a
folder). Thread-safe; no HTTP here (prusalink.py answers the requests)."""

from __future__ import annotations

import errno
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from printers.emulators import prusalink_pi as pi
from printers.emulators.common import (
    EmulatedPrinter,
    PrintClock,
    Readable,
    inspect_gcode,
    print_seconds,
    record_print,
)

log = logging.getLogger(__name__)

GCODE_EXTENSIONS = (".gcode", ".gc", ".g", ".gco", ".bgcode", ".bgc")
CHUNK_BYTES = 64 * 1024
MAX_PATH_BYTES = 255  # FAT long-name limit; the firmware's exact buffer size is not public API
INVALID_NAME_CHARS = frozenset('\\:*?"<>|')
READY_STATES = frozenset({"IDLE", "READY", "STOPPED", "FINISHED"})  # firmware `remote_print_ready`
ACTIVE_STATES = frozenset({"PRINTING", "PAUSED", "ATTENTION"})
AMBIENT_C = 24.8


class HttpError(Exception):
    """An error page: the status and the detail line the firmware puts after the reason."""

    def __init__(
        self, status: int, detail: str = "", *, close: bool = False, link: pi.LinkError | None = None
    ) -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status
        self.detail = detail
        self.close = close
        self.link = link  # the Prusa-Link (Raspberry Pi) condition, where it differs from Buddy's page


def short_name(name: str) -> str:
    """An approximate FAT 8.3 name: Buddy reports it as `name` next to the long `display_name`."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem_c, ext_c = (re.sub(r"[^A-Z0-9_~!#$%&'()@^{}-]", "", s.upper()) for s in (stem, ext))
    if stem_c == stem.upper() and ext_c == ext.upper() and len(stem) <= 8 and len(ext) <= 3:
        return name.upper()
    return f"{stem_c[:6]}~1" + (f".{ext_c[:3]}" if ext_c else "")


# --------------------------------------------------------------------------- printer state


@dataclass
class Job(PrintClock):
    id: int
    usb_path: str  # the path the printer reports: "/usb/dir/name.gcode" ("/PrusaLink gcodes/..." on a Pi)
    local: Path
    size: int
    has_estimate: bool
    nozzle_c: float
    bed_c: float
    state: str  # PRINTING, PAUSED, ATTENTION, FINISHED, STOPPED, ERROR


@dataclass
class Transfer:
    id: int
    usb_path: str
    size: int
    to_print: bool
    started: float
    transferred: int = 0


class Printer(EmulatedPrinter[Job]):
    """The printer's state machine and its USB stick (a directory). Thread-safe; no HTTP here."""

    RUNNING, DONE = "PRINTING", "FINISHED"

    def __init__(
        self,
        *,
        root: Path,
        model: str,
        speed: float,
        max_print_s: float | None,
        root_path: str = "/usb",
        guard_busy_file: bool = True,
    ) -> None:
        super().__init__(root=root, speed=speed, max_print_s=max_print_s)
        self.root_path = root_path  # how the printer names its storage in paths it reports
        # Buddy refuses to overwrite the file it prints (409 "File is busy"); Prusa-Link on a Pi
        # replaces it (prusa/link/web/files.py has no such check; the running print keeps its inode).
        self.guard_busy_file = guard_busy_file
        self.model = model
        self.received: list[Path] = []
        self._transfer: Transfer | None = None
        self._job_ids = 0
        self._transfer_ids = 0
        self._problem: str | None = None  # what the screen says in ERROR / ATTENTION (status_printer)
        self.upload_bytes_per_s: float | None = None  # None: as fast as the socket goes
        self.usb_full = False  # every upload is refused with 507, as a full USB drive's are
        self.history: list[str] = []  # every print started, by file: tests count double prints

    # -- helpers (call with the lock held)

    def _state(self, now: float) -> str:
        job = self._refresh(now)
        return job.state if job else "IDLE"

    def _busy_file(self, usb_path: str) -> bool:
        job = self._job
        return job is not None and job.state in ACTIVE_STATES and job.usb_path == usb_path

    def printer_path(self, rel: str) -> str:
        return f"{self.root_path}/{rel}"

    def current_job(self) -> Job | None:
        with self._lock:
            return self._refresh(time.monotonic())

    def local_path(self, rel: str) -> Path:
        return self.root.joinpath(*rel.split("/")) if rel else self.root

    # -- job control

    def start_print(self, rel: str) -> None:
        """Start <root_path>/<rel>. HttpError 404 if it is missing, 409 if the printer is not ready."""
        local = self.local_path(rel)
        with self._lock:
            if not rel or not local.is_file():
                raise HttpError(404, close=True)
            now = time.monotonic()
            if self._state(now) not in READY_STATES:
                raise HttpError(409, close=True)
            facts = inspect_gcode(local)
            duration = print_seconds(facts.estimate_s, self.speed, self.max_print_s)
            # "warn" mode: a G-code sliced for another model waits for a person at the screen.
            mismatch = facts.model is not None and facts.model != self.model
            self._job_ids += 1
            self._job = Job(
                id=self._job_ids,
                usb_path=self.printer_path(rel),
                local=local,
                size=local.stat().st_size,
                duration_s=duration,
                has_estimate=facts.estimate_s is not None,
                nozzle_c=facts.nozzle_c,
                bed_c=facts.bed_c,
                state="ATTENTION" if mismatch else "PRINTING",
            )
            if not mismatch:
                self._job.run(now)
            # The print history a real printer keeps; tests count starts in it to catch double prints.
            self.history.append(rel)
            record_print(self.root, rel, None if mismatch else self._job.duration_s)
            log.info("job %d %s: %s", self._job.id, "waits for attention" if mismatch else "started", rel)

    def job_command(self, raw_id: str, command: str) -> None:
        """`pause`, `resume` or `stop` job `raw_id`, gated like the firmware: 400, then 404, then 409."""
        allowed = {"pause": {"PRINTING"}, "resume": {"PAUSED"}, "stop": ACTIVE_STATES}.get(command)
        with self._lock:
            try:
                job_id = int(raw_id)
            except ValueError:
                raise HttpError(400) from None
            now = time.monotonic()
            job = self._refresh(now)
            if job is None or job.id != job_id:
                raise HttpError(404)
            if allowed is None:
                raise HttpError(400)
            if job.state not in allowed:
                raise HttpError(409)
            if command == "resume":
                job.state = "PRINTING"
                job.run(now)
            else:
                job.halt(now)
                job.state = "PAUSED" if command == "pause" else "STOPPED"

    def press_continue(self) -> None:
        with self._lock:
            if self._job and self._job.state == "ATTENTION":
                self._job.state = "PRINTING"
                self._job.run(time.monotonic())
                self._problem = None

    def dismiss(self) -> None:
        with self._lock:
            if self._state(time.monotonic()) in {"FINISHED", "STOPPED", "ERROR"}:
                self._job, self._problem = None, None

    # -- faults

    def fail(self, message: str) -> None:
        """A firmware error (thermal runaway, a crashed axis) ends the running job in ERROR."""
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job is None or job.state not in ACTIVE_STATES:
                raise RuntimeError("fail_print needs a running print")
            job.halt(now)
            job.state, self._problem = "ERROR", message

    def need_attention(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job is None or job.state != "PRINTING":
                raise RuntimeError("need_attention needs a running print")
            job.halt(now)
            job.state, self._problem = "ATTENTION", message

    def start_local(self, name: str, seconds: float) -> None:
        """A print started from the printer's own screen, from a file already on the USB drive."""
        local = self.local_path(name)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("; started from the printer's screen\nG28\n")
        with self._lock:
            now = time.monotonic()
            if self._state(now) not in READY_STATES:
                raise RuntimeError(f"the printer is {self._state(now)}, not ready for a local print")
            self._job_ids += 1
            self._job = Job(
                id=self._job_ids,
                usb_path=self.printer_path(name),
                local=local,
                size=local.stat().st_size,
                duration_s=max(seconds, 0.001),
                has_estimate=True,
                nozzle_c=215.0,
                bed_c=60.0,
                state="PRINTING",
            )
            self._job.run(now)
            log.info("job %d started at the printer: %s", self._job.id, name)

    # -- files

    def begin_upload(self, rel: str, length: int, *, overwrite: bool, to_print: bool) -> Transfer:
        """The checks the firmware makes before reading the body; registers the one allowed transfer."""
        local = self.local_path(rel)
        usb_path = self.printer_path(rel)
        with self._lock:
            if self.usb_full:
                raise HttpError(507, "USB drive full", close=True)
            if self._transfer is not None:
                raise HttpError(409, "Another transfer in progress", close=True)
            if local.exists() and not overwrite:
                raise HttpError(409, "File already exists", close=True)
            if overwrite and self.guard_busy_file and self._busy_file(usb_path):
                raise HttpError(409, "File is busy", close=True)
            self._transfer_ids += 1
            self._transfer = Transfer(self._transfer_ids, usb_path, length, to_print, time.monotonic())
            return self._transfer

    def receive(self, transfer: Transfer, stream: Readable) -> Path:
        """Stream the body to disk chunk by chunk through a temp file, then move it into place."""
        local = self.local_path(transfer.usb_path.removeprefix(self.root_path + "/"))
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{transfer.id}.tmp")
            try:
                with tmp.open("wb") as out:
                    while transfer.transferred < transfer.size:
                        chunk = _read_some(stream, min(CHUNK_BYTES, transfer.size - transfer.transferred))
                        _write_all(out, chunk)
                        transfer.transferred += len(chunk)
                        if self.upload_bytes_per_s:  # a MINI takes uploads at a few hundred kB/s
                            time.sleep(len(chunk) / self.upload_bytes_per_s)
                if local.is_dir():
                    raise HttpError(409, "File already exists", close=True)
                tmp.replace(local)
            finally:
                tmp.unlink(missing_ok=True)
            with self._lock:
                self.received.append(local)
            return local
        finally:
            with self._lock:
                self._transfer = None

    def delete(self, rel: str) -> None:
        local = self.local_path(rel)
        usb_path = self.printer_path(rel)
        with self._lock:
            self._refresh(time.monotonic())
            if self._busy_file(usb_path):
                raise HttpError(409, "File is busy")
            if self._transfer and self._transfer.usb_path == usb_path:
                raise HttpError(409, "File is being transferred")
            try:
                if local.is_dir():
                    local.rmdir()
                else:
                    local.unlink()
            except OSError:
                raise HttpError(404) from None

    # -- views

    def state(self) -> str:
        with self._lock:
            return self._state(time.monotonic())

    def is_printing_file(self, rel: str) -> bool:
        with self._lock:
            self._refresh(time.monotonic())
            return self._busy_file(self.printer_path(rel))

    def status_json(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            out: dict[str, Any] = {"storage": {"path": "/usb/", "name": "usb", "read_only": False}}
            if job:
                out["job"] = self._job_times(job, now)
            if self._transfer:
                out["transfer"] = self._transfer_summary(self._transfer, now)
            out["printer"] = self._printer_json(job, now)
            if self._problem is not None:  # the spec's optional status_printer, as Prusa-Link fills it
                out["printer"]["status_printer"] = {"ok": False, "message": self._problem}
            return out

    def job_json(self) -> dict[str, Any] | None:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job is None:
                return None
            parent = job.usb_path.rsplit("/", 1)[0]
            return {
                **self._job_times(job, now),
                # The v1 API has no ATTENTION job state: a job waiting for a person reads as PAUSED.
                "state": "PAUSED" if job.state == "ATTENTION" else job.state,
                "file": {
                    "name": short_name(job.local.name),
                    "display_name": job.local.name,
                    "path": parent,
                    "display_path": parent,
                    "size": job.size,
                    "m_timestamp": int(job.local.stat().st_mtime) if job.local.exists() else 0,
                    "refs": {"download": quote(job.usb_path)},
                },
            }

    def transfer_json(self) -> dict[str, Any] | None:
        with self._lock:
            t = self._transfer
            if t is None:
                return None
            return {
                **self._transfer_summary(t, time.monotonic()),
                "type": "FROM_CLIENT",
                "display_name": t.usb_path.rsplit("/", 1)[-1],
                "path": t.usb_path.rsplit("/", 1)[0],
                "size": t.size,
                "to_print": t.to_print,
            }

    @staticmethod
    def _job_times(job: Job, now: float) -> dict[str, Any]:
        elapsed = job.elapsed(now)
        out: dict[str, Any] = {
            "id": job.id,
            "progress": round(100.0 * elapsed / job.duration_s, 2),
            "time_printing": int(elapsed),
        }
        if job.has_estimate:  # without the slicer's estimate the firmware cannot tell
            out["time_remaining"] = max(0, round(job.duration_s - elapsed))
        return out

    @staticmethod
    def _transfer_summary(t: Transfer, now: float) -> dict[str, Any]:
        return {
            "id": t.id,
            "time_transferring": int(now - t.started),
            "progress": round(100.0 * t.transferred / t.size, 2) if t.size else 100.0,
            "transferred": t.transferred,
        }

    @staticmethod
    def _printer_json(job: Job | None, now: float) -> dict[str, Any]:
        heating = job is not None and job.state in ACTIVE_STATES
        nozzle_t, bed_t = (job.nozzle_c, job.bed_c) if job is not None and heating else (0.0, 0.0)
        printing = job is not None and job.state == "PRINTING"
        out: dict[str, Any] = {
            "state": job.state if job else "IDLE",
            "temp_nozzle": round(nozzle_t - 0.4, 1) if nozzle_t else AMBIENT_C,
            "target_nozzle": nozzle_t,
            "temp_bed": round(bed_t - 0.1, 1) if bed_t else AMBIENT_C,
            "target_bed": bed_t,
            "axis_z": round(0.2 + 40.0 * job.elapsed(now) / job.duration_s, 2) if job else 12.0,
            "flow": 100,
            "speed": 100,
            "fan_hotend": 5200 if heating else 0,
            "fan_print": 4800 if printing else 0,
        }
        if not printing:  # the firmware leaves x/y out while printing
            out |= {"axis_x": 90.0, "axis_y": 90.0}
        return out


def _read_some(stream: Readable, n: int) -> bytes:
    try:
        chunk = stream.read(n)
    except OSError:  # timeout or reset: the client went away mid-body
        chunk = b""
    if not chunk:
        raise HttpError(400, "Truncated body", close=True)
    return chunk


def _write_all(out: BinaryIO, chunk: bytes) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        detail = "USB drive full" if exc.errno == errno.ENOSPC else "USB write error or USB full"
        raise HttpError(507, detail, close=True) from None
