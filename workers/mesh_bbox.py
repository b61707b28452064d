"""Axis-aligned bounding boxes of STL, 3MF and OBJ meshes, and whether a part fits a printer's bed.

No numpy: the coordinator measures meshes too, and a 10 MB STL still reads in well under 1 s.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import zipfile
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.etree import ElementTree as ET

from farm.core.printer_models import PrinterModel
from farm.core.slice_error import SliceError

FIT_TOLERANCE_MM = 0.01  # float32 STL coordinates: a 180 mm part may read 180.00001

BBox = tuple[tuple[float, float, float], tuple[float, float, float]]


def _bbox_of(mins: Sequence[float], maxs: Sequence[float]) -> BBox:
    return (mins[0], mins[1], mins[2]), (maxs[0], maxs[1], maxs[2])


def _stl_is_binary(path: Path, f: BinaryIO) -> tuple[bool, int]:
    header = f.read(84)
    if len(header) < 84:
        return False, 0
    (count,) = struct.unpack_from("<I", header, 80)
    # Many binary STLs also start with "solid", so the size is the reliable test.
    return path.stat().st_size == 84 + 50 * count, count


_STL_CHUNK = 8192  # triangles per unpack: one C call per chunk keeps a 10 MB STL well under 1 s
_STL_RECORD = "12x9f2x"  # skip the normal and the attribute word, keep the three vertices


@functools.cache
def _stl_struct(n: int) -> struct.Struct:
    return struct.Struct("<" + _STL_RECORD * n)


def _binary_stl_bbox(f: BinaryIO, count: int) -> tuple[list[float], list[float]]:
    mins, maxs = [math.inf] * 3, [-math.inf] * 3
    remaining = count
    while remaining:
        n = min(remaining, _STL_CHUNK)
        values = _stl_struct(n).unpack(f.read(50 * n))
        for axis in range(3):
            coords = values[axis::3]
            mins[axis] = min(mins[axis], min(coords))
            maxs[axis] = max(maxs[axis], max(coords))
        remaining -= n
    return mins, maxs


def _ascii_stl_bbox(f: BinaryIO) -> tuple[list[float], list[float]]:
    mins, maxs = [math.inf] * 3, [-math.inf] * 3
    for line in f:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == b"vertex":
            for axis in range(3):
                v = float(parts[axis + 1])
                mins[axis] = min(mins[axis], v)
                maxs[axis] = max(maxs[axis], v)
    return mins, maxs


def _stl_bbox(path: Path) -> tuple[list[float], list[float]]:
    if path.stat().st_size == 0:
        raise SliceError(f"{path.name} is empty")
    with path.open("rb") as f:
        binary, count = _stl_is_binary(path, f)
        if binary:
            return _binary_stl_bbox(f, count)
        f.seek(0)
        if not f.read(5).lower().startswith(b"solid"):
            raise SliceError(f"{path.name} is not an STL file (neither binary STL nor ASCII 'solid')")
        f.seek(0)
        return _ascii_stl_bbox(f)


def _obj_bbox(path: Path) -> tuple[list[float], list[float]]:
    mins, maxs = [math.inf] * 3, [-math.inf] * 3
    with path.open("rb") as f:
        for line in f:
            if line.startswith(b"v "):
                for axis, token in enumerate(line.split()[1:4]):
                    v = float(token)
                    mins[axis] = min(mins[axis], v)
                    maxs[axis] = max(maxs[axis], v)
    return mins, maxs


# 3MF: a zip whose model XML lists mesh objects, objects made of components, and build items,
# each placed by a 4x3 affine matrix "m00 m01 m02 m10 m11 m12 m20 m21 m22 m30 m31 m32" applied
# to row vectors: x' = x*m00 + y*m10 + z*m20 + m30.
Matrix = tuple[float, ...]
IDENTITY: Matrix = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
_3MF_UNITS = {
    "micron": 0.001,
    "millimeter": 1.0,
    "centimeter": 10.0,
    "inch": 25.4,
    "foot": 304.8,
    "meter": 1000.0,
}


def _parse_matrix(text: str | None) -> Matrix:
    if not text:
        return IDENTITY
    values = tuple(float(v) for v in text.split())
    if len(values) != 12:
        raise SliceError(f"a 3MF transform has {len(values)} numbers instead of 12")
    return values


def _compose(inner: Matrix, outer: Matrix) -> Matrix:
    """The matrix that applies `inner`, then `outer`."""
    a, b = inner, outer
    out = []
    for row in range(4):
        r = (a[3 * row], a[3 * row + 1], a[3 * row + 2], 1.0 if row == 3 else 0.0)
        for col in range(3):
            out.append(r[0] * b[col] + r[1] * b[3 + col] + r[2] * b[6 + col] + r[3] * b[9 + col])
    return tuple(out)


@dataclass
class _MeshObject:
    vertices: array  # x0, y0, z0, x1, ... in model units
    components: list[tuple[str, Matrix]]


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _3mf_model_name(zf: zipfile.ZipFile) -> str:
    """The model part the package's relationships name as its start part."""
    try:
        rels = ET.fromstring(zf.read("_rels/.rels"))
    except (KeyError, ET.ParseError):
        return "3D/3dmodel.model"
    for rel in rels:
        if rel.get("Type", "").endswith("/3dmodel") and rel.get("Target"):
            return rel.get("Target", "").lstrip("/")
    return "3D/3dmodel.model"


def _read_3mf(path: Path) -> tuple[dict[str, _MeshObject], list[tuple[str, Matrix]], float]:
    objects: dict[str, _MeshObject] = {}
    items: list[tuple[str, Matrix]] = []
    unit = 1.0
    verts: array = array("d")
    comps: list[tuple[str, Matrix]] = []
    with zipfile.ZipFile(path) as zf, zf.open(_3mf_model_name(zf)) as stream:
        # iterparse + clear(): a large mesh never sits in memory as an element tree.
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            tag = _local_name(elem.tag)
            if event == "start":
                if tag == "model":
                    unit = _3MF_UNITS.get(elem.get("unit", "millimeter"), 1.0)
                continue
            if tag == "vertex":
                verts.extend((float(elem.get("x", 0)), float(elem.get("y", 0)), float(elem.get("z", 0))))
                elem.clear()
            elif tag == "triangle":
                elem.clear()
            elif tag == "component":
                comps.append((elem.get("objectid", ""), _parse_matrix(elem.get("transform"))))
            elif tag == "object":
                objects[elem.get("id", "")] = _MeshObject(verts, comps)
                verts, comps = array("d"), []
                elem.clear()
            elif tag == "item":
                items.append((elem.get("objectid", ""), _parse_matrix(elem.get("transform"))))
    return objects, items, unit


def _placed_bbox(
    objects: Mapping[str, _MeshObject],
    object_id: str,
    m: Matrix,
    mins: list[float],
    maxs: list[float],
    depth: int = 0,
) -> None:
    obj = objects.get(object_id)
    if obj is None or depth > 32:
        raise SliceError(f"the 3MF refers to object {object_id!r}, which it does not define properly")
    v = obj.vertices
    if len(v) and all(m[i] == 0.0 for i in (1, 2, 3, 5, 6, 7)):
        # Scale + translate only: the placed box is the mapped local box, no need to visit vertices.
        for axis in range(3):
            lo, hi = min(v[axis::3]), max(v[axis::3])
            a, b = lo * m[4 * axis] + m[9 + axis], hi * m[4 * axis] + m[9 + axis]
            mins[axis], maxs[axis] = min(mins[axis], a, b), max(maxs[axis], a, b)
    else:
        for i in range(0, len(v), 3):
            x, y, z = v[i], v[i + 1], v[i + 2]
            for axis in range(3):
                c = x * m[axis] + y * m[3 + axis] + z * m[6 + axis] + m[9 + axis]
                mins[axis], maxs[axis] = min(mins[axis], c), max(maxs[axis], c)
    for child, cm in obj.components:
        _placed_bbox(objects, child, _compose(cm, m), mins, maxs, depth + 1)


def _3mf_bbox(path: Path) -> tuple[list[float], list[float]]:
    try:
        objects, items, unit = _read_3mf(path)
    except (zipfile.BadZipFile, KeyError, ET.ParseError, ValueError) as exc:
        raise SliceError(f"{path.name} is not a readable 3MF file: {exc}") from exc
    mins, maxs = [math.inf] * 3, [-math.inf] * 3
    # A package without build items still describes its objects; place them as they are.
    for object_id, m in items or [(oid, IDENTITY) for oid in objects]:
        _placed_bbox(objects, object_id, m, mins, maxs)
    return [v * unit for v in mins], [v * unit for v in maxs]


_BBOX_READERS = {".stl": _stl_bbox, ".3mf": _3mf_bbox, ".obj": _obj_bbox}
MEASURED_SUFFIXES: tuple[str, ...] = tuple(_BBOX_READERS)  # the meshes `mesh_bbox` reads
_3MF_ITEM = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?item[\s/>]")


def count_3mf_items(path: Path) -> int:
    """Build items (objects on the plate) in a 3MF, counted on the raw XML: no parse of the mesh."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(_3mf_model_name(zf)) as stream:
            count, tail = 0, b""
            while block := stream.read(1 << 20):
                text = tail + block
                count += len(_3MF_ITEM.findall(text))
                cut = max(len(text) - 64, 0)  # a tag split across blocks is counted with the next one
                count -= len(_3MF_ITEM.findall(text[cut:]))
                tail = text[cut:]
            return count + len(_3MF_ITEM.findall(tail))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise SliceError(f"{path.name} is not a readable 3MF file: {exc}") from exc


def mesh_bbox(path: Path) -> BBox:
    """Axis-aligned bounding box ((min x, y, z), (max x, y, z)) in mm of an STL, 3MF or OBJ."""
    path = Path(path)
    reader = _BBOX_READERS.get(path.suffix.lower())
    if reader is None:
        raise SliceError(f"cannot read {path.name}: supported meshes are {', '.join(_BBOX_READERS)}")
    try:
        mins, maxs = reader(path)
    except (OSError, struct.error, ValueError) as exc:
        raise SliceError(f"cannot read the mesh {path.name}: {exc}") from exc
    if not all(math.isfinite(v) for v in (*mins, *maxs)):
        raise SliceError(f"the mesh {path.name} has no vertices")
    return _bbox_of(mins, maxs)


def bed_text(bed: Sequence[float]) -> str:
    """A bed's size as people write it: `250 x 210 x 220`."""
    return " x ".join(f"{b:g}" for b in bed)


def check_fits(bbox: BBox, model: PrinterModel) -> None:
    """Raise if the part's box is larger than the model's bed on any axis (no auto-rotation)."""
    size = tuple(hi - lo for lo, hi in zip(*bbox, strict=True))
    if all(s <= b + FIT_TOLERANCE_MM for s, b in zip(size, model.bed, strict=True)):
        return
    part = " x ".join(f"{s:.1f}" for s in size)
    bed = bed_text(model.bed)
    raise SliceError(
        f"the part is {part} mm but the {model.name} bed is {bed} mm; scale the part down or choose "
        "a printer model with a larger bed (farm profiles lists them)"
    )
