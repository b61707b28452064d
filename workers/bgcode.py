"""Read Prusa binary G-code (`.bgcode`): the metadata blocks, thumbnails and checksums.

Format (prusa3d/libbgcode doc/specifications.md; protocols.md B.5), little-endian throughout:
a 10-byte file header (magic `GCDE`, uint32 version 1, uint16 checksum type 0 none / 1 CRC32),
then blocks in a fixed order: file metadata (optional), printer metadata, thumbnails (optional),
print metadata, slicer metadata, G-code blocks. A block is a header (uint16 type, uint16
compression, uint32 uncompressed size, + uint32 compressed size when compressed), its parameters
(uint16 encoding; thumbnails: uint16 format, width, height), its data, and with CRC32 a 4-byte
checksum over everything before it in the block. Metadata is INI text, `key=value` per line.

Only metadata and thumbnails are decoded (deflate or stored, what PrusaSlicer writes for them);
G-code blocks (usually heatshrink + MeatPack) are checked against their checksums but not
decoded: the farm sends the file to the printer as it is. Stdlib only: the coordinator imports it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GCDE"
VERSION = 1
CHECKSUM_NONE, CHECKSUM_CRC32 = 0, 1
FILE_HEADER = struct.Struct("<4sIH")
BLOCK_HEADER = struct.Struct("<HHI")  # + uint32 compressed size when compression != 0

FILE_METADATA, GCODE, SLICER_METADATA, PRINTER_METADATA, PRINT_METADATA, THUMBNAIL = range(6)
BLOCK_NAMES = {
    FILE_METADATA: "file metadata",
    GCODE: "G-code",
    SLICER_METADATA: "slicer metadata",
    PRINTER_METADATA: "printer metadata",
    PRINT_METADATA: "print metadata",
    THUMBNAIL: "thumbnail",
}
COMPRESSION_NONE, COMPRESSION_DEFLATE, COMPRESSION_HEATSHRINK_11, COMPRESSION_HEATSHRINK_12 = range(4)
THUMBNAIL_FORMATS = {0: "png", 1: "jpg", 2: "qoi"}
_READ_CHUNK = 1024 * 1024


class BgcodeError(Exception):
    """The file is not a readable binary G-code; the message says where and why."""


@dataclass
class Thumbnail:
    format: str  # "png", "jpg" or "qoi"
    width: int
    height: int
    data: bytes


@dataclass
class BgcodeFile:
    version: int
    checksum_type: int
    file_metadata: dict[str, str] = field(default_factory=dict)
    printer_metadata: dict[str, str] = field(default_factory=dict)
    print_metadata: dict[str, str] = field(default_factory=dict)
    slicer_metadata: dict[str, str] = field(default_factory=dict)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    gcode_blocks: int = 0


def _ini(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _read_exact(f: BinaryIO, n: int, what: str, offset: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BgcodeError(f"the file ends inside the {what} at byte {offset} (truncated?)")
    return data


def _decompress(data: bytes, compression: int, size: int, what: str, offset: int) -> bytes:
    if compression == COMPRESSION_NONE:
        return data
    if compression != COMPRESSION_DEFLATE:
        raise BgcodeError(
            f"the {what} block at byte {offset} is heatshrink-compressed; this reader inflates only deflate"
        )
    try:
        out = zlib.decompress(data)
    except zlib.error as exc:
        raise BgcodeError(f"the {what} block at byte {offset} does not inflate: {exc}") from exc
    if len(out) != size:
        raise BgcodeError(f"the {what} block at byte {offset} inflates to {len(out)} bytes, not {size}")
    return out


def read_bgcode(path: Path) -> BgcodeFile:
    """Parse `path`, checking the block order and every block's CRC32 (G-code blocks included)."""
    path = Path(path)
    with path.open("rb") as f:
        size = path.stat().st_size
        magic, version, checksum_type = FILE_HEADER.unpack(_read_exact(f, FILE_HEADER.size, "file header", 0))
        if magic != MAGIC:
            raise BgcodeError("it does not start with GCDE (text G-code? name it .gcode)")
        if version != VERSION:
            raise BgcodeError(f"binary G-code version {version} is not supported (only {VERSION})")
        if checksum_type not in (CHECKSUM_NONE, CHECKSUM_CRC32):
            raise BgcodeError(f"unknown checksum type {checksum_type} in the file header")
        result = BgcodeFile(version=version, checksum_type=checksum_type)
        order: list[int] = []
        while f.tell() < size:
            order.append(_read_block(f, result))
    _check_order(order)
    return result


def _read_block(f: BinaryIO, result: BgcodeFile) -> int:
    offset = f.tell()
    raw_header = _read_exact(f, BLOCK_HEADER.size, "block header", offset)
    kind, compression, usize = BLOCK_HEADER.unpack(raw_header)
    if kind not in BLOCK_NAMES:
        raise BgcodeError(f"unknown block type {kind} at byte {offset} (damaged file?)")
    what = BLOCK_NAMES[kind]
    if compression > COMPRESSION_HEATSHRINK_12:
        raise BgcodeError(f"the {what} block at byte {offset} has unknown compression {compression}")
    stored = usize
    if compression != COMPRESSION_NONE:
        raw_size = _read_exact(f, 4, "block header", offset)
        raw_header += raw_size
        (stored,) = struct.unpack("<I", raw_size)
    params = _read_exact(f, 6 if kind == THUMBNAIL else 2, f"{what} block parameters", offset)
    crc = zlib.crc32(params, zlib.crc32(raw_header))
    keep = kind != GCODE  # G-code blocks are only checksummed: they can be large
    chunks = []
    left = stored
    while left:
        chunk = _read_exact(f, min(left, _READ_CHUNK), f"{what} block", offset)
        crc = zlib.crc32(chunk, crc)
        if keep:
            chunks.append(chunk)
        left -= len(chunk)
    if result.checksum_type == CHECKSUM_CRC32:
        (expected,) = struct.unpack("<I", _read_exact(f, 4, f"{what} block checksum", offset))
        if expected != crc:
            raise BgcodeError(f"the {what} block at byte {offset} fails its CRC32 check (damaged file)")
    if kind == GCODE:
        result.gcode_blocks += 1
        return kind
    data = _decompress(b"".join(chunks), compression, usize, what, offset)
    if kind == THUMBNAIL:
        fmt, width, height = struct.unpack("<3H", params)
        result.thumbnails.append(Thumbnail(THUMBNAIL_FORMATS.get(fmt, str(fmt)), width, height, data))
        return kind
    (encoding,) = struct.unpack("<H", params)
    if encoding != 0:
        raise BgcodeError(f"the {what} block at byte {offset} has unknown encoding {encoding} (not INI)")
    target = {
        FILE_METADATA: result.file_metadata,
        PRINTER_METADATA: result.printer_metadata,
        PRINT_METADATA: result.print_metadata,
        SLICER_METADATA: result.slicer_metadata,
    }[kind]
    target.update(_ini(data))
    return kind


def _check_order(order: list[int]) -> None:
    """File metadata?, printer metadata, thumbnails*, print metadata, slicer metadata, G-code+."""
    expected = [PRINTER_METADATA, PRINT_METADATA, SLICER_METADATA]
    seen = [k for k in order if k not in (GCODE, THUMBNAIL, FILE_METADATA)]
    if seen != expected or not order or GCODE not in order:
        missing = [BLOCK_NAMES[k] for k in expected if k not in order]
        if GCODE not in order:
            missing.append("G-code")
        detail = f"it lacks the {', '.join(missing)} block(s)" if missing else "its blocks are out of order"
        raise BgcodeError(f"not a complete binary G-code: {detail}")
    first_gcode = order.index(GCODE)
    if any(k != GCODE for k in order[first_gcode:]):
        raise BgcodeError("not a valid binary G-code: metadata after the G-code blocks")


__all__ = ["BgcodeError", "BgcodeFile", "Thumbnail", "read_bgcode"]
