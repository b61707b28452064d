"""The emulators' camera: a PNG made here (no imaging library on an agent's install) whose colour
says the printer's state, so a test can tell the snapshot at a print's start from the one at its end."""

from __future__ import annotations

import hashlib
import struct
import zlib

WIDTH, HEIGHT = 160, 120


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def state_color(state: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(state.encode()).digest()
    return digest[0], digest[1], digest[2]


def camera_png(state: str) -> bytes:
    """A WIDTH x HEIGHT RGB PNG: a bed-like band at the bottom, the rest in `state`'s colour."""
    r, g, b = state_color(state)
    top = bytes([r, g, b]) * WIDTH
    bed = bytes([40, 40, 40]) * WIDTH
    rows = b"".join(b"\x00" + (bed if y >= HEIGHT * 3 // 4 else top) for y in range(HEIGHT))
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )
