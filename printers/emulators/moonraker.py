"""A Moonraker server with Klipper behind it, emulated over a real socket (standard library only).

It follows Moonraker's source (no Klipper was run, see protocols.md §D): `{"result": ...}`
envelopes and `{"error": {"code", "message"}}` errors, an optional `X-Api-Key` (401 without it),
multipart uploads into the `gcodes` root with `print=true` (`print_started` false while printing or
paused, 403 when overwriting the loaded file), `SDCARD_PRINT_FILE` refused ("SD busy") only while
printing (on a paused printer it replaces the paused job, as Klipper's does), `print_stats` states
standby/printing/paused/complete/cancelled/error, `/server/info` `klippy_state`, 503 from printer
endpoints while Klippy is down, and Klipper's PAUSE/RESUME/CANCEL_PRINT macros answering "ok" even
when they do nothing.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

from printers.emulators.camera import camera_png
from printers.emulators.common import (
    LOCAL_PRINT_NAME,
    EmulatedPrinter,
    EmulatorServer,
    EmulatorThread,
    FaultSwitches,
    record_print,
    storage_folder,
)
from printers.emulators.http_base import (
    HttpError,
    Job,
    JsonHandler,
    multipart_boundary,
    parse_multipart,
    safe_relpath,
)
from printers.emulators.websocket import WebSocket, WebSocketClosed, is_upgrade

GCODE_EXTENSIONS = (".gcode", ".g", ".gco", ".ufp")
AMBIENT_C = 22.5
MOVE_OUT_OF_RANGE = "Move out of range: 250.000 0.000 0.300 [0.000]"
OBJECT_NAMES = ("webhooks", "print_stats", "virtual_sdcard", "display_status", "extruder", "heater_bed")
KLIPPY_STATES = ("ready", "startup", "shutdown", "error", "disconnected")
_KLIPPY_MESSAGES = {
    "ready": "Printer is ready",
    "startup": "Printer is not ready\nThe klippy host software is attempting to connect.",
    "shutdown": "Lost communication with MCU 'mcu'\nOnce the underlying issue is corrected, use the "
    '"FIRMWARE_RESTART" command to reset the firmware, reload the config, and restart the host software.',
    "error": "Error loading config: Option 'rotation_distance' in section 'stepper_x' must be specified",
}


class Klipper(EmulatedPrinter[Job]):
    """print_stats, virtual_sdcard and heaters of one Klipper printer. Thread-safe; no HTTP here."""

    RUNNING, DONE = "printing", "complete"

    def __init__(self, *, root: Path, speed: float, max_print_s: float | None) -> None:
        super().__init__(root=root, speed=speed, max_print_s=max_print_s)
        self.klippy_state = "ready"
        # Klippy's own endpoints (objects/query, objects/list) are registered when it first
        # connects (moonraker klippy_connection._request_endpoints): 404 until then, 503 after.
        self.klippy_was_ready = True
        self._message = ""
        self.replaced: list[str] = []  # paused jobs a new SDCARD_PRINT_FILE threw away

    def print_state(self) -> str:
        with self._lock:
            job = self._refresh(time.monotonic())
            return job.state if job else "standby"

    def loaded_file(self) -> str | None:
        with self._lock:
            job = self._refresh(time.monotonic())
            return job.path if job and job.state in ("printing", "paused") else None

    def require_klippy(self) -> None:
        if self.klippy_state in ("startup", "disconnected"):
            raise HttpError(503, "Klippy Host not connected")

    def start_print(self, rel: str) -> None:
        """`SDCARD_PRINT_FILE`: Klipper's own error messages, sent back by Moonraker as 400s."""
        local = self.root / rel
        with self._lock:
            self.require_klippy()
            if self.klippy_state != "ready":
                raise HttpError(400, "Printer is not ready")
            # virtual_sdcard refuses only while its work timer runs (printing); a paused file is
            # closed and replaced, its print_stats reset (klippy/extras/virtual_sdcard.py).
            if self.print_state() == "printing":
                raise HttpError(400, "SD busy")
            if not rel or not local.is_file():
                raise HttpError(400, "Unable to open file")
            if self._job is not None and self._job.state == "paused":
                self.replaced.append(self._job.path)
            self._message = ""
            self._job = Job.from_gcode(
                self.root, rel, "printing", speed=self.speed, max_print_s=self.max_print_s
            )
            record_print(self.root, rel, self._job.duration_s)

    def macro(self, name: str) -> None:
        """PAUSE / RESUME / CANCEL_PRINT; like Klipper's, they only log when there is nothing to do."""
        with self._lock:
            self.require_klippy()
            now = time.monotonic()
            job = self._refresh(now)
            if job is None:
                return
            if name == "pause" and job.state == "printing":
                job.halt(now)
                job.state = "paused"
            elif name == "resume" and job.state == "paused":
                job.running_since = now
                job.state = "printing"
                self._message = ""
            elif name == "cancel" and job.state in ("printing", "paused"):
                job.halt(now)
                job.state = "cancelled"

    def start_local(self, name: str, seconds: float) -> None:
        """A print someone started from Mainsail/Fluidd or the printer's display."""
        with self._lock:
            if self.loaded_file() is not None or self.klippy_state != "ready":
                raise RuntimeError("the printer is not ready for a local print")
            self._message = ""
            self._job = Job.started_at_printer(self.root, name, seconds, "printing", "started from Mainsail")

    def runout(self, message: str) -> None:
        """A filament sensor runs PAUSE: print_stats goes to paused, Klipper says why."""
        with self._lock:
            job = self._refresh(time.monotonic())
            if job is None or job.state != "printing":
                raise RuntimeError("need_attention needs a running print")
            self.macro("pause")
            self._message = message

    def fail(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            if job is not None and job.state in ("printing", "paused"):
                job.halt(now)
                job.state = "error"
                self._message = message

    def objects(self, names: list[str]) -> dict[str, Any]:
        """The requested printer objects; unknown names are left out, as Klipper does."""
        with self._lock:
            now = time.monotonic()
            job = self._refresh(now)
            every = {
                "print_stats": self._print_stats(job, now),
                "virtual_sdcard": self._virtual_sdcard(job, now),
                "display_status": {"message": None, "progress": self._fraction(job, now)},
                "extruder": _heater(job.nozzle_c if _heating(job) else 0.0),
                "heater_bed": _heater(job.bed_c if _heating(job) else 0.0),
                "webhooks": {
                    "state": self.klippy_state,
                    "state_message": _KLIPPY_MESSAGES.get(self.klippy_state),
                },
            }
            return {name: every[name] for name in names if name in every}

    @staticmethod
    def _fraction(job: Job | None, now: float) -> float:
        if job is None:
            return 0.0
        if job.state == "cancelled":  # Klipper resets the sdcard after a cancel
            return 0.0
        return round(job.elapsed(now) / job.duration_s, 4)

    def _print_stats(self, job: Job | None, now: float) -> dict[str, Any]:
        elapsed = job.elapsed(now) if job else 0.0
        return {
            "filename": job.path if job else "",
            "total_duration": elapsed,
            "print_duration": elapsed,
            "filament_used": round(elapsed * 12.5, 2),
            "state": job.state if job else "standby",
            "message": self._message,
            "info": {"total_layer": None, "current_layer": None},
        }

    def _virtual_sdcard(self, job: Job | None, now: float) -> dict[str, Any]:
        active = job is not None and job.state == "printing"
        fraction = self._fraction(job, now)
        loaded = job is not None and job.state in ("printing", "paused", "complete")
        return {
            "file_path": str(self.root / job.path) if job and loaded else None,
            "progress": fraction,
            "is_active": active,
            "file_position": int(job.size * fraction) if job else 0,
            "file_size": job.size if job and loaded else 0,
        }


def _heating(job: Job | None) -> TypeGuard[Job]:
    return job is not None and job.state in ("printing", "paused")


def _heater(target: float) -> dict[str, float]:
    return {
        "temperature": round(target - 0.2, 2) if target else AMBIENT_C,
        "target": target,
        "power": 0.4 if target else 0.0,
    }


class _Handler(JsonHandler):
    server_version = "Moonraker"
    server: EmulatorServer

    @property
    def emulator(self) -> MoonrakerEmulator:
        return self.server.emulator

    @property
    def klipper(self) -> Klipper:
        return self.emulator.klipper

    def handle_method(self, method: str) -> None:
        self.begin()
        try:
            self._authorize()
            if (method, self.path_only) == ("GET", "/websocket") and is_upgrade(self):
                self._serve_websocket()
                return
            if (method, self.path_only) == ("POST", "/server/files/upload"):
                # The one endpoint Moonraker answers without the result envelope, with a Location
                # (moonraker/components/application.py FileUploadHandler).
                result = self._upload()
                host, rel = self.headers.get("Host", ""), quote(result["item"]["path"])
                location = f"http://{host}/server/files/gcodes/{rel}"
                self.send_json(201, result, {"Location": location})
                return
            if (method, self.path_only) == ("GET", "/webcam/") and self.query.get("action") == ["snapshot"]:
                self.send_image(camera_png(self.klipper.print_state()))  # crowsnest's still
                return
            status, result = self._route(method, self.path_only)
            self.send_json(status, {"result": result})
        except HttpError as exc:
            self.send_json(exc.status, {"error": {"code": exc.status, "message": exc.message}})

    def _authorize(self) -> None:
        expected = self.emulator.api_key
        if expected is None:  # a trusted client
            return
        key = self.headers.get("X-Api-Key") or ""
        if not hmac.compare_digest(key.encode(), expected.encode()):
            raise HttpError(401, "Unauthorized")

    def _route(self, method: str, path: str) -> tuple[int, Any]:
        if (method, path) == ("GET", "/server/info"):
            return 200, self._server_info()
        if (method, path) == ("GET", "/server/webcams/list"):
            cam = {
                "name": "cam",
                "enabled": True,
                "service": "mjpegstreamer-adaptive",
                "stream_url": "/webcam/?action=stream",
                "snapshot_url": "/webcam/?action=snapshot",
            }
            return 200, {"webcams": [cam]}
        if (method, path) == ("GET", "/printer/info"):
            return 200, self._printer_info()
        if path == "/printer/objects/query" and method in ("GET", "POST"):
            return 200, self._query(method)
        if (method, path) == ("POST", "/printer/print/start"):
            self.klipper.start_print(safe_relpath((self.query.get("filename") or [""])[0]))
            return 200, "ok"
        if method == "POST" and path in (
            "/printer/print/pause",
            "/printer/print/resume",
            "/printer/print/cancel",
        ):
            self.klipper.macro(path.rsplit("/", 1)[1])
            return 200, "ok"
        raise HttpError(404, "Not Found")

    def _server_info(self) -> dict[str, Any]:
        state = self.klipper.klippy_state
        return {
            "klippy_connected": state != "disconnected",
            "klippy_state": state,
            "components": ["file_manager", "klippy_apis", "authorization", "history"],
            "failed_components": [],
            "registered_directories": ["config", "logs", "gcodes"],
            "warnings": [],
            "websocket_count": self.emulator.websockets,
            "moonraker_version": "v0.9.3-emulated",
            "api_version": [1, 5, 0],
            "api_version_string": "1.5.0",
        }

    def _printer_info(self) -> dict[str, Any]:
        self.klipper.require_klippy()
        state = self.klipper.klippy_state
        return {
            "state": state,
            "state_message": _KLIPPY_MESSAGES.get(state, ""),
            "hostname": "voron-emu",
            "software_version": "v0.12.0-emulated",
            "klipper_path": "/home/pi/klipper",
            "python_path": "/home/pi/klippy-env/bin/python",
            "log_file": "/home/pi/printer_data/logs/klippy.log",
            "config_file": "/home/pi/printer_data/config/printer.cfg",
        }

    def _query(self, method: str) -> dict[str, Any]:
        if method == "POST":
            return self._objects(list((self.json_body().get("objects") or {}).keys()))
        return self._objects(list(self.query.keys()))

    def _objects(self, names: list[str]) -> dict[str, Any]:
        if not self.klipper.klippy_was_ready:
            raise HttpError(404, "Not Found")
        self.klipper.require_klippy()
        return {"eventtime": round(time.monotonic(), 3), "status": self.klipper.objects(names)}

    # -- the JSON-RPC websocket (Moonraker's /websocket; what Mainsail, Fluidd and HA clients use)

    def _serve_websocket(self) -> None:
        self.connection.settimeout(300)  # clients ping now and then; an idle socket is not an error
        ws = WebSocket(self)
        self.emulator.websockets += 1
        try:
            while True:
                ws.send_text(json.dumps(self._rpc(ws.receive())))
        except WebSocketClosed:
            pass
        finally:
            self.emulator.websockets -= 1

    def _rpc(self, text: str) -> dict[str, Any]:
        try:
            request = json.loads(text)
            method, params, rid = request["method"], request.get("params") or {}, request.get("id")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
        handlers = {
            "server.info": self._server_info,
            "printer.info": self._printer_info,
            "printer.objects.list": lambda: {"objects": self._object_names()},
            "printer.objects.query": lambda: self._objects(list((params.get("objects") or {}).keys())),
            "server.websocket.id": lambda: {"websocket_id": id(self) & 0xFFFFFFFF},
        }
        handler = handlers.get(method)
        if handler is None:
            return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": rid}
        try:
            return {"jsonrpc": "2.0", "result": handler(), "id": rid}
        except HttpError as exc:
            return {"jsonrpc": "2.0", "error": {"code": exc.status, "message": exc.message}, "id": rid}

    def _object_names(self) -> list[str]:
        self.klipper.require_klippy()
        return list(self.klipper.objects(list(OBJECT_NAMES)))

    def _upload(self) -> dict[str, Any]:
        boundary = multipart_boundary(self.headers.get("Content-Type"))
        root = self.klipper.root
        tmp = root / f".upload-{threading.get_ident()}.tmp"
        try:
            body = self.take_body()
            try:
                stream = self.emulator.cutter.wrap(self.rfile, self.connection)
                fields = parse_multipart(stream, body.remaining, boundary, lambda _: tmp.open("wb"))
            except HttpError:
                self.close_connection = True
                raise
            rel = self._target(fields)
            if self.klipper.loaded_file() == rel:
                raise HttpError(403, "File is loaded, upload not permitted")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(root / rel)
        finally:
            tmp.unlink(missing_ok=True)
        self.emulator.received.append(root / rel)
        started = fields.get("print", "false").lower() == "true" and self._try_print(rel)
        stat = (root / rel).stat()
        item = {
            "path": rel,
            "root": "gcodes",
            "modified": stat.st_mtime,
            "size": stat.st_size,
            "permissions": "rw",
        }
        return {"item": item, "print_started": started, "print_queued": False, "action": "create_file"}

    @staticmethod
    def _target(fields: dict[str, str]) -> str:
        name = fields.get("file")
        if not name:
            raise HttpError(400, "No file name specified in upload form")
        if fields.get("root", "gcodes") != "gcodes":
            raise HttpError(400, f"Root {fields['root']!r} not available to this emulator")
        if not name.lower().endswith(GCODE_EXTENSIONS):
            raise HttpError(415, f"Invalid file extension for 'gcodes' root: {name}")
        return safe_relpath(f"{fields.get('path', '')}/{name}")

    def _try_print(self, rel: str) -> bool:
        # Moonraker starts an upload only when print_stats is neither printing nor paused
        # (file_manager._handle_operation_check), stricter than SDCARD_PRINT_FILE itself.
        if self.klipper.print_state() in ("printing", "paused"):
            return False
        try:
            self.klipper.start_print(rel)
        except HttpError:
            return False
        return True


class MoonrakerEmulator(EmulatorThread, FaultSwitches):
    """A Moonraker + Klipper printer on a real TCP port. `api_key=None` trusts every client."""

    name = "moonraker"
    handler = _Handler

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        storage_dir: Path,
        speed: float = 60.0,
        max_print_s: float | None = None,
        klippy_state: str = "ready",
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        self.klipper = Klipper(root=storage_folder(storage_dir), speed=speed, max_print_s=max_print_s)
        if klippy_state != "ready":  # Moonraker up before Klipper ever connected
            self.set_klippy_state(klippy_state)
            self.klipper.klippy_was_ready = False
        self.received: list[Path] = []  # every file an upload stored, in order
        self.websockets = 0  # open /websocket connections (server.info websocket_count)

    @property
    def state(self) -> str:
        """print_stats.state: standby, printing, paused, complete, cancelled or error."""
        return self.klipper.print_state()

    def fail(self, message: str = MOVE_OUT_OF_RANGE) -> None:
        """A G-code error stops the print: print_stats goes to `error` with Klipper's message."""
        self.klipper.fail(message)

    # -- fault switches (common.FaultSwitches)

    def fail_print(self, message: str = MOVE_OUT_OF_RANGE, code: int | None = None) -> None:
        self.klipper.fail(message)  # Klipper has messages, not error codes

    def start_local_print(self, name: str = LOCAL_PRINT_NAME, seconds: float = 600.0) -> None:
        self.klipper.start_local(name, seconds)

    def need_attention(self, message: str = "Filament Sensor runout_sensor: runout detected") -> None:
        self.klipper.runout(message)

    def attend(self) -> None:
        self.klipper.macro("resume")

    def set_klippy_state(self, state: str) -> None:
        """Klipper's host state as /server/info reports it (ready, startup, shutdown, error, disconnected)."""
        if state not in KLIPPY_STATES:
            raise ValueError(f"klippy state must be one of {KLIPPY_STATES}")
        self.klipper.klippy_state = state
        self.klipper.klippy_was_ready = self.klipper.klippy_was_ready or state == "ready"
