"""The plate pictures of a Bambu package, drawn from the sliced G-code with the standard library only.

Bambu printers show `Metadata/plate_1.png` (and its small and unlit variants) on their screen and
firmware-side validators expect all three. The slicing worker has no OpenGL (PrusaSlicer's CLI
renders no thumbnails headless) and the CLI may run without numpy, so this draws the printed
extrusions seen from above: the plate in grey, the part in its filament colour, brighter the
higher it is. The G-code is the mesh as placed and arranged, copies and all.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

PLATE_SIZE = 512
SMALL_SIZE = 128
DEFAULT_RGB = (236, 118, 44)  # a filament orange, when the config names no colour
PLATE_RGB = (70, 70, 74)
MARGIN_PX = 8
MAX_PIXEL_STEPS = 4_000_000  # bounds the drawing time of a huge print: top layers first
MAX_SEGMENTS = 400_000  # moves kept in memory, from the top down
_MOVE = re.compile(rb"^G[01] ")
_AXIS = re.compile(rb"([XYZE])(-?\d*\.?\d+)")


def _segments(gcode: Path) -> list[tuple[float, list[tuple[float, float, float, float]]]]:
    """Extruding moves of the printed layers, as [(z, [(x0, y0, x1, y1), ...]), ...] from the bottom;
    only the top MAX_SEGMENTS or so are kept (what is seen from above), so memory stays bounded."""
    layers: dict[float, list[tuple[float, float, float, float]]] = {}
    kept = 0
    x = y = z = 0.0
    printing = False
    with Path(gcode).open("rb") as f:
        for line in f:
            if line.startswith(b";LAYER_CHANGE"):
                printing = True
                while kept > MAX_SEGMENTS and len(layers) > 1:
                    kept -= len(layers.pop(min(layers)))
            elif line.startswith(b";===== printfarm end"):
                break
            if not _MOVE.match(line):
                continue
            axes = dict(_AXIS.findall(line.split(b";", 1)[0]))
            nx, ny = float(axes.get(b"X", x)), float(axes.get(b"Y", y))
            z = float(axes.get(b"Z", z))
            if printing and float(axes.get(b"E", 0.0)) > 0 and (nx, ny) != (x, y):
                layers.setdefault(round(z, 3), []).append((x, y, nx, ny))
                kept += 1
            x, y = nx, ny
    return sorted(layers.items())


def _rgb(colour: str | None) -> tuple[int, int, int]:
    text = (colour or "").strip().strip('"').split(";")[0].lstrip("#")
    if re.fullmatch(r"[0-9A-Fa-f]{6}", text):
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    return DEFAULT_RGB


def render_plate(
    gcode: Path, bed: tuple[float, float], colour: str | None = None
) -> tuple[int, bytearray, bytearray]:
    """(size, shaded RGBA pixels, flat RGBA pixels) of the plate seen from above at PLATE_SIZE."""
    size = PLATE_SIZE
    scale = (size - 2 * MARGIN_PX) / max(bed[0], bed[1])
    pixels = bytearray(size * size * 4)
    x0 = (size - bed[0] * scale) / 2
    y0 = (size - bed[1] * scale) / 2
    for py in range(int(y0), int(y0 + bed[1] * scale)):
        row = py * size * 4
        for px in range(int(x0), int(x0 + bed[0] * scale)):
            pixels[row + px * 4 : row + px * 4 + 4] = bytes((*PLATE_RGB, 255))
    flat = bytearray(pixels)
    layers = _segments(gcode)
    if not layers:
        return size, pixels, flat
    top = layers[-1][0] or 1.0
    base = _rgb(colour)
    drawn = bytearray(size * size)  # 1 where a higher layer already covers the pixel
    budget = MAX_PIXEL_STEPS
    for z, segs in reversed(layers):  # from the top: what is seen from above is drawn first
        light = 0.55 + 0.45 * (z / top)
        rgba = bytes((*(min(255, int(c * light)) for c in base), 255))
        plain = bytes((*base, 255))
        for ax, ay, bx, by in segs:
            sx, sy = x0 + ax * scale, y0 + (bed[1] - ay) * scale
            ex, ey = x0 + bx * scale, y0 + (bed[1] - by) * scale
            steps = max(1, int(max(abs(ex - sx), abs(ey - sy))))
            budget -= steps
            for i in range(steps + 1):
                px, py = int(sx + (ex - sx) * i / steps), int(sy + (ey - sy) * i / steps)
                if 0 <= px < size and 0 <= py < size and not drawn[py * size + px]:
                    drawn[py * size + px] = 1
                    at = (py * size + px) * 4
                    pixels[at : at + 4] = rgba
                    flat[at : at + 4] = plain
        if budget < 0:
            break
    return size, pixels, flat


def shrink(size: int, pixels: bytearray, new: int) -> bytearray:
    """Box-average an RGBA square image down to `new` pixels a side (size a multiple of new)."""
    k = size // new
    out = bytearray(new * new * 4)
    for oy in range(new):
        for ox in range(new):
            acc = [0, 0, 0, 0]
            for dy in range(k):
                row = ((oy * k + dy) * size + ox * k) * 4
                for dx in range(k):
                    for c in range(4):
                        acc[c] += pixels[row + dx * 4 + c]
            out[(oy * new + ox) * 4 : (oy * new + ox) * 4 + 4] = bytes(a // (k * k) for a in acc)
    return out


def png(size: int, pixels: bytes | bytearray) -> bytes:
    """An 8-bit RGBA PNG (filter 0 on every row)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride = size * 4
    raw = b"".join(b"\x00" + bytes(pixels[r * stride : (r + 1) * stride]) for r in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def plate_pngs(gcode: Path, bed: tuple[float, float], colour: str | None = None) -> dict[str, bytes]:
    """The three pictures: "plate" (512, shaded by height), "small" (128) and "no_light" (flat)."""
    size, lit, flat = render_plate(gcode, bed, colour)
    return {
        "plate": png(size, lit),
        "small": png(SMALL_SIZE, shrink(size, lit, SMALL_SIZE)),
        "no_light": png(size, flat),
    }


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


__all__ = ("plate_pngs", "png", "png_size", "render_plate")
