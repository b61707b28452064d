"""A Prusa MK3S firmware (Marlin-based) on a pseudo-terminal, enough for Prusa-Link to take it for a
printer: the answers to the queries Prusa-Link makes (prusa/link/serial/serial_adapter.py,
printer_adapter/printer_polling.py, structures/regular_expressions.py) and "ok" to every G-code it
streams. It keeps every command it received, so a test can see what the host sent."""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
import tty

FIRMWARE = "3.14.1-8237"
SERIAL_NUMBER = "CZPX1234X004XK12345"
PRINTER_TYPE = "302"  # MK3S (prusa/link/const.py PRINTER_TYPES)
TEMPERATURES = "T:24.0 /0.0 B:24.0 /0.0 T0:24.0 /0.0 @:0 B@:0 P:24.0 A:25.0"
POSITION = "X:0.00 Y:0.00 Z:0.15 E:0.00 Count X: 0.00 Y:0.00 Z:0.15 E:0.00"
FANS = "E0:0 RPM PRN1:0 RPM E0@:0 PRN1@:0"
_NUMBERED = re.compile(r"^N-?\d+\s+(?P<cmd>.*?)\*\d+$")

_ANSWERS: dict[str, list[str]] = {
    "PRUSA Fir": [FIRMWARE],
    "M862.2 Q": [PRINTER_TYPE],
    "M862.1 Q": ["0.40"],
    "PRUSA SN": [SERIAL_NUMBER],
    "M115": [
        f"FIRMWARE_NAME:Prusa-Firmware {FIRMWARE.split('-')[0]} based on Marlin "
        "FIRMWARE_URL:https://github.com/prusa3d/Prusa-Firmware PROTOCOL_VERSION:1.0 "
        "MACHINE_TYPE:Prusa i3 MK3S EXTRUDER_COUNT:1 UUID:00000000-0000-0000-0000-000000000000",
        "Cap:AUTOREPORT_TEMP:1",
        "Cap:AUTOREPORT_FANS:1",
        "Cap:AUTOREPORT_POSITION:1",
        "Cap:EXTENDED_M20:1",
    ],
    "M27 P": ["Not SD printing"],
    "M73": ["SILENT MODE: Percent done: -1; print time remaining in mins: -1; Change in mins: -1"],
    "M220": ["100%"],
    "M221": ["100%"],
    "M420": ["Mesh bed leveling not active."],
    "M114": ["X:0.00 Y:0.00 Z:0.15 E:0.00 Count X: 0.00 Y:0.00 Z:0.15 E:0.00"],
    "M123": ["E0:0 RPM PRN1:0 RPM E0@:0 PRN1@:0"],
    "M20": ["Begin file list", "End file list"],
    "M21": ["echo:SD card ok"],
}


_D3 = re.compile(r"^D3 Ax(?P<address>[0-9a-fA-F]+)(?: C(?P<count>\d+))?(?: X(?P<data>[0-9a-fA-F]+))?")


def _eeprom() -> bytearray:
    """An MK3S EEPROM as Prusa-Link reads it (model_classes.EEPROMParams): zeros, and the eight
    steel sheets at 0x0D49 (name[7], z offset u16, bed and PINDA temperatures)."""
    memory = bytearray(4096)
    for i, name in enumerate(
        ("Smooth1", "Smooth2", "Textur1", "Textur2", "Satin  ", "NylonPA", "Custom1", "Custom2")
    ):
        memory[0x0D49 + 11 * i : 0x0D49 + 11 * (i + 1)] = name.encode() + bytes([0xFF, 0xFF, 60, 35])
    return memory


class MarlinPty:
    """`start()` opens the pty and answers in a daemon thread; `port` is the path to give the host.

    Opening the port resets the printer, as DTR does an Einsy: it ignores what arrives while it
    boots (BOOT_S), then says "start". The host's earlier output is gone with the old session."""

    BOOT_S = 0.5

    def __init__(self) -> None:
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        os.close(slave)  # with no one on the slave side, reading the master fails: the port is closed
        self.received: list[str] = []
        self.memory = _eeprom()
        self.resets = 0
        self._autoreport: tuple[float, int] | None = None  # M155 S<interval> C<mask>
        self._next_report = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="marlin-pty", daemon=True)

    def start(self) -> MarlinPty:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self._master)

    def _send(self, *lines: str) -> None:
        with contextlib.suppress(OSError):  # the host closed the port meanwhile
            os.write(self._master, "".join(f"{line}\n" for line in lines).encode())

    def _read(self) -> bytes | None:
        """Bytes from the host; b"" when there are none yet; None while the port is closed."""
        ready, _, _ = select.select([self._master], [], [], 0.1)
        if not ready:
            return b""
        try:
            return os.read(self._master, 4096)
        except OSError:  # EIO: no process has the slave open
            return None

    def _run(self) -> None:
        is_open, buffer, booted_at = False, b"", 0.0
        while not self._stop.is_set():
            if is_open:
                self._report()
            data = self._read()
            if data is None:
                is_open, buffer = False, b""
                time.sleep(0.05)
                continue
            if not is_open:  # no hang-up any more: someone opened the port, and the board resets
                is_open, booted_at, self.resets = True, time.monotonic() + self.BOOT_S, self.resets + 1
                self._autoreport = None
                data, buffer = b"", b""
                threading.Timer(self.BOOT_S, self._send, ("start",)).start()
            if time.monotonic() < booted_at:
                continue  # the bootloader does not listen
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                self._answer(raw.decode(errors="replace").strip())

    def _report(self) -> None:
        """M155 autoreports (Prusa-Firmware: C bit 0 temperatures, bit 1 position, bit 2 fans)."""
        if self._autoreport is None or time.monotonic() < self._next_report:
            return
        seconds, mask = self._autoreport
        self._next_report = time.monotonic() + seconds
        lines = [TEMPERATURES] if mask & 1 else []
        lines += [POSITION] if mask & 2 else []
        lines += [FANS] if mask & 4 else []
        self._send(*lines)

    def _eeprom(self, command: str) -> list[str]:
        """`D3` (Prusa-Firmware dcodes.cpp): write with X<hex>, else dump C bytes, 16 a row."""
        match = _D3.match(command)
        if match is None:
            return []
        address = int(match.group("address"), 16)
        if match.group("data"):
            data = bytes.fromhex(match.group("data"))
            self.memory[address : address + len(data)] = data
            return []
        count = int(match.group("count") or 1)
        rows = []
        for start in range(address, address + count, 16):
            chunk = self.memory[start : min(start + 16, address + count)]
            rows.append(f"{start:06x}  " + " ".join(f"{b:02x}" for b in chunk))
        return rows

    def _answer(self, line: str) -> None:
        if not line:
            return
        numbered = _NUMBERED.match(line)
        command = numbered.group("cmd").strip() if numbered else line
        self.received.append(command)
        # A real printer answers after a few ms on the wire; answering at once races Prusa-Link's
        # serial queue, which files the instruction as sent only after its write returns.
        time.sleep(0.005)
        if command.startswith("D3 "):
            self._send(*self._eeprom(command), "ok")
            return
        if command.startswith("M105"):
            self._send(TEMPERATURES, "ok")
            return
        if command.startswith("M155"):
            interval = re.search(r"S(\d+)", command)
            mask = re.search(r"C(\d+)", command)
            seconds = int(interval.group(1)) if interval else 1
            self._autoreport = (seconds, int(mask.group(1)) if mask else 1) if seconds else None
            self._send("ok")
            return
        for query in sorted(_ANSWERS, key=len, reverse=True):
            if command == query or command.startswith(query + " "):
                self._send(*_ANSWERS[query], "ok")
                return
        self._send("ok")
