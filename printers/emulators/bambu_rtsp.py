"""The X1's camera: RTSP over TLS (`rtsps://bblp:<access code>@host:322/streaming/live/1`), H.264
in RTP interleaved on the RTSP connection (RFC 2326 §10.12; RFC 6184 single NAL units and FU-A
fragments), digest authentication with user `bblp` and the access code. It sends one generated
frame (camera.X1_FRAME_H264: SPS, PPS and an IDR slice) again and again, like a still scene."""

from __future__ import annotations

import base64
import hashlib
import random
import secrets
import ssl
import struct
import threading
from io import BufferedReader

from printers.emulators.camera import x1_frame_nals
from printers.emulators.tls_server import TlsThreadServer

PATH = "/streaming/live/1"
REALM = "Bambu Lab camera"
# RTP payload per packet; a real camera's is ~1400, this small so that the 848-byte IDR slice
# goes in FU-A fragments as a real camera's bigger frames do.
MAX_PAYLOAD = 400
FRAME_EVERY_S = 0.5
CLOCK = 90_000  # H.264's RTP clock rate


def digest(user: str, password: str, nonce: str, method: str, uri: str) -> str:
    """RFC 2617's response without qop, as RTSP servers ask for it."""
    ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    return hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()


def _fields(header: str) -> dict[str, str]:
    """`Digest username="bblp", nonce="…"` -> {"username": "bblp", "nonce": "…"}."""
    out = {}
    for part in header.partition(" ")[2].split(","):
        key, _, value = part.strip().partition("=")
        out[key.lower()] = value.strip().strip('"')
    return out


def rtp_packets(nals: list[bytes], seq: int, timestamp: int, ssrc: int) -> list[bytes]:
    """One access unit as RTP packets: small NAL units whole, big ones as FU-A fragments; the
    marker bit on the last packet."""
    payloads: list[bytes] = []
    for nal in nals:
        if len(nal) <= MAX_PAYLOAD:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28  # FU-A, the NAL's F and NRI bits
        body = nal[1:]
        chunks = [body[i : i + MAX_PAYLOAD - 2] for i in range(0, len(body), MAX_PAYLOAD - 2)]
        for i, chunk in enumerate(chunks):
            start, end = 0x80 if i == 0 else 0, 0x40 if i == len(chunks) - 1 else 0
            payloads.append(bytes([indicator, start | end | (nal[0] & 0x1F)]) + chunk)
    packets = []
    for i, payload in enumerate(payloads):
        marker = 0x80 if i == len(payloads) - 1 else 0
        header = struct.pack(">BBHII", 0x80, marker | 96, (seq + i) & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        packets.append(header + payload)
    return packets


class RtspServer(TlsThreadServer):
    """One thread per client; each authenticated PLAY gets the frame every FRAME_EVERY_S."""

    thread_name = "bambu-rtsp"

    def __init__(self, host: str, port: int, context: ssl.SSLContext, access_code: str) -> None:
        super().__init__(host, port, context)
        self.access_code = access_code
        self.nals = x1_frame_nals()

    def handle(self, sock: ssl.SSLSocket) -> None:
        stop = threading.Event()  # ends this client's RTP sender with its session
        try:
            Session(self, sock, stop).run()
        finally:
            stop.set()


class Session:
    def __init__(self, server: RtspServer, sock: ssl.SSLSocket, stop: threading.Event) -> None:
        self.server, self.sock, self.stop = server, sock, stop
        self.lock = threading.Lock()  # answers and RTP share the socket
        self.nonce = secrets.token_hex(16)
        self.session_id = f"{random.getrandbits(48):012X}"
        self.playing = False

    def run(self) -> None:
        reader = self.sock.makefile("rb")
        while not self.stop.is_set():
            request = _read_request(reader)
            if request is None:
                return
            method, uri, headers = request
            self._answer(method, uri, headers)

    def _send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def _reply(
        self, cseq: str, status: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", "Server: printfarm emulator"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _authorized(self, method: str, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if not given.lower().startswith("digest "):
            return False
        f = _fields(given)
        expected = digest("bblp", self.server.access_code, self.nonce, method, f.get("uri", ""))
        return f.get("username") == "bblp" and f.get("nonce") == self.nonce and f.get("response") == expected

    def _answer(self, method: str, uri: str, headers: dict[str, str]) -> None:
        cseq = headers.get("cseq", "0")
        if method == "OPTIONS":
            self._reply(cseq, "200 OK", {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"})
            return
        if not self._authorized(method, headers):
            challenge = f'Digest realm="{REALM}", nonce="{self.nonce}"'
            self._reply(cseq, "401 Unauthorized", {"WWW-Authenticate": challenge})
            return
        path = "/" + uri.split("://", 1)[-1].partition("/")[2]
        if not path.startswith(PATH):
            self._reply(cseq, "404 Not Found")
        elif method == "DESCRIBE":
            described = {"Content-Type": "application/sdp", "Content-Base": f"{uri.rstrip('/')}/"}
            self._reply(cseq, "200 OK", described, self._sdp())
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "TCP" not in transport.upper():  # only interleaved: no UDP ports through a NAT
                self._reply(cseq, "461 Unsupported Transport")
                return
            transport = "RTP/AVP/TCP;unicast;interleaved=0-1"
            self._reply(cseq, "200 OK", {"Transport": transport, "Session": f"{self.session_id};timeout=60"})
        elif method == "PLAY":
            self._reply(cseq, "200 OK", {"Session": self.session_id, "Range": "npt=0.000-"})
            if not self.playing:
                self.playing = True
                threading.Thread(target=self._play, daemon=True, name="bambu-rtp").start()
        elif method == "GET_PARAMETER":  # a keep-alive
            self._reply(cseq, "200 OK", {"Session": self.session_id})
        elif method == "TEARDOWN":
            self._reply(cseq, "200 OK", {"Session": self.session_id})
            self.stop.set()
        else:
            self._reply(cseq, "405 Method Not Allowed")

    def _sdp(self) -> bytes:
        sps, pps = self.server.nals[0], self.server.nals[1]
        sets = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
        return (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Bambu camera\r\nt=0 0\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            f"a=fmtp:96 packetization-mode=1;profile-level-id={sps[1:4].hex()};"
            f"sprop-parameter-sets={sets}\r\n"
            "a=control:track1\r\n"
        ).encode()

    def _play(self) -> None:
        seq, timestamp, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
        try:
            while not self.stop.is_set():
                packets = rtp_packets(self.server.nals, seq, timestamp, ssrc)
                self._send(b"".join(b"$\x00" + struct.pack(">H", len(p)) + p for p in packets))
                seq, timestamp = seq + len(packets), timestamp + int(CLOCK * FRAME_EVERY_S)
                if self.stop.wait(FRAME_EVERY_S):
                    return
        except (OSError, ssl.SSLError):
            self.stop.set()


def _read_request(reader: BufferedReader) -> tuple[str, str, dict[str, str]] | None:
    """One RTSP request (method, URI, lower-cased headers), or None when the client hung up."""
    line = reader.readline(4096)
    while line in (b"\r\n", b"\n"):
        line = reader.readline(4096)
    if not line:
        return None
    method, uri, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for _ in range(64):
        raw = reader.readline(4096).decode("latin-1").strip()
        if not raw:
            break
        key, _, value = raw.partition(":")
        headers[key.strip().lower()] = value.strip()
    reader.read(min(int(headers.get("content-length", "0") or 0), 65536))  # e.g. GET_PARAMETER's body
    return method, uri, headers
