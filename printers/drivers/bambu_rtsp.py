"""A still from an X1's camera: RTSP over TLS on port 322 (`/streaming/live/1`, user `bblp`, the
access code as password, digest or basic authentication), H.264 in RTP interleaved on the same
connection (RFC 2326 §10.12, RFC 6184). This reads RTP until a whole key frame (IDR) has come,
and ffmpeg (apt install ffmpeg) turns it into a JPEG.

The RTSP dialogue is done here, not by ffmpeg, so that the connection goes through the driver's
TLS context (the printer's pinned certificate) and the access code never shows on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from io import BufferedReader

PATH = "/streaming/live/1"
MAX_FRAME = 8 << 20
MAX_BODY = 64 << 10
START = b"\x00\x00\x00\x01"


class CameraError(Exception):
    """No still: the message says why (refused, no key frame, no decoder)."""


def grab_jpeg(
    context: ssl.SSLContext, host: str, port: int, server_name: str, access_code: str, timeout: float
) -> bytes:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise CameraError(
            "an X1's camera sends H.264, and the agent needs ffmpeg to make a still of it: apt install ffmpeg"
        )
    frame = grab_key_frame(context, host, port, server_name, access_code, timeout)
    decoded = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "h264", "-i", "pipe:0",
         "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "3", "pipe:1"],
        input=frame, capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    if decoded.returncode != 0 or not decoded.stdout.startswith(b"\xff\xd8"):
        raise CameraError(f"ffmpeg could not decode the camera's key frame: {decoded.stderr.decode()[-300:]}")
    return decoded.stdout


def grab_key_frame(
    context: ssl.SSLContext, host: str, port: int, server_name: str, access_code: str, timeout: float
) -> bytes:
    """SPS, PPS and one key frame's slices as an H.264 Annex B stream."""
    url = f"rtsps://{host}:{port}{PATH}"
    deadline = time.monotonic() + timeout
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as sock,
    ):
        rtsp = _Rtsp(sock, "bblp", access_code)
        sdp = rtsp.request("DESCRIBE", url, {"Accept": "application/sdp"})
        base = rtsp.headers.get("content-base", url + "/")
        control = _sdp_value(sdp, r"a=control:(\S+)") or ""
        track = control if "://" in control else base.rstrip("/") + "/" + control.lstrip("/")
        sprop = _sdp_value(sdp, r"sprop-parameter-sets=([^;\s]+)") or ""
        sets = [base64.b64decode(s) for s in sprop.split(",") if s]
        rtsp.request("SETUP", track, {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"})
        session = rtsp.headers.get("session", "").split(";")[0]
        rtsp.request("PLAY", url, {"Session": session, "Range": "npt=0.000-"})
        nals = _key_frame(rtsp.reader, deadline)
    have = {n[0] & 0x1F for n in nals}
    head = [n for n in sets if n and n[0] & 0x1F not in have]  # SPS and PPS, when only the SDP had them
    return b"".join(START + n for n in [*head, *nals])


class _Rtsp:
    def __init__(self, sock: ssl.SSLSocket, user: str, password: str) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.user, self.password = user, password
        self.cseq = 0
        self.auth: tuple[str, dict[str, str]] | None = None  # the scheme the camera asked for
        self.headers: dict[str, str] = {}

    def request(self, method: str, uri: str, headers: dict[str, str]) -> str:
        for _attempt in range(2):
            self.cseq += 1
            lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: printfarm"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            if self.auth is not None:
                lines.append(f"Authorization: {self._authorization(method, uri)}")
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, body = self._response()
            if status == 401 and self.auth is None:
                challenge = self.headers.get("www-authenticate", "")
                scheme, _, rest = challenge.partition(" ")
                self.auth = (scheme.lower(), dict(re.findall(r'(\w+)="?([^",]*)"?', rest)))
                continue
            if status == 401:
                raise CameraError("the camera refused the access code (RTSP 401)")
            if status != 200:
                raise CameraError(f"the camera answered {method} with RTSP {status}")
            return body
        raise CameraError("the camera refused the access code (RTSP 401)")

    def _authorization(self, method: str, uri: str) -> str:
        assert self.auth is not None
        scheme, f = self.auth
        if scheme == "basic":
            return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        realm, nonce = f.get("realm", ""), f.get("nonce", "")
        ha1 = hashlib.md5(f"{self.user}:{realm}:{self.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        said = {"username": self.user, "realm": realm, "nonce": nonce, "uri": uri, "response": response}
        return "Digest " + ", ".join(f'{k}="{v}"' for k, v in said.items())

    def _response(self) -> tuple[int, str]:
        first = self.reader.read(1)
        while first == b"$":  # RTP that came before the answer: skip it
            head = self.reader.read(3)
            self.reader.read(struct.unpack(">H", head[1:3])[0] if len(head) == 3 else 0)
            first = self.reader.read(1)
        line = first + self.reader.readline(4096)
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("RTSP/") or not parts[1].isdigit():
            raise CameraError(f"the camera does not speak RTSP (it said {line[:40]!r})")
        self.headers = {}
        for _ in range(64):
            raw = self.reader.readline(4096).decode("latin-1").strip()
            if not raw:
                break
            key, _, value = raw.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        size = int(self.headers.get("content-length", "0") or 0)
        if not 0 <= size <= MAX_BODY:
            raise CameraError(f"the camera sent a {size}-byte answer")
        return int(parts[1]), self.reader.read(size).decode("latin-1")


def _sdp_value(sdp: str, pattern: str) -> str | None:
    """The first match in the video section of the SDP (or anywhere, without sections)."""
    video = sdp.split("m=video", 1)[-1]
    found = re.search(pattern, video)
    return found[1] if found else None


def _key_frame(reader: BufferedReader, deadline: float) -> list[bytes]:
    """RTP packets on channel 0 until the end (marker bit) of an access unit that holds an IDR
    slice; that unit's NAL units, FU-A fragments put together."""
    unit: list[bytes] = []
    fragment = bytearray()
    size = 0
    while time.monotonic() < deadline:
        head = reader.read(4)
        if len(head) < 4:
            raise CameraError("the camera closed the stream before a key frame")
        if head[0:1] != b"$":
            raise CameraError("the camera sent something other than interleaved RTP")
        length = struct.unpack(">H", head[2:4])[0]
        packet = reader.read(length)
        if head[1] != 0 or len(packet) < 13:
            continue  # RTCP, or nothing
        marker, offset = packet[1] & 0x80, 12 + 4 * (packet[0] & 0x0F)
        if packet[0] & 0x10:  # a header extension
            offset += 4 + 4 * struct.unpack(">H", packet[offset + 2 : offset + 4])[0]
        payload = packet[offset:]
        kind = payload[0] & 0x1F if payload else 0
        if kind == 28 and len(payload) > 2:  # FU-A
            if payload[1] & 0x80:
                fragment = bytearray([(payload[0] & 0xE0) | (payload[1] & 0x1F)])
            fragment += payload[2:]
            if payload[1] & 0x40:
                unit.append(bytes(fragment))
                fragment = bytearray()
        elif kind == 24:  # STAP-A: several small NAL units
            at = 1
            while at + 2 <= len(payload):
                n = struct.unpack(">H", payload[at : at + 2])[0]
                unit.append(payload[at + 2 : at + 2 + n])
                at += 2 + n
        elif 1 <= kind <= 23:
            unit.append(payload)
        size += len(payload)
        if size > MAX_FRAME:
            raise CameraError("no key frame within 8 MB of video")
        if marker:
            if any(n and n[0] & 0x1F == 5 for n in unit):
                return unit
            unit = []
    raise CameraError("no key frame from the camera in time")
