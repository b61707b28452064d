"""The Bambu printer's MQTT 3.1.1 broker over TLS (protocols.md §A.3-A.6): the wire format, the
sessions, and the printer's MQTT brain that turns `print.*` requests into printer moves and
publishes its `push_status` reports, in full or (P1/A1) as deltas."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from printers.emulators.bambu_printer import USERNAME, CommandError

if TYPE_CHECKING:  # the emulator owns the broker; only its type is needed here
    from printers.emulators.bambu import BambuEmulator


log = logging.getLogger(__name__)

SIGNATURE_REFUSED = 84033543  # 0x05024007
VERIFY_FAILED = "mqtt message verify failed"
SILENT_HEARTBEAT_S = 5.0  # a P1/A1 with nothing new still pushes a few keys this often
MODEL_CODES = {
    "X1C": "BL-P001",
    "X1": "BL-P002",
    "X1E": "C13",
    "P1P": "C11",
    "P1S": "C12",
    "A1": "N2S",
    "A1MINI": "N1",
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
