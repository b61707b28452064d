"""What Prusa-Link on a Raspberry Pi (the MK3/MK3S's PrusaLink, `prusa3d/Prusa-Link` 0.8.x) answers
differently from Buddy firmware. Pure functions over the shared `Printer`; no HTTP here.

Read from the source: storages `local` ("PrusaLink gcodes", writable) and `sdcard` ("SD Card",
read-only) in `prusa/link/web/files.py`; any other storage in a file URL is 404 "Location Not
Found", a write to `sdcard` is 409 "SD Card Read Only" (`web/lib/files.py` check_storage,
check_read_only); errors are `LinkError`s rendered as text "title\\ntext\\n\\n\\nSee: url" or JSON
{title, message, url} (`conditions.py`, `web/errors.py`); digest auth is PoorWSGI's RFC 2617 one
(realm "Administrator", qop auth, MD5-sess, opaque = sha256(server name), a nonce bound to the
User-Agent and valid 60-120 s; `web/lib/auth.py`, `web/lib/core.py`); a wrong X-Api-Key is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote
from urllib.request import parse_http_list, parse_keqv_list

PI_MODELS = frozenset({"MK3", "MK3S", "MK3S+", "MK2.5", "MK2.5S"})
REALM = "Administrator"
LOCAL_NAME = "PrusaLink gcodes"  # the local storage's folder name (config `printer.directory`)
SD_NAME = "SD Card"
VERSION = "0.8.1"
FIRMWARE = "3.14.1-8237"
NONCE_TIMEOUT_S = 60  # app.auth_timeout
OK = {"ok": True, "message": "OK"}


def is_pi_model(model: str) -> bool:
    return model.strip().upper().replace(" ", "") in PI_MODELS


@dataclass(frozen=True)
class LinkError:
    """One of Prusa-Link's `conditions.LinkError` classes: status, title, text and page id."""

    status: int
    title: str
    text: str
    id: str | None


LOCATION_NOT_FOUND = LinkError(
    404, "Location Not Found", "Location not found, use local.", "location-not-found"
)
SD_READ_ONLY = LinkError(409, "SD Card Read Only", "SD Card storage is read only.", "entity-too-large")
FILE_NOT_FOUND = LinkError(404, "File Not Found", "File you want was not found.", "not-found")
NOT_STATE_TO_PRINT = LinkError(
    409, "Not in state to print", "Printer is not in state to print.", "not-state-to-print"
)
INTERNAL_ERROR = LinkError(
    500,
    "Internal Server Error",
    "We're sorry, but there is a error in service. Please try again later.",
    "internal-server-error",
)
# The shared Printer raises (status, Buddy's detail); these are the Prusa-Link conditions for them.
_BY_DETAIL: dict[tuple[int, str], LinkError] = {
    (409, "File already exists"): LinkError(
        409, "File Already Exists", "File already exists.", "file-already-exists"
    ),
    (409, "Another transfer in progress"): LinkError(
        409, "Already in transfer process", "Only one file at time can be transferred.", "transfer-conflict"
    ),
    (409, "File is busy"): LinkError(
        409,
        "File is currently printed",
        "You try to do an operation with the file, which is currently printed.",
        "file-currently-printed",
    ),
    (400, "Truncated body"): LinkError(
        400, "File Upload Failed", "File upload has failed", "file-upload-failed"
    ),
    (415, "Not a GCODE"): LinkError(
        415,
        "Unsupported Media Type",
        "Only G-Code for FDM printer can be uploaded.",
        "unsupported-media-type",
    ),
    (404, ""): FILE_NOT_FOUND,
    (409, ""): NOT_STATE_TO_PRINT,
}


def link_error(status: int, detail: str) -> LinkError:
    known = _BY_DETAIL.get((status, detail))
    if known is not None:
        return known
    return LinkError(status, HTTPStatus(status).phrase, detail or HTTPStatus(status).description, None)


def error_body(error: LinkError, base_url: str, *, as_json: bool) -> tuple[bytes, str, dict[str, str]]:
    """`LinkError.json_response` / `text_response`, with Content-Location when the error has a page."""
    if error.status == 500:  # an exception in a handler: PoorWSGI's own page answers, not a LinkError
        page = (
            "<!DOCTYPE html>\n<html>\n <head>\n  <title>500 - Internal Server Error</title>\n </head>\n"
            " <body>\n  <h1>500 - Internal Server Error</h1>\n </body>\n</html>\n"
        )
        return page.encode(), "text/html; charset=utf-8", {}
    url = f"{base_url}/error/{error.id}" if error.id else ""
    headers = {"Content-Location": url} if url else {}
    if as_json:
        data: dict[str, Any] = {"title": error.title, "message": error.text}
        if url:
            data["url"] = url
        return json.dumps(data).encode(), "application/json", headers
    see = f"\n\nSee: {url}" if url else ""
    return f"{error.title}\n{error.text}\n{see}".encode(), "text/plain; charset=utf-8", headers


class PiDigestAuthority:
    """PoorWSGI's digest check as Prusa-Link configures it (see the module docstring)."""

    def __init__(self, username: str, password: str, *, server_name: str = "localhost") -> None:
        self.username = username
        self._ha1 = _md5(f"{username}:{REALM}:{password}")
        self._api_key = password
        self._secret = hashlib.sha256(str(time.time()).encode()).hexdigest()
        self._opaque = hashlib.sha256(server_name.encode()).hexdigest()

    def _token(self, user_agent: str, expires: int) -> str:
        return hashlib.sha256(f"{self._secret}{expires}{user_agent}".encode()).hexdigest()

    def new_nonce(self, user_agent: str) -> str:
        now = int(time.time() / NONCE_TIMEOUT_S) * NONCE_TIMEOUT_S
        return self._token(user_agent, now + 2 * NONCE_TIMEOUT_S)

    def _nonce_valid(self, nonce: str, user_agent: str) -> bool:
        now = int(time.time() / NONCE_TIMEOUT_S) * NONCE_TIMEOUT_S
        return any(
            hmac.compare_digest(nonce, self._token(user_agent, now + k * NONCE_TIMEOUT_S)) for k in (1, 2)
        )

    def challenge(self, *, stale: bool, user_agent: str) -> str:
        header = (
            f'Digest realm="{REALM}",qop="auth",algorithm="MD5-sess",'
            f'nonce="{self.new_nonce(user_agent)}",opaque="{self._opaque}"'
        )
        return header + (",stale=true" if stale else "")

    def check(
        self, method: str, full_path: str, authorization: str | None, api_key: str | None, user_agent: str
    ) -> str:
        """`ok`, `stale` (nonce too old or from another User-Agent), `denied` (401) or `forbidden` (403)."""
        if api_key is not None:
            return "ok" if hmac.compare_digest(api_key.encode(), self._api_key.encode()) else "forbidden"
        scheme, _, params = (authorization or "").partition(" ")
        if scheme != "Digest":
            return "denied"
        try:
            f = parse_keqv_list(parse_http_list(params))
        except ValueError:
            return "denied"
        if not self._nonce_valid(f.get("nonce", ""), user_agent):
            return "stale"
        if (
            f.get("algorithm") != "MD5-sess"
            or f.get("opaque") != self._opaque
            or not unquote(f.get("uri", "")).endswith(full_path)
            or f.get("qop") != "auth"
            or f.get("realm") != REALM
            or f.get("username") != self.username
            or "response" not in f
        ):
            return "denied"
        ha1 = _md5(f"{self._ha1}:{f['nonce']}:{f.get('cnonce', '')}")
        ha2 = _md5(f"{method}:{f['uri']}")
        expected = _md5(f"{ha1}:{f['nonce']}:{f.get('nc', '')}:{f.get('cnonce', '')}:auth:{ha2}")
        return "ok" if hmac.compare_digest(expected, f["response"]) else "denied"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --------------------------------------------------------------------------- answers


def version(hostname: str) -> dict[str, Any]:
    """`GET /api/version` (prusa/link/web/main.py api_version)."""
    return {
        "api": "2.0.0",
        "server": VERSION,
        "original": "PrusaLink I3MK3S",
        "text": f"PrusaLink {VERSION}",
        "firmware": FIRMWARE,
        "sdk": VERSION,
        "capabilities": {"upload-by-put": True},
        "hostname": hostname,
    }


def info(*, name: str, hostname: str, serial: str, nozzle_diameter: float, port: int) -> dict[str, Any]:
    """`GET /api/v1/info`: min_extrusion_temp is LimitsMK3S.min_temp_nozzle_e."""
    return {
        "name": name,
        "location": "",
        "farm_mode": False,
        "network_error_chime": False,
        "nozzle_diameter": nozzle_diameter,
        "min_extrusion_temp": 170,
        "serial": serial,
        "hostname": hostname,
        "port": port,
    }


def storage_list(
    files: list[tuple[int, bool]], free: int, total: int, *, local_available: bool = True
) -> list[dict[str, Any]]:
    """`GET /api/v1/storage`'s list: local first, then the SD card. `files`: (size, is_print_file).
    Without its local storage (a data folder it ignores, e.g. under /tmp) only the skeleton is left."""
    prints = sum(size for size, is_print in files if is_print)
    local: dict[str, Any] = {"type": "LOCAL", "path": "/local", "available": False}
    if local_available:
        local = {
            "type": "LOCAL",
            "path": "/local",
            "available": True,
            "free_space": free,
            "total_space": total,
            "read_only": False,
            "name": LOCAL_NAME,
            "print_files": prints,
            "system_files": sum(size for size, _ in files) - prints,
        }
    sdcard = {
        "type": "SDCARD",
        "path": "/sdcard",
        "available": True,
        "read_only": True,
        "name": SD_NAME,
        "print_files": 0,
        "system_files": 0,
    }
    return [local, sdcard]


def status_storage(free: int) -> list[dict[str, Any]]:
    """`/api/v1/status` `storage`: a list, where Buddy has one object."""
    return [
        {"path": "/local", "read_only": False, "free_space": free, "name": LOCAL_NAME},
        {"path": "/sdcard", "read_only": True, "name": SD_NAME},
    ]


def job_file(printer_path: str, size: int, m_timestamp: int) -> dict[str, Any]:
    """`/api/v1/job` `file`: `path` and `display_path` are the file's own path, not its folder."""
    name = printer_path.rsplit("/", 1)[-1]
    rel = printer_path.removeprefix(f"/{LOCAL_NAME}")
    return {
        "name": name,
        "display_name": name,
        "path": printer_path,
        "display_path": printer_path,
        "size": size,
        "m_timestamp": m_timestamp,
        "refs": {"download": f"/api/files/local{quote(rel)}/raw", "icon": None, "thumbnail": None},
        "meta": {},
    }
