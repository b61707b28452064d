"""Pre-sliced Prusa binary G-code (.bgcode): model, estimates and thumbnails read from the
metadata blocks, every checksum verified, damaged files refused with a clear message.

PrusaSlicer 2.5 cannot write .bgcode (that came with 2.7), so the files here are made two ways:
by a small writer that follows libbgcode's specification (doc/specifications.md), and, from a
real PrusaSlicer slice, by libbgcode itself (the pybgcode binding, a dev dependency), whose own
reader also checks what our writer produces.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from farm.coordinator.pipeline import source_kind
from farm.core.printer_models import MODELS
from farm.core.slice_error import SliceError
from tests.test_slicer import box_triangles, write_binary_stl
from workers.bgcode import BgcodeError, read_bgcode
from workers.gcode_meta import parse_gcode_meta, parse_sliced_file
from workers.slicer import slice_mesh

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")

FILE_META, GCODE, SLICER_META, PRINTER_META, PRINT_META, THUMB = range(6)
# A 1x1 transparent PNG: a thumbnail's bytes are carried, not decoded.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _block(kind: int, params: bytes, data: bytes, *, deflate: bool, crc: bool) -> bytes:
    stored = zlib.compress(data) if deflate else data
    header = struct.pack("<HHI", kind, 1 if deflate else 0, len(data))
    if deflate:
        header += struct.pack("<I", len(stored))
    body = header + params + stored
    return body + (struct.pack("<I", zlib.crc32(body)) if crc else b"")


def _ini(values: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in values.items()).encode()


def _whole_lines(data: bytes, limit: int) -> list[bytes]:
    """G-code blocks end at line ends, as PrusaSlicer writes them (libbgcode's converter
    crashes on a line split across blocks)."""
    chunks, start = [], 0
    while start < len(data):
        end = len(data) if len(data) - start <= limit else data.rindex(b"\n", start, start + limit) + 1
        chunks.append(data[start:end])
        start = end
    return chunks


def write_bgcode(
    path: Path,
    *,
    printer: dict[str, str],
    print_: dict[str, str],
    slicer: dict[str, str],
    gcode: str,
    thumbnails: list[tuple[int, int, bytes]] = (),  # type: ignore[assignment]
    crc: bool = True,
    skip: frozenset[int] = frozenset(),
) -> Path:
    """A .bgcode per the spec: header, file/printer metadata, thumbnails, print and slicer
    metadata (deflated, as PrusaSlicer does), then the G-code in blocks under 64 KiB (stored)."""
    out = [struct.pack("<4sIH", b"GCDE", 1, 1 if crc else 0)]
    enc = struct.pack("<H", 0)  # INI
    blocks = [(FILE_META, enc, _ini({"Producer": "printfarm test writer"}), False)]
    blocks.append((PRINTER_META, enc, _ini(printer), False))
    blocks += [(THUMB, struct.pack("<3H", 0, w, h), png, False) for w, h, png in thumbnails]
    blocks += [(PRINT_META, enc, _ini(print_), False), (SLICER_META, enc, _ini(slicer), True)]
    blocks += [(GCODE, enc, chunk, False) for chunk in _whole_lines(gcode.encode(), 65535)]
    out += [_block(k, p, d, deflate=z, crc=crc) for k, p, d, z in blocks if k not in skip]
    path.write_bytes(b"".join(out))
    return path


PRINTER = {
    "printer_model": "MK4S",
    "filament_type": "PETG",
    "nozzle_diameter": "0.4",
    "layer_height": "0.2",
    "max_layer_z": "10.2",
    "filament used [mm]": "1384.48",
    "filament used [g]": "4.13",
    "estimated printing time (normal mode)": "1h 21m 13s",
}
PRINT = {"filament used [cm3]": "3.33", "total filament used [g]": "4.13"}
SLICER = {"first_layer_height": "0.2", "layer_height": "0.2", "printer_model": "MK4S"}


@pytest.fixture
def bgcode(tmp_path: Path) -> Path:
    return write_bgcode(
        tmp_path / "part.bgcode",
        printer=PRINTER,
        print_=PRINT,
        slicer=SLICER,
        gcode="G28\n" + "G1 X10 Y10 E1\n" * 10000,
        thumbnails=[(1, 1, PNG_1X1)],
    )


def test_bgcode_metadata_and_thumbnails(bgcode: Path) -> None:
    meta = parse_sliced_file(bgcode)
    assert meta.printer_model == "MK4S"
    assert meta.print_time_s == 3600 + 21 * 60 + 13
    assert (meta.filament_g, meta.filament_mm, meta.filament_cm3) == (4.13, 1384.48, 3.33)
    assert meta.filament_type == "PETG" and meta.nozzle_diameter == 0.4
    assert meta.layers == 51  # 0.2 mm first layer, then 0.2 mm steps to 10.2 mm
    assert meta.thumbnails == ["1x1"]
    bg = read_bgcode(bgcode)
    assert bg.thumbnails[0].data == PNG_1X1 and bg.thumbnails[0].format == "png"
    assert bg.gcode_blocks == 3 and bg.file_metadata["Producer"] == "printfarm test writer"
    assert source_kind("part.bgcode") == "gcode"  # the coordinator takes it as pre-sliced


def test_bgcode_without_checksums_reads_too(tmp_path: Path) -> None:
    path = write_bgcode(
        tmp_path / "n.bgcode", printer=PRINTER, print_=PRINT, slicer=SLICER, gcode="G28\n", crc=False
    )
    assert read_bgcode(path).checksum_type == 0
    assert parse_sliced_file(path).printer_model == "MK4S"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_bgcode_is_refused_with_a_clear_message(bgcode: Path, tmp_path: Path) -> None:
    good = bgcode.read_bytes()
    cases: list[tuple[bytes, str]] = [
        (good[: len(good) - 100], r"the file ends inside the G-code block at byte \d+ \(truncated\?\)"),
        (b"GCDX" + good[4:], r"it does not start with GCDE \(text G-code\? name it \.gcode\)"),
        (good[:4] + struct.pack("<I", 2) + good[8:], r"binary G-code version 2 is not supported"),
    ]
    for i, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.bgcode"
        path.write_bytes(data)
        with pytest.raises(SliceError, match=rf"bad{i}\.bgcode is not a usable \.bgcode: {message}"):
            parse_sliced_file(path)
    # One flipped bit in the middle of the G-code: its block's CRC32 no longer matches.
    damaged = tmp_path / "flip.bgcode"
    damaged.write_bytes(good)
    _flip(damaged, len(good) - 5000)
    with pytest.raises(
        SliceError, match=r"the G-code block at byte \d+ fails its CRC32 check \(damaged file\)"
    ):
        parse_sliced_file(damaged)
    # And in the printer metadata, where the model is read from.
    damaged.write_bytes(good)
    _flip(damaged, good.index(b"printer_model=MK4S") + len("printer_model=MK4"))
    with pytest.raises(SliceError, match=r"printer metadata block at byte \d+ fails its CRC32 check"):
        parse_sliced_file(damaged)


def test_incomplete_or_misnamed_bgcode(tmp_path: Path) -> None:
    path = write_bgcode(
        tmp_path / "p.bgcode",
        printer=PRINTER,
        print_=PRINT,
        slicer=SLICER,
        gcode="G28\n",
        skip=frozenset({PRINTER_META}),
    )
    with pytest.raises(
        SliceError, match=r"not a complete binary G-code: it lacks the printer metadata block"
    ):
        parse_sliced_file(path)
    # Printers choose the parser by the file name: binary content must be named .bgcode.
    full = write_bgcode(tmp_path / "q.bgcode", printer=PRINTER, print_=PRINT, slicer=SLICER, gcode="G28\n")
    misnamed = tmp_path / "q.gcode"
    misnamed.write_bytes(full.read_bytes())
    with pytest.raises(SliceError, match=r"q\.gcode holds binary G-code; rename it to \.bgcode"):
        parse_sliced_file(misnamed)
    with pytest.raises(BgcodeError, match="does not start with GCDE"):
        read_bgcode(write_binary_stl(tmp_path / "x.bgcode", box_triangles((1, 1, 1))))


def test_libbgcode_reads_what_our_writer_writes(bgcode: Path, tmp_path: Path) -> None:
    pybgcode = pytest.importorskip("pybgcode")
    f = pybgcode.open(str(bgcode), "rb")
    try:
        assert pybgcode.read_metadata(f, "printer")["printer_model"] == "MK4S"
        assert pybgcode.read_metadata(f, "print")["total filament used [g]"] == "4.13"
    finally:
        pybgcode.close(f)
    # libbgcode's converter checks every block (and its CRC32) on the way back to text.
    src, dst = pybgcode.open(str(bgcode), "rb"), pybgcode.open(str(tmp_path / "back.gcode"), "w")
    try:
        assert pybgcode.from_binary_to_ascii(src, dst, True) == pybgcode.EResult.Success
    finally:
        pybgcode.close(src)
        pybgcode.close(dst)
    assert (tmp_path / "back.gcode").read_text().count("G1 X10 Y10 E1") == 10000


@needs_slicer
def test_real_slice_converted_by_libbgcode_is_parsed_like_its_text(tmp_path: Path) -> None:
    """A real PrusaSlicer G-code made binary by Prusa's own library (heatshrink, MeatPack, CRC32)."""
    pybgcode = pytest.importorskip("pybgcode")
    cube = write_binary_stl(tmp_path / "cube.stl", box_triangles((20, 20, 10)))
    text = slice_mesh(cube, MODELS["MK4S"], tmp_path / "cube.gcode", material="PETG").gcode
    binary = tmp_path / "cube.bgcode"
    src, dst = pybgcode.open(str(text), "r"), pybgcode.open(str(binary), "wb")
    try:
        assert pybgcode.from_ascii_to_binary(src, dst, pybgcode.get_config()) == pybgcode.EResult.Success
    finally:
        pybgcode.close(src)
        pybgcode.close(dst)
    assert binary.read_bytes()[:4] == b"GCDE" and binary.stat().st_size < text.stat().st_size / 2
    from_text, from_binary = parse_gcode_meta(text), parse_sliced_file(binary)
    assert from_binary.printer_model == "MK4S" == from_text.printer_model
    for key in (
        "print_time_s",
        "filament_g",
        "filament_mm",
        "filament_cm3",
        "filament_type",
        "nozzle_diameter",
    ):
        assert getattr(from_binary, key) == getattr(from_text, key), key
    assert from_binary.print_time_s and from_binary.filament_type == "PETG"
    assert read_bgcode(binary).gcode_blocks > 1
    # A flipped bit in libbgcode's own output is caught too.
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0x10
    binary.write_bytes(bytes(data))
    with pytest.raises(SliceError, match="fails its CRC32 check"):
        parse_sliced_file(binary)
