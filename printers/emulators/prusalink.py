"""A PrusaLink v1 printer (Buddy firmware: MINI, MK4, XL, Core One) emulated over a real socket.

Standard library only: it runs on an agent's Raspberry Pi next to the real printers. It follows
what the Buddy firmware does (`lib/WUI/nhttp`, `lib/WUI/link_content`), not only the OpenAPI spec:
digest auth with a 16-hex nonce of 32 random bits + a timestamp, `"<code>: <reason>\\n\\n<detail>\\n"`
error pages, a 409 matrix keyed on the printer state, job-id gating, uploads that close the
connection on error, and a model check that leaves the printer in ATTENTION ("warn" mode).
MK3/MK3S models answer as Prusa-Link on a Raspberry Pi instead (prusalink_pi.py): storages `local`
and a read-only `sdcard`, its error pages, digest scheme and version/info/status/job answers.

Printing runs in accelerated time: the G-code's `estimated printing time (normal mode)` divided
by `speed`. Job times (`time_printing`, `time_remaining`) are reported in wall-clock seconds of
that accelerated print, so a farm scheduler sees durations it can actually wait for.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from printers.emulators import prusalink_pi as pi
from printers.emulators.camera import camera_png
from printers.emulators.common import (
    LOCAL_PRINT_NAME,
    EmulatorServer,
    EmulatorThread,
    FaultSwitches,
    storage_folder,
)
from printers.emulators.prusalink_auth import REALM, USERNAME, DigestAuthority
from printers.emulators.prusalink_printer import (
    CHUNK_BYTES,
    GCODE_EXTENSIONS,
    INVALID_NAME_CHARS,
    MAX_PATH_BYTES,
    HttpError,
    Printer,
    short_name,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


def json_response(status: int, data: Any, **headers: str) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json", dict(headers))


RouteHandler = Callable[["_Handler", "re.Match[str]"], Response]

# (path pattern, {method: handler method name}); a path that matches with another method is a 405.
_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/api/version"), {"GET": "_get_version"}),
    (re.compile(r"/api/v1/info"), {"GET": "_get_info"}),
    (re.compile(r"/api/v1/status"), {"GET": "_get_status"}),
    (re.compile(r"/api/v1/storage"), {"GET": "_get_storage"}),
    (re.compile(r"/api/v1/transfer"), {"GET": "_get_transfer"}),
    (re.compile(r"/api/v1/job"), {"GET": "_get_job"}),
    (re.compile(r"/api/v1/cameras/snap"), {"GET": "_get_snap"}),
    (
        re.compile(r"/api/v1/job/(?P<id>[^/]*)(?:/(?P<command>.*))?"),
        {"PUT": "_job_put", "DELETE": "_job_delete"},
    ),
    (
        re.compile(r"/api/v1/files(?P<rest>/.*)?"),
        {"GET": "_file_get", "PUT": "_file_put", "POST": "_file_post", "DELETE": "_file_delete"},
    ),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PrusaLink"
    sys_version = ""
    timeout = 30  # idle keep-alive connections and stalled uploads give up eventually
    server: EmulatorServer
    _unread: int | None = None  # declared body bytes nobody has read yet

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:  # answered 405/404 like the firmware, not http.server's 501 page
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("prusalink emulator %s: " + format, self.address_string(), *args)

    @property
    def emulator(self) -> PrusaLinkEmulator:
        return self.server.emulator

    @property
    def printer(self) -> Printer:
        return self.server.emulator.printer

    # -- plumbing

    def _handle(self, method: str) -> None:
        self._unread = self._declared_length()
        try:
            response = self._route(method)
        except HttpError as exc:
            response = self._error(exc.status, exc.detail, close=exc.close, link=exc.link)
        self._send(response, head=method == "HEAD")

    def _declared_length(self) -> int | None:
        try:
            return max(0, int(self.headers["Content-Length"]))
        except (TypeError, ValueError):
            return None

    def _route(self, method: str) -> Response:
        path = urlsplit(self.path).path
        if not path.startswith("/api/"):
            raise HttpError(404)
        verdict = self._authorize(method)
        if verdict == "forbidden":
            return Response(403, b"Bad X-Api-Key.", "text/html; charset=utf-8")
        if verdict != "ok":
            return self._unauthorized(stale=verdict == "stale")
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = methods.get("GET" if method == "HEAD" else method)
            if name is None:
                raise HttpError(405, close=True)
            handler: RouteHandler = getattr(type(self), name)
            return handler(self, match)
        raise HttpError(404)

    def _authorize(self, method: str) -> str:
        auth, authorization, key = (
            self.emulator.auth,
            self.headers.get("Authorization"),
            self.headers.get("X-Api-Key"),
        )
        if isinstance(auth, pi.PiDigestAuthority):
            # PoorWSGI compares the digest's uri with the WSGI path, which is percent-decoded.
            parts = urlsplit(self.path)
            full_path = unquote(parts.path) + (f"?{parts.query}" if parts.query else "")
            return auth.check(method, full_path, authorization, key, self.headers.get("User-Agent", ""))
        return auth.check(method, self.path, authorization, key)

    def _unauthorized(self, *, stale: bool) -> Response:
        auth = self.emulator.auth
        if isinstance(auth, pi.PiDigestAuthority):  # PoorWSGI's 401: an HTML page and its challenge
            page = b"<!DOCTYPE html>\n<html><head><title>401 - Unauthorized</title></head></html>\n"
            challenge = auth.challenge(stale=stale, user_agent=self.headers.get("User-Agent", ""))
            return Response(401, page, "text/html; charset=utf-8", {"WWW-Authenticate": challenge})
        nonce = auth.new_nonce()
        response = self._error(401, "")
        response.headers["WWW-Authenticate"] = (
            f'Digest realm="{REALM}", nonce="{nonce}", stale={"true" if stale else "false"}'
        )
        return response

    def _error(
        self, status: int, detail: str, *, close: bool = False, link: pi.LinkError | None = None
    ) -> Response:
        if self.emulator.pi:
            error = link or pi.link_error(status, detail)
            host = self.headers.get("Host") or f"{self.emulator.host}:{self.emulator.port}"
            as_json = "application/json" in self.headers.get("Accept", "")
            body, content_type, headers = pi.error_body(error, f"http://{host}", as_json=as_json)
            return Response(error.status, body, content_type, headers, close=close)
        phrase = HTTPStatus(status).phrase
        if status != 401 and "application/json" in self.headers.get("Accept", ""):
            response = json_response(status, {"code": status, "title": phrase, "text": detail, "url": ""})
        else:
            response = Response(status, f"{status}: {phrase}\n\n{detail}\n".encode(), "text/plain")
        response.close = close
        return response

    def _send(self, response: Response, *, head: bool) -> None:
        self._drain()
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status != 204:
                self.send_header("Content-Type", response.content_type or "text/plain")
                self.send_header("Content-Length", str(len(response.body)))
            if response.close or self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.body and not head and response.status != 204:
                self.wfile.write(response.body)
        except OSError:
            self.close_connection = True

    def _drain(self) -> None:
        """Swallow an unread body so the client can finish sending and then read our answer."""
        if self._unread is None:
            if "Transfer-Encoding" in self.headers:
                self.close_connection = True  # a chunked body we will not parse
            return
        try:
            while self._unread > 0:
                chunk = self.rfile.read(min(CHUNK_BYTES, self._unread))
                if not chunk:
                    break
                self._unread -= len(chunk)
        except OSError:
            self.close_connection = True
        self._unread = 0

    # -- simple GETs

    def _get_version(self, _: re.Match[str]) -> Response:
        emu = self.emulator
        if emu.pi:
            return json_response(200, pi.version(emu.hostname))
        return json_response(
            200,
            {
                "api": "2.0.0",
                "server": "2.1.2",
                "nozzle_diameter": emu.nozzle_diameter,
                "text": "PrusaLink",
                "hostname": emu.hostname,
                "capabilities": {"upload-by-put": True},
            },
        )

    def _get_info(self, _: re.Match[str]) -> Response:
        emu = self.emulator
        if emu.pi:
            facts = pi.info(
                name=emu.hostname,
                hostname=emu.hostname,
                serial=emu.serial,
                nozzle_diameter=emu.nozzle_diameter,
                port=emu.port,
            )
            return json_response(200, facts)
        return json_response(
            200,
            {
                "nozzle_diameter": emu.nozzle_diameter,
                "mmu": False,
                "serial": emu.serial,
                "hostname": emu.hostname,
                "min_extrusion_temp": 170,
            },
        )

    def _get_status(self, _: re.Match[str]) -> Response:
        status = self.printer.status_json()
        if self.emulator.pi:
            status["storage"] = pi.status_storage(self.emulator.free_space()[0])
            status["printer"].setdefault("status_printer", pi.OK)
            status["printer"]["status_connect"] = {"ok": True, "message": "Connect isn't configured"}
            if "transfer" in status:
                status["transfer"]["data_transferred"] = status["transfer"].pop("transferred")
        return json_response(200, status)

    def _get_snap(self, _: re.Match[str]) -> Response:
        """The default camera's still (Buddy firmware); a Pi's Prusa-Link here has no camera: 204."""
        if self.emulator.pi:
            return Response(204)
        return Response(200, camera_png(self.printer.state()), "image/png")

    def _get_storage(self, _: re.Match[str]) -> Response:
        if self.emulator.pi:
            root = self.printer.root
            files = [
                (f.stat().st_size, f.name.lower().endswith(GCODE_EXTENSIONS))
                for f in root.rglob("*")
                if f.is_file() and not f.name.startswith(".")
            ]
            free, total = self.emulator.free_space()
            listed = pi.storage_list(files, free, total, local_available=self.emulator.local_storage)
            return json_response(200, {"storage_list": listed})
        storage = {"path": "/usb/", "name": "usb", "type": "USB", "read_only": False, "available": True}
        return json_response(200, {"storage_list": [storage]})

    def _get_transfer(self, _: re.Match[str]) -> Response:
        transfer = self.printer.transfer_json()
        return json_response(200, transfer) if transfer else Response(204)

    def _get_job(self, _: re.Match[str]) -> Response:
        job = self.printer.job_json()
        current = self.printer.current_job()
        if job and current and self.emulator.pi:
            mtime = int(current.local.stat().st_mtime) if current.local.exists() else 0
            job["file"] = pi.job_file(current.usb_path, current.size, mtime)
            job["state"] = current.state  # Prusa-Link reports the printer's state, ATTENTION included
            job["inaccurate_estimates"] = False
        return json_response(200, job) if job else Response(204)

    # -- job control

    def _job_put(self, match: re.Match[str]) -> Response:
        self.printer.job_command(match.group("id"), match.group("command") or "")
        return Response(204)

    def _job_delete(self, match: re.Match[str]) -> Response:
        if match.group("command") is not None:
            raise HttpError(404)
        self.printer.job_command(match.group("id"), "stop")
        return Response(204)

    # -- files

    def _usb_rel(self, match: re.Match[str], *, write: bool = False) -> str:
        rest = unquote(match.group("rest") or "")
        if self.emulator.pi:
            return self._pi_rel(rest, write=write)
        if rest != "/usb" and not rest.startswith("/usb/"):
            raise HttpError(403)
        parts = [p for p in rest.removeprefix("/usb").split("/") if p]  # the firmware dedups slashes
        if any(p in (".", "..") for p in parts):
            raise HttpError(404)
        return "/".join(parts)

    def _pi_rel(self, rest: str, *, write: bool) -> str:
        """`/local/<rel>` on a Pi; `/sdcard` is the printer's own card, which takes no writes."""
        storage, _, path = rest.lstrip("/").partition("/")
        if storage not in ("local", "sdcard"):
            raise HttpError(404, link=pi.LOCATION_NOT_FOUND)
        if storage == "sdcard":
            raise HttpError(409, link=pi.SD_READ_ONLY) if write else HttpError(404, link=pi.FILE_NOT_FOUND)
        if not self.emulator.local_storage:  # get_os_path() is None: a TypeError in the handler
            raise HttpError(500, link=pi.INTERNAL_ERROR, close=True)
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise HttpError(404, link=pi.FILE_NOT_FOUND)
        return "/".join(parts)

    def _file_get(self, match: re.Match[str]) -> Response:
        rel = self._usb_rel(match)
        local = self.printer.local_path(rel)
        if local.is_dir():
            return json_response(200, self._folder_info(rel, local))
        if not local.is_file():
            raise HttpError(404)
        printing = self.printer.is_printing_file(rel)
        headers = {"Read-Only": "?0", "Currently-Printing": "?1" if printing else "?0"}
        return json_response(200, self._file_info(rel, local), **headers)

    def _file_put(self, match: re.Match[str]) -> Response:
        rel = self._usb_rel(match, write=True)
        content_type = (self.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip()
        if self.emulator.pi and content_type not in ("application/octet-stream", "text/x.gcode"):
            raise HttpError(415, "Not a GCODE", close=True)
        existed = self.printer.local_path(rel).is_file()
        if self._unread is None:
            raise HttpError(411, close=True)
        name = rel.rsplit("/", 1)[-1]
        if len(f"/usb/{rel}".encode()) > MAX_PATH_BYTES:
            raise HttpError(431, "File name too long", close=True)
        if not name.lower().endswith(GCODE_EXTENSIONS):
            raise HttpError(415, "Not a GCODE", close=True)
        if any(c in INVALID_NAME_CHARS or ord(c) < 32 for c in rel):
            raise HttpError(422, "Filename contains invalid characters", close=True)
        to_print = _flag(self.headers.get("Print-After-Upload"))
        overwrite = _flag(self.headers.get("Overwrite"))
        transfer = self.printer.begin_upload(rel, self._unread, overwrite=overwrite, to_print=to_print)
        self._unread = 0  # the body is ours from here on; a short one is a "Truncated body"
        local = self.printer.receive(transfer, self.emulator.cutter.wrap(self.rfile, self.connection))
        if self.emulator.pi and content_type == "application/octet-stream":
            self._pi_sniff_fails(local, existed)
        if to_print:
            try:
                self.printer.start_print(rel)
            except HttpError:
                raise HttpError(409, "Can't print right now", close=True) from None
        if self.emulator.pi:  # Prusa-Link answers a bare 201
            return Response(201)
        location = f"/api/v1/files/usb/{quote(rel)}"
        response = json_response(201, self._file_info(rel, local), Location=location)
        response.close = True  # the firmware always closes an upload connection
        return response

    def _pi_sniff_fails(self, local: Path, existed: bool) -> None:
        """Prusa-Link 0.8.1 (web/files.py file_upload) runs libmagic on an octet-stream upload's
        destination before it moves the upload there: a new file is a FileNotFoundError (500), an
        old one sniffs as text/plain, is deleted, and the answer is 415. Only `text/x.gcode` works."""
        local.unlink(missing_ok=True)
        self.printer.received.remove(local)
        if not existed:
            raise HttpError(500, link=pi.INTERNAL_ERROR, close=True)
        raise HttpError(415, "Not a GCODE", close=True)

    def _file_post(self, match: re.Match[str]) -> Response:
        self.printer.start_print(self._usb_rel(match))
        return Response(204, close=True)  # the firmware closes rather than read the ignored body

    def _file_delete(self, match: re.Match[str]) -> Response:
        rel = self._usb_rel(match, write=True)
        if not rel:
            raise HttpError(404)
        self.printer.delete(rel)
        return Response(204)

    @staticmethod
    def _file_info(rel: str, local: Path) -> dict[str, Any]:
        st = local.stat()
        parent = "/usb/" + rel.rsplit("/", 1)[0] if "/" in rel else "/usb"
        return {
            "name": short_name(local.name),
            "display_name": local.name,
            "path": parent,
            "display_path": parent,
            "size": st.st_size,
            "m_timestamp": int(st.st_mtime),
            "type": "PRINT_FILE",
            "read_only": False,
            "refs": {"download": quote(f"/usb/{rel}")},
        }

    def _folder_info(self, rel: str, local: Path) -> dict[str, Any]:
        children: list[dict[str, Any]] = []
        for child in sorted(local.iterdir()):
            if child.name.startswith("."):  # upload temp files
                continue
            if child.is_dir():
                children.append(
                    {"name": short_name(child.name), "display_name": child.name, "type": "FOLDER"}
                )
            else:
                children.append(self._file_info(f"{rel}/{child.name}" if rel else child.name, child))
        name = local.name if rel else "usb"
        return {
            "name": name,
            "display_name": name,
            "type": "FOLDER",
            "read_only": False,
            "children": children,
        }


def _flag(value: str | None) -> bool:
    """An RFC 8941 boolean header; the firmware also takes a bare digit."""
    return (value or "").strip() in ("?1", "1")


# --------------------------------------------------------------------------- public API


class PrusaLinkEmulator(EmulatorThread, FaultSwitches):
    """A PrusaLink printer on a real TCP port. `start()` serves in a daemon thread; `stop()` ends it."""

    name = "PrusaLink"
    handler = _Handler

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str,
        model: str = "MINI",
        storage_dir: Path,
        speed: float = 60.0,
        max_print_s: float | None = None,
        nozzle_diameter: float = 0.4,
        serial: str = "EMU-0000000001",
        hostname: str | None = None,
        nonce_lifetime_s: float = 5.0,
        upload_bytes_per_s: float | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.nozzle_diameter = nozzle_diameter
        self.serial = serial
        self.hostname = hostname or f"prusa-{model.lower()}"
        # MK3/MK3S printers have no PrusaLink of their own: Prusa-Link runs on a Raspberry Pi.
        self.pi = pi.is_pi_model(model)
        self.auth: DigestAuthority | pi.PiDigestAuthority = (
            pi.PiDigestAuthority(USERNAME, password)
            if self.pi
            else DigestAuthority(password, nonce_lifetime_s)
        )
        self.printer = Printer(
            root=storage_folder(storage_dir),
            model=model,
            speed=speed,
            max_print_s=max_print_s,
            root_path=f"/{pi.LOCAL_NAME}" if self.pi else "/usb",
            guard_busy_file=not self.pi,
        )
        self.printer.upload_bytes_per_s = upload_bytes_per_s
        # Prusa-Link on a Pi without its local storage (it ignores a data folder under /tmp, say).
        self.local_storage = True

    @property
    def received(self) -> list[Path]:
        """Every file an upload stored, in order (a path repeats if it was overwritten)."""
        return self.printer.received

    @property
    def model(self) -> str:
        return self.printer.model

    @property
    def state(self) -> str:
        """The printer state as /api/v1/status reports it (IDLE, PRINTING, ATTENTION, ...)."""
        return self.printer.state()

    def press_continue(self) -> None:
        """A person confirms the ATTENTION dialog on the screen: the print starts running."""
        self.printer.press_continue()

    def dismiss(self) -> None:
        """A person closes the FINISHED/STOPPED/ERROR screen: the printer is IDLE again."""
        self.printer.dismiss()

    # -- fault switches (common.FaultSwitches)

    def fail_print(self, message: str = "Thermal runaway", code: int | None = None) -> None:
        self.printer.fail(message)  # PrusaLink's status carries a message, no error code

    def start_local_print(self, name: str = LOCAL_PRINT_NAME, seconds: float = 600.0) -> None:
        self.printer.start_local(name, seconds)

    def need_attention(self, message: str = "Filament runout") -> None:
        self.printer.need_attention(message)

    def attend(self) -> None:
        self.printer.press_continue()

    def fill_usb(self, full: bool = True) -> None:
        """The USB drive is full: the printer refuses every upload (507) until `fill_usb(False)`."""
        self.printer.usb_full = full

    def free_space(self) -> tuple[int, int]:
        """(free, total) bytes of the disk the storage folder is on, as statvfs reports them."""
        st = os.statvfs(self.printer.root)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
