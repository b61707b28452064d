"""What a sliced file says about itself: printer model, estimates, layers, objects and previews,
read from PrusaSlicer and Bambu Studio G-code, Prusa binary G-code and Bambu .gcode.3mf packages,
and a preview written into G-code.

Only the head and tail of a G-code are read, except for one streamed pass where a count needs it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from farm.core.printer_models import MODELS, model_for_gcode
from farm.core.slice_error import SliceError
from workers.bambu3mf import PackageError, extract_gcode
from workers.bgcode import BgcodeError, read_bgcode
from workers.mesh_bbox import BBox
from workers.slicer_profiles import config_numbers

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 256 * 1024
MAX_TAIL_BYTES = 4 * 1024 * 1024


@dataclass
class GcodeMeta:
    printer_model: str | None = None
    print_time_s: int | None = None
    filament_g: float | None = None
    filament_mm: float | None = None
    filament_cm3: float | None = None
    layers: int | None = None
    nozzle_diameter: float | None = None
    filament_type: str | None = None
    # The part's box as placed on the bed (PrusaSlicer centres it); None for pre-sliced files.
    bbox: BBox | None = None
    objects: int | None = None  # parts on the plate (copies included), from the object labels
    thumbnails: list[str] | None = None  # sizes of the previews the file carries, e.g. ["220x124"]

    @property
    def filament_m(self) -> float | None:
        return None if self.filament_mm is None else round(self.filament_mm / 1000, 3)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = dataclasses.asdict(self)
        data["filament_m"] = self.filament_m
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GcodeMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        meta = cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]  # our to_json
        if meta.bbox is not None:
            lo, hi = meta.bbox
            meta.bbox = (tuple(lo), tuple(hi))  # type: ignore[assignment]  # JSON lists, 3 numbers each
        return meta


_FOOTER_RE = re.compile(
    r"^; (filament used \[mm\]|filament used \[cm3\]|filament used \[g\]|total filament used \[g\]"
    r"|estimated printing time \(normal mode\)|estimated printing time \(silent mode\)"
    r"|total layers count|printer_model|nozzle_diameter|filament_type) = (.*)$",
    re.MULTILINE,
)
_MODEL_CHECK_RE = re.compile(rb'^M862\.3 P\s*"?([^"\s;]+)', re.MULTILINE)
_LAYER_MARK = b"\n;LAYER_CHANGE\n"  # PrusaSlicer writes it once per layer, whatever the profile


def parse_duration(text: str) -> int:
    """`1d 2h 3m 4s` -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)\s*([dhms])", text))


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEAD_BYTES)


def _read_tail(path: Path) -> str:
    """The end of the file, enough to hold the estimates and the config block."""
    size = path.stat().st_size
    want = TAIL_BYTES
    with path.open("rb") as f:
        while True:
            f.seek(max(0, size - want))
            data = f.read()
            # The estimates precede the config block, whose length varies with the custom G-code.
            if b"; filament used [mm]" in data or want >= min(size, MAX_TAIL_BYTES):
                return data.decode("utf-8", errors="replace")
            want *= 4


def count_layers(path: Path, chunk: int = 4 * 1024 * 1024) -> int:
    """Count `;LAYER_CHANGE` markers in bounded memory (a chunked bytes.count: ~0.1 s per 100 MB)."""
    count, carry = 0, b"\n"  # as if a newline preceded the first line
    keep = len(_LAYER_MARK) - 1
    with path.open("rb") as f:
        while block := f.read(chunk):
            data = carry + block
            count += data.count(_LAYER_MARK)
            # Keep a tail shorter than the marker, so a marker split across chunks counts once.
            carry = data[-keep:]
    return count


def parse_gcode_meta(path: Path, *, layers: bool = True) -> GcodeMeta:
    """Printer model and estimates of a PrusaSlicer G-code, read from its head and tail only.

    `layers=False` skips the one full (streamed) pass, counting `;LAYER_CHANGE`, that 2.5 needs
    because its footer has no layer count.
    """
    path = Path(path)
    head = _read_head(path)
    m = _MODEL_CHECK_RE.search(head)
    found = dict(_FOOTER_RE.findall(_read_tail(path)))
    model = (m.group(1).decode("ascii", errors="replace") if m else None) or found.get("printer_model")
    meta = _meta_from_keys(found, model or _config_model(head))
    _fill_from_bambu_header(meta, head)
    bambu_layers = re.search(rb"^; total layer number: (\d+)", head, re.MULTILINE)
    if meta.layers is None and bambu_layers is not None:
        meta.layers = int(bambu_layers.group(1))
    elif meta.layers is None and layers:
        meta.layers = count_layers(path) or None
    meta.objects = first_layer_objects(path)
    meta.thumbnails = [f"{t.width}x{t.height}" for t in gcode_thumbnails(path)] or None
    return meta


def _meta_from_keys(found: Mapping[str, str], printer_model: str | None) -> GcodeMeta:
    """The estimates under PrusaSlicer's key names (G-code footer or .bgcode metadata)."""
    meta = GcodeMeta()
    if printer_model:
        # "Bambu Lab X1 Carbon" -> "X1C": callers compare with the catalogue's names.
        known = model_for_gcode(printer_model)
        meta.printer_model = known.name if known else printer_model.strip().strip('"')
    meta.filament_mm = _total(found.get("filament used [mm]"))
    meta.filament_cm3 = _total(found.get("filament used [cm3]"))
    meta.filament_g = _total(found.get("total filament used [g]") or found.get("filament used [g]"))
    time_text = found.get("estimated printing time (normal mode)") or found.get(
        "estimated printing time (silent mode)"
    )
    meta.print_time_s = parse_duration(time_text) if time_text else None
    nozzles = config_numbers(found.get("nozzle_diameter", ""))
    meta.nozzle_diameter = nozzles[0] if nozzles else None
    meta.filament_type = found.get("filament_type", "").strip().strip('"') or None
    if "total layers count" in found:
        meta.layers = int(_total(found["total layers count"]) or 0)
    return meta


_OBJECT_LABEL_RE = re.compile(rb"^; printing object (.+?)\r?$", re.MULTILINE)
_FIRST_LAYER_MAX_BYTES = 32 * 1024 * 1024


def first_layer_objects(path: Path, chunk: int = 1024 * 1024) -> int | None:
    """How many objects (copies included) the plate holds: the distinct `; printing object`
    labels of the first layer (every object starts there). None without labels."""
    labels: set[bytes] = set()
    seen = b""
    with Path(path).open("rb") as f:
        while len(seen) < _FIRST_LAYER_MAX_BYTES and (block := f.read(chunk)):
            seen += block
            first = seen.find(_LAYER_MARK)
            second = seen.find(_LAYER_MARK, first + 1) if first >= 0 else -1
            if second >= 0:
                seen = seen[:second]
                break
    labels.update(_OBJECT_LABEL_RE.findall(seen[max(0, seen.find(_LAYER_MARK)) :]))
    return len(labels) or None


@dataclass
class GcodeThumbnail:
    format: str  # "png", "jpg" or "qoi"
    width: int
    height: int
    data: bytes


_THUMB_RE = re.compile(
    rb"^; thumbnail(?:_(JPG|QOI))? begin (\d+)x(\d+) \d+\r?\n(.*?)^; thumbnail(?:_(?:JPG|QOI))? end",
    re.MULTILINE | re.DOTALL,
)
_THUMB_MAX_BYTES = 4 * 1024 * 1024


def embed_thumbnail(gcode: Path, png: bytes) -> str:
    """Put `png` into `gcode` as PrusaSlicer does (`; thumbnail begin WxH len`, base64 in comment
    lines, after the first line), so printers' screens and web UIs show it. Returns "WxH"."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise SliceError("the preview is not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    data = base64.b64encode(png).decode("ascii")
    lines = [data[i : i + 78] for i in range(0, len(data), 78)]
    block = ";\n" + f"; thumbnail begin {width}x{height} {len(data)}\n"
    block += "".join(f"; {line}\n" for line in lines) + "; thumbnail end\n;\n\n"
    tmp = gcode.with_name(gcode.name + ".thumb")
    with gcode.open("rb") as src, tmp.open("wb") as dst:
        dst.write(src.readline())  # "; generated by PrusaSlicer ..." stays first
        dst.write(b"\n" + block.encode("ascii"))
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(gcode)
    return f"{width}x{height}"


def gcode_thumbnails(path: Path) -> list[GcodeThumbnail]:
    """The `; thumbnail begin WxH len` blocks (base64 in comment lines) near the top of a G-code."""
    with Path(path).open("rb") as f:
        head = f.read(_THUMB_MAX_BYTES)
    if b"; thumbnail" not in head:
        return []
    out = []
    for fmt, w, h, body in _THUMB_RE.findall(head):
        text = b"".join(line.removeprefix(b";").strip() for line in body.splitlines())
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            continue  # a damaged preview is not worth refusing the print for
        out.append(GcodeThumbnail((fmt or b"PNG").decode().lower(), int(w), int(h), data))
    return out


def _config_model(head: bytes) -> str | None:
    """`; printer_model = …` of a Bambu-style CONFIG block at the top of the file."""
    m = re.search(rb"^; printer_model = (.+?)\r?$", head, re.MULTILINE)
    return m.group(1).decode("utf-8", errors="replace").strip() if m else None


def _fill_from_bambu_header(meta: GcodeMeta, head: bytes) -> None:
    """Bambu Studio puts its estimates in a HEADER block instead of PrusaSlicer's footer."""
    text = head.decode("utf-8", errors="replace")
    if meta.print_time_s is None and (m := re.search(r"total estimated time: ([^;\n]+)", text, re.M)):
        meta.print_time_s = parse_duration(m.group(1))
    if meta.filament_g is None and (m := re.search(r"^; total filament weight \[g\] : (.+)$", text, re.M)):
        meta.filament_g = _total(m.group(1))
    if meta.filament_mm is None and (m := re.search(r"^; total filament length \[mm\] : (.+)$", text, re.M)):
        meta.filament_mm = _total(m.group(1))


def parse_sliced_file(path: Path) -> GcodeMeta:
    """Estimates and target model of a pre-sliced `.gcode`, `.bgcode` or `.gcode.3mf` (plate 1)."""
    path = Path(path)
    if not path.is_file():
        raise SliceError(f"the file {path} does not exist")
    name = path.name.lower()
    with path.open("rb") as f:
        binary = f.read(4) == b"GCDE"
    if name.endswith(".bgcode") or binary:
        if not name.endswith(".bgcode"):
            # Printers pick the parser by the extension: binary content must be named .bgcode.
            raise SliceError(f"{path.name} holds binary G-code; rename it to .bgcode")
        return parse_bgcode_meta(path)
    if not name.endswith(".3mf"):
        return parse_gcode_meta(path)
    with tempfile.TemporaryDirectory(prefix="printfarm-presliced-") as tmp:
        try:
            gcode, model_id = extract_gcode(path, Path(tmp) / "plate.gcode")
        except PackageError as exc:
            raise SliceError(f"{path.name}: {exc}") from exc
        meta = parse_gcode_meta(gcode)
    if meta.printer_model is None and model_id:
        meta.printer_model = next((m.name for m in MODELS.values() if m.bambu_model_id == model_id), model_id)
    return meta


def parse_bgcode_meta(path: Path) -> GcodeMeta:
    """Model and estimates of a Prusa binary G-code, from its metadata blocks; every block's
    checksum is verified, so a damaged file is refused here rather than on the printer."""
    try:
        bg = read_bgcode(path)
    except BgcodeError as exc:
        raise SliceError(f"{Path(path).name} is not a usable .bgcode: {exc}") from exc
    except OSError as exc:
        raise SliceError(f"cannot read {Path(path).name}: {exc}") from exc
    # The printer block wins: it is what the firmware itself reads.
    found = {**bg.slicer_metadata, **bg.print_metadata, **bg.printer_metadata}
    meta = _meta_from_keys(found, found.get("printer_model"))
    if meta.layers is None:
        meta.layers = _layers_from_heights(found)
    meta.thumbnails = [f"{t.width}x{t.height}" for t in bg.thumbnails] or None
    return meta


def _layers_from_heights(found: Mapping[str, str]) -> int | None:
    """Layer count of a constant-height print: first layer, then (top - first) / layer height.
    (The layer markers sit in compressed G-code blocks this reader does not decode.)"""
    top, height = _total(found.get("max_layer_z")), _total(found.get("layer_height"))
    first = _total(found.get("first_layer_height")) or height
    if not (top and height and first) or top < first:
        return None
    return 1 + round((top - first) / height)


def _total(text: str | None) -> float | None:
    values = config_numbers(text) if text else []
    return round(sum(values), 4) if values else None
