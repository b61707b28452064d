"""PrusaSlicer wrapper: a flat profile per printer model, a bed-fit check, the slice, its estimates.

PrusaSlicer 2.5 (Debian bookworm) cannot select a named preset on the command line, and
`--load`ing a vendor bundle silently falls back to the defaults. So each slice flattens the
printer, print and filament presets of the model's bundle into one .ini, the way PrusaSlicer's
own `flatten_configbundle_hierarchy()` does, and `--load`s that.

No build123d and no numpy here: the coordinator imports the mesh and G-code readers too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import functools
import hashlib
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import zipfile
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.etree import ElementTree as ET

from farm.printer_models import DEFAULT_MATERIAL, DEFAULT_QUALITY, PrinterModel, model_for_gcode
from workers.bed_load import MARK as BED_LOAD_MARK
from workers.bed_load import fill_bed_load
from workers.slice_cache import SliceCache, cache_key

# Project-shipped bundles (models the vendor bundle lacks) win over the slicer's own.
PROJECT_PROFILE_DIR = Path(__file__).with_name("profiles")
SYSTEM_PROFILE_DIR = Path("/usr/share/PrusaSlicer/profiles")
BUNDLE_DIRS: tuple[Path, ...] = (PROJECT_PROFILE_DIR, SYSTEM_PROFILE_DIR)

FIT_TOLERANCE_MM = 0.01  # float32 STL coordinates: a 180 mm part may read 180.00001
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 256 * 1024
MAX_TAIL_BYTES = 4 * 1024 * 1024

# Bundle keys that describe the preset, not the print; PrusaSlicer drops them when flattening.
NON_CONFIG_KEYS = frozenset(
    {
        "inherits",
        "renamed_from",
        "alias",
        "compatible_printers",
        "compatible_printers_condition",
        "compatible_prints",
        "compatible_prints_condition",
    }
)
# post_process runs an arbitrary program on the worker: never from a job's overrides.
FORBIDDEN_OVERRIDES = frozenset({"post_process"})

BBox = tuple[tuple[float, float, float], tuple[float, float, float]]


class SliceError(Exception):
    """Slicing cannot happen or failed. The message is written for the person who submitted."""


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
        meta = cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]
        if meta.bbox is not None:
            lo, hi = meta.bbox
            meta.bbox = (tuple(lo), tuple(hi))  # type: ignore[assignment]
        return meta


@dataclass
class SliceResult:
    gcode: Path  # the file to send to the printer: plain G-code, or a .gcode.3mf for Bambu
    meta: GcodeMeta
    plain_gcode: Path | None = None  # the text G-code (the same file as `gcode` unless packaged)
    cache_key: str | None = None
    cached: bool = False  # True when the slicer did not run: the result came from the cache


# --------------------------------------------------------------------------- the binary


def find_slicer(path: str | Path | None = None) -> Path:
    """The PrusaSlicer binary: `path` if given (the `slicer_path` setting), else from PATH."""
    if path:
        p = Path(path).expanduser()
        if p.is_file() and os.access(p, os.X_OK):
            return p
        on_path = None if p.parent != Path() else shutil.which(str(p))  # a bare name, e.g. "prusa-slicer"
        if on_path:
            return Path(on_path)
        raise SliceError(f"the configured slicer {p} does not exist or is not executable")
    found = shutil.which("prusa-slicer")
    if not found:
        raise SliceError(
            "PrusaSlicer is not installed on this worker: install it (apt-get install prusa-slicer) "
            "or set slicer_path"
        )
    return Path(found)


@functools.cache
def _help_text(slicer: Path, flag: str) -> str:
    try:
        proc = subprocess.run(
            [str(slicer), flag], capture_output=True, text=True, errors="replace", env=_env(), timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SliceError(f"cannot run the slicer {slicer}: {exc}") from exc
    return proc.stdout + proc.stderr


def slicer_version(path: Path) -> str:
    """The version PrusaSlicer reports, e.g. "2.5.0+UNKNOWN" (cached per binary)."""
    m = re.search(r"^PrusaSlicer-(\S+)", _help_text(Path(path), "--help"), re.MULTILINE)
    if not m:
        raise SliceError(f"{path} does not look like PrusaSlicer (no version in its --help)")
    return m.group(1)


def _slicer_config_keys(slicer: Path) -> frozenset[str]:
    """Config keys the binary accepts; an .ini key it does not know is ignored without a word."""
    opts = re.findall(r"^ --([a-z0-9][a-z0-9-]*)", _help_text(slicer, "--help-fff"), re.MULTILINE)
    return frozenset(o.replace("-", "_") for o in opts)


def _env() -> dict[str, str]:
    # With a display set, the GTK build may try to reach it; headless it works without one.
    return {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}


# --------------------------------------------------------------------------- profiles


def find_bundle(name: str, dirs: Sequence[Path] | None = None) -> Path:
    """Resolve a bundle name from a PrinterModel: an absolute path, or the first match in `dirs`."""
    if Path(name).is_absolute():
        candidates = [Path(name)]
    else:
        candidates = [Path(d) / name for d in (BUNDLE_DIRS if dirs is None else dirs)]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c.parent) for c in candidates)
    raise SliceError(f"the slicer profile bundle {name} was not found (looked in {where})")


def read_bundle(path: Path) -> dict[str, dict[str, str]]:
    """Sections of a bundle, `"printer:Name" -> {key: value}`; cached until the file changes,
    so treat the result as read-only."""
    st = path.stat()
    return _read_bundle_cached(path.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_bundle_cached(path: Path, _mtime_ns: int, _size: int) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            if s[0] == "[" and s[-1] == "]":
                current = sections.setdefault(s[1:-1], {})
            elif current is not None and "=" in s:
                key, value = s.split("=", 1)
                current[key.strip()] = value.strip()
    return sections


def _flatten_preset(
    sections: Mapping[str, Mapping[str, str]], kind: str, name: str, bundle: Path, _seen: tuple[str, ...] = ()
) -> dict[str, str]:
    """One preset with its `inherits` chain resolved: own keys win, then the last parent, ..."""
    key = f"{kind}:{name}"
    own = sections.get(key)
    if own is None:
        raise SliceError(f"the profile bundle {bundle.name} has no [{key}] preset")
    if key in _seen:
        raise SliceError(f"the profile bundle {bundle.name} has an inheritance loop at [{key}]")
    out = dict(own)
    parents = [p.strip().strip('"') for p in own.get("inherits", "").split(";") if p.strip()]
    for parent in reversed(parents):
        for k, v in _flatten_preset(sections, kind, parent, bundle, (*_seen, key)).items():
            out.setdefault(k, v)
    return out


def bundle_sections(bundle: Path) -> dict[str, dict[str, str]]:
    """The bundle's sections over those of its `[printfarm] base_bundle`, if it names one.

    A project bundle thus inherits vendor presets by name ("Original Prusa i3 MK3S & MK3S+")
    instead of copying hundreds of keys that then drift from the slicer's own.
    """
    own = read_bundle(bundle)
    base = own.get("printfarm", {}).get("base_bundle", "").strip()
    if not base:
        return own
    dirs = [d for d in (bundle.parent, *BUNDLE_DIRS) if (d / base).resolve() != bundle.resolve()]
    return {**bundle_sections(find_bundle(base, dirs)), **own}


def load_preset(bundle: Path, kind: str, name: str) -> dict[str, str]:
    """A preset ("printer", "print" or "filament") with its inheritance resolved, including the
    `compatible_*` conditions (useful to check a catalogue entry), minus `inherits`."""
    flat = _flatten_preset(bundle_sections(bundle), kind, name, bundle)
    flat.pop("inherits", None)
    return flat


def _choose(kind: str, wanted: str, presets: Mapping[str, str], model: PrinterModel) -> str:
    # Materials are upper case (PLA), qualities lower case (fine): accept either spelling.
    for choice, preset in presets.items():
        if choice.casefold() == wanted.strip().casefold():
            return preset
    raise SliceError(f"unknown {kind} '{wanted}' for the {model.name}; choose one of: {', '.join(presets)}")


def check_overrides(overrides: Mapping[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in overrides.items():
        if not re.fullmatch(r"[a-z0-9_]+", key):
            raise SliceError(f"'{key}' is not a slicer setting name (lower case, digits and _ only)")
        if key in FORBIDDEN_OVERRIDES:
            raise SliceError(f"the slicer setting '{key}' cannot be set from a job")
        text = str(value)
        # A newline would smuggle extra keys into the flat .ini.
        if "\n" in text or "\r" in text:
            raise SliceError(f"the value of '{key}' must be one line; write line breaks as \\n")
        clean[key] = text
    return clean


def flatten_profile(
    model: PrinterModel,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    *,
    bundle_dirs: Sequence[Path] | None = None,
) -> dict[str, str]:
    """The complete flat config for a model, material and quality; `overrides` win over presets."""
    print_preset = _choose("quality", quality, model.print_presets, model)
    filament_preset = _choose("material", material, model.filament_presets, model)
    extra = check_overrides(overrides or {})
    bundle = find_bundle(model.bundle, bundle_dirs)
    cfg: dict[str, str] = {}
    for kind, name in (
        ("printer", model.printer_preset),
        ("print", print_preset),
        ("filament", filament_preset),
    ):
        flat = load_preset(bundle, kind, name)
        cfg.update((k, v) for k, v in flat.items() if k not in NON_CONFIG_KEYS)
    # Recorded in the G-code's config block, so a file says which presets made it.
    cfg["printer_settings_id"] = model.printer_preset
    cfg["print_settings_id"] = print_preset
    cfg["filament_settings_id"] = f'"{filament_preset}"'
    cfg.update(extra)
    return cfg


def profile_text(cfg: Mapping[str, str]) -> str:
    """A flat config as PrusaSlicer's `key = value` .ini text (sorted, so it diffs and hashes)."""
    return "".join(f"{k} = {cfg[k]}\n" for k in sorted(cfg))


def write_profile(cfg: Mapping[str, str], path: Path) -> Path:
    """Write a flat config as an .ini that `prusa-slicer --load` reads."""
    path = Path(path)
    path.write_text(profile_text(cfg), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- meshes


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


def _mm(v: float) -> str:
    return f"{v:g}"


def check_fits(bbox: BBox, model: PrinterModel) -> None:
    """Raise if the part's box is larger than the model's bed on any axis (no auto-rotation)."""
    size = tuple(hi - lo for lo, hi in zip(*bbox, strict=True))
    if all(s <= b + FIT_TOLERANCE_MM for s, b in zip(size, model.bed, strict=True)):
        return
    part = " x ".join(f"{s:.1f}" for s in size)
    bed = " x ".join(_mm(b) for b in model.bed)
    raise SliceError(
        f"the part is {part} mm but the {model.name} bed is {bed} mm; scale the part down or choose "
        "a printer model with a larger bed (farm profiles lists them)"
    )


# --------------------------------------------------------------------------- running the slicer


def _is_noise(line: str) -> bool:
    return (
        not line
        or "Initializing StaticPrintConfigs" in line
        or re.match(r"\d+ => ", line) is not None  # progress
        or line.startswith("terminate called after throwing")
    )


def _slicer_complaint(stdout: str, stderr: str) -> str:
    """The last meaningful lines PrusaSlicer wrote: its [error] log lines, then stderr."""
    lines = []
    for line in stdout.splitlines():
        m = re.match(r"\[[^\]]*\] \[[^\]]*\] \[(?:error|fatal)\]\s*(.*)", line)
        if m:
            lines.append(m.group(1).strip())
    lines += [s.strip().removeprefix("what():").strip() for s in stderr.splitlines()]
    meaningful = [s for s in lines if not _is_noise(s)]
    return "; ".join(meaningful[-2:]) or "no message"


def _run_slicer(cmd: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", env=_env(), cwd=cwd, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise SliceError(
            f"the slicer did not finish within {_mm(timeout_s)} s; simplify the mesh or raise the timeout"
        ) from exc
    except OSError as exc:
        raise SliceError(f"cannot run the slicer {cmd[0]}: {exc}") from exc


def _check_known_keys(profile: Mapping[str, str], overrides: Mapping[str, str], slicer: Path) -> None:
    known = _slicer_config_keys(slicer) | profile.keys()
    for key in sorted(overrides):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see `prusa-slicer --help-fff`"
            raise SliceError(f"unknown slicer setting '{key}'; {hint}")


SUPPORTS: tuple[str, ...] = ("none", "buildplate", "everywhere")


def print_options(
    *, infill: str | float | None = None, supports: str | None = None, brim: float | None = None
) -> dict[str, str]:
    """Slicer overrides for the everyday choices: infill density (`20` or `20%`), supports
    (none / buildplate / everywhere, generated where the overhangs need them) and a brim width in mm."""
    out: dict[str, str] = {}
    if infill is not None:
        text = str(infill).strip().removesuffix("%")
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 100:
            raise SliceError(f"infill must be a percentage from 0 to 100, like 20 or 20%, not '{infill}'")
        out["fill_density"] = f"{value:g}%"
    if supports is not None:
        choice = supports.strip().lower()
        if choice not in SUPPORTS:
            raise SliceError(f"supports must be one of {', '.join(SUPPORTS)}, not '{supports}'")
        out["support_material"] = "0" if choice == "none" else "1"
        out["support_material_auto"] = "1"
        out["support_material_buildplate_only"] = "1" if choice == "buildplate" else "0"
    if brim is not None:
        if not 0 <= brim <= 50:
            raise SliceError(f"the brim width is in mm, from 0 to 50, not {brim:g}")
        out["brim_width"] = f"{brim:g}"
        out["brim_type"] = "outer_only" if brim > 0 else "no_brim"
    return out


def output_paths(out: Path, model: PrinterModel) -> tuple[Path, Path]:
    """(plain G-code, file to send) for `out`: the same file unless the model takes a .gcode.3mf,
    which then sits next to the G-code (`x.gcode` -> `x.gcode.3mf`, and the reverse)."""
    out = Path(out)
    if model.output_suffix == ".gcode":
        return out, out
    if out.name.endswith(".gcode.3mf"):
        return out.with_name(out.name.removesuffix(".3mf")), out
    plain = out if out.name.endswith(".gcode") else out.with_name(out.name + ".gcode")
    return plain, plain.with_name(plain.name + ".3mf")


def _packaging(model: PrinterModel) -> str:
    if model.output_suffix == ".gcode":
        return "gcode"
    from workers.bambu3mf import PACKAGE_FORMAT

    return f"{PACKAGE_FORMAT}:{model.bambu_model_id}"


def _placed_bbox_on_bed(bbox: BBox, model: PrinterModel) -> BBox:
    """Where PrusaSlicer puts the part: centred on the bed in x and y, standing on z = 0."""
    (x0, y0, z0), (x1, y1, z1) = bbox
    cx, cy = model.bed[0] / 2, model.bed[1] / 2
    sx, sy = (x1 - x0) / 2, (y1 - y0) / 2
    r = functools.partial(round, ndigits=3)
    return (r(cx - sx), r(cy - sy), 0.0), (r(cx + sx), r(cy + sy), r(z1 - z0))


def _rounded(bbox: BBox) -> BBox:
    (x0, y0, z0), (x1, y1, z1) = bbox
    r = functools.partial(round, ndigits=3)
    return (r(x0), r(y0), r(z0)), (r(x1), r(y1), r(z1))


# --------------------------------------------------------------------------- copies on one plate


class CopiesDontFit(SliceError):
    """`copies` copies do not fit on one bed; `per_plate` of them do (at least 1)."""

    def __init__(self, message: str, copies: int, per_plate: int) -> None:
        super().__init__(message)
        self.copies = copies
        self.per_plate = per_plate

    @property
    def plates(self) -> list[int]:
        return plates_for(self.copies, self.per_plate)


def plates_for(copies: int, per_plate: int) -> list[int]:
    """How `copies` split into plates of at most `per_plate`: 10 by 4 -> [4, 4, 2]."""
    per_plate = max(1, per_plate)
    full, rest = divmod(copies, per_plate)
    return [per_plate] * full + ([rest] if rest else [])


def _float(cfg: Mapping[str, str], key: str, default: float = 0.0) -> float:
    values = _numbers(cfg.get(key, ""))
    return values[0] if values else default


def _arrange_margin(cfg: Mapping[str, str]) -> float:
    """Room to keep free along the bed edges: PrusaSlicer 2.5 arranges the parts up to the edge
    and then prints the skirt and brim around them, off the bed."""
    skirt = 0.0
    if _float(cfg, "skirts") > 0 and _float(cfg, "skirt_height", 1) > 0:
        skirt = _float(cfg, "skirt_distance") + _float(cfg, "skirts") * 1.0  # 1 mm per loop, generous
    return round(max(skirt, _float(cfg, "brim_width")) + 0.5, 2)


def _arrange_profile(cfg: Mapping[str, str], model: PrinterModel) -> str:
    m = _arrange_margin(cfg)
    bx, by = model.bed[0] - m, model.bed[1] - m
    return profile_text({**cfg, "bed_shape": f"{m:g}x{m:g},{bx:g}x{m:g},{bx:g}x{by:g},{m:g}x{by:g}"})


def _arrange(binary: Path, mesh: Path, copies: int, arrange_ini: Path, out: Path, timeout_s: float) -> bool:
    """Arrange `copies` copies with PrusaSlicer's own arranger into the 3MF `out`; False if they
    do not fit on one bed. Fast: nothing is sliced."""
    out.unlink(missing_ok=True)
    cmd = [str(binary), "--loglevel", "1", "--load", str(arrange_ini), "--duplicate", str(copies)]
    proc = _run_slicer([*cmd, "--export-3mf", "-o", str(out), str(mesh.resolve())], out.parent, timeout_s)
    said = proc.stdout + proc.stderr
    if "could not fit on the bed" in said:
        return False
    if proc.returncode != 0 or not out.is_file():
        complaint = _slicer_complaint(proc.stdout, proc.stderr)
        raise SliceError(f"the slicer could not arrange {copies} copies of {mesh.name}: {complaint}")
    return True


def _most_that_fit(
    binary: Path, mesh: Path, copies: int, arrange_ini: Path, tmp: Path, timeout_s: float
) -> int:
    """The largest n < copies that fits, by bisection (each probe is one quick arrange)."""
    lo, hi = 0, copies  # lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _arrange(binary, mesh, mid, arrange_ini, tmp / f"probe-{mid}.3mf", timeout_s):
            lo = mid
        else:
            hi = mid
    return lo


def _plate(
    binary: Path,
    mesh: Path,
    model: PrinterModel,
    cfg: Mapping[str, str],
    copies: int,
    bbox: BBox,
    tmp: Path,
    timeout_s: float,
) -> Path:
    """A 3MF holding `copies` copies of `mesh` arranged on the bed, or CopiesDontFit."""
    arrange_ini = tmp / "arrange.ini"
    arrange_ini.write_text(_arrange_profile(cfg, model), encoding="utf-8")
    plate = tmp / "plate.3mf"
    if _arrange(binary, mesh, copies, arrange_ini, plate, timeout_s):
        return plate
    fit = max(1, _most_that_fit(binary, mesh, copies, arrange_ini, tmp, timeout_s))
    w, d = (bbox[1][i] - bbox[0][i] for i in range(2))
    plates = plates_for(copies, fit)
    bed = " x ".join(_mm(b) for b in model.bed[:2])
    raise CopiesDontFit(
        f"{copies} copies of {mesh.name} ({w:.1f} x {d:.1f} mm each) do not fit on one {model.name} bed "
        f"({bed} mm): {fit} fit per plate, so print them as {len(plates)} plates "
        f"({' + '.join(map(str, plates))} copies)",
        copies,
        fit,
    )


def copies_per_plate(
    mesh: Path,
    model: PrinterModel,
    copies: int,
    *,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    slicer: str | Path | None = None,
    timeout_s: float = 120,
) -> int:
    """How many of `copies` copies of `mesh` fit on one bed of `model` (at least 1, at most
    `copies`), using PrusaSlicer's arranger with the same profile a slice would use."""
    mesh = Path(mesh)
    binary = find_slicer(slicer)
    bbox = mesh_bbox(mesh)
    check_fits(bbox, model)
    cfg = {**flatten_profile(model, material, quality, bundle_dirs=None), **check_overrides(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="printfarm-arrange-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            _plate(binary, mesh, model, cfg, copies, bbox, tmp, timeout_s)
        except CopiesDontFit as exc:
            return exc.per_plate
    return copies


# --------------------------------------------------------------------------- slicing


def slice_mesh(
    mesh: Path,
    model: PrinterModel,
    out: Path,
    *,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    copies: int = 1,
    slicer: str | Path | None = None,
    timeout_s: float = 600,
    bundle_dirs: Sequence[Path] | None = None,
    cache: SliceCache | None = None,
    thumbnail_png: bytes | None = None,
) -> SliceResult:
    """Slice `mesh` for `model` into `out`; every failure is a SliceError.

    For a Bambu model `result.gcode` is the `.gcode.3mf` beside `out` (see `output_paths`) and
    `result.plain_gcode` the text G-code inside it. With a `cache`, an identical earlier slice
    (same mesh bytes, flattened profile, copies and slicer version) is copied instead of sliced.
    `copies` > 1 arranges that many copies on one plate (one G-code); when they do not all fit,
    CopiesDontFit (a SliceError) says how many do, so the caller can make several plates.
    A 3MF with several objects is arranged on the plate as separate objects. `thumbnail_png` (the
    CAD preview) becomes a Bambu package's plate picture when the G-code carries no thumbnail.
    """
    mesh, out = Path(mesh), Path(out)
    if not 1 <= copies <= 1000:
        raise SliceError(f"copies must be from 1 to 1000, not {copies}")
    binary = find_slicer(slicer)
    if not mesh.is_file():
        raise SliceError(f"the mesh {mesh} does not exist")
    bbox = None
    if mesh.suffix.lower() in _BBOX_READERS:
        # Before the slicer: it would slice a part taller than the printer without complaint.
        bbox = mesh_bbox(mesh)
        check_fits(bbox, model)
    elif copies > 1:
        readable = ", ".join(_BBOX_READERS)
        raise SliceError(f"copies need a mesh the farm can measure ({readable}), not {mesh.name}")
    cfg = flatten_profile(model, material, quality, bundle_dirs=bundle_dirs)
    extra = check_overrides(overrides or {})
    if extra:
        _check_known_keys(cfg, extra, binary)
        cfg.update(extra)
    plain, send = output_paths(out, model)
    send.parent.mkdir(parents=True, exist_ok=True)
    text = profile_text(cfg)
    objects = count_3mf_items(mesh) if mesh.suffix.lower() == ".3mf" else 1
    key = None
    if cache is not None:
        packaging = _packaging(model) + (f";copies={copies}" if copies > 1 else "")
        packaging += f";objects={objects}" if objects > 1 else ""
        if thumbnail_png:
            packaging += f";preview={hashlib.sha256(thumbnail_png).hexdigest()}"
        key = cache_key(mesh, text, slicer_version(binary), extra=packaging)
        hit = cache.get(key)
        if hit is not None and {"gcode", "send"} <= hit.files.keys():
            return _from_cache(hit.files, hit.meta, plain, send, key)
    try:
        with tempfile.TemporaryDirectory(prefix="printfarm-slice-") as tmp_name:
            tmp = Path(tmp_name)
            source, placed = mesh, _placed_bbox_on_bed(bbox, model) if bbox else None
            if copies > 1:
                assert bbox is not None
                source = _plate(binary, mesh, model, cfg, copies, bbox, tmp, timeout_s)
                placed = _rounded(mesh_bbox(source))
            elif objects > 1:
                source = _place_objects(binary, mesh, model, cfg, objects, tmp, timeout_s)
                placed = _rounded(mesh_bbox(source))
            arranged = copies > 1 or objects > 1
            meta = _slice_to(binary, source, mesh.name, model, plain, text, tmp, timeout_s, arranged=arranged)
        meta.bbox = placed
        if send != plain:
            _package(plain, send, model, meta, cfg, thumbnail_png)
        elif thumbnail_png and not meta.thumbnails:
            meta.thumbnails = [embed_thumbnail(plain, thumbnail_png)]
    except SliceError:
        _discard(send)
        raise
    if cache is not None and key is not None:
        cache.put(key, {"gcode": plain, "send": send}, meta.to_json())
    return SliceResult(gcode=send, meta=meta, plain_gcode=plain, cache_key=key)


def _slice_to(
    binary: Path,
    mesh: Path,
    name: str,
    model: PrinterModel,
    out: Path,
    text: str,
    tmp: Path,
    timeout_s: float,
    *,
    arranged: bool = False,
) -> GcodeMeta:
    _discard(out)  # a failed run must not leave an older G-code looking like its result
    try:
        profile = tmp / "profile.ini"
        profile.write_text(text, encoding="utf-8")
        cmd = [str(binary), "--loglevel", "1", "--load", str(profile), "--export-gcode"]
        if arranged:
            cmd.append("--dont-arrange")  # keep the plate's arrangement
        proc = _run_slicer([*cmd, "-o", str(out.resolve()), str(mesh.resolve())], tmp, timeout_s)
        _raise_for_failure(proc, name, model, out)
        if BED_LOAD_MARK in text:
            try:
                fill_bed_load(out)
            except (ValueError, OSError) as exc:
                raise SliceError(f"cannot write the bed load into the G-code: {exc}") from exc
        meta = parse_gcode_meta(out)
        if meta.printer_model and meta.printer_model != model.name:
            raise SliceError(
                f"the {model.name} profile produced G-code for a {meta.printer_model}; "
                f"its bundle {model.bundle} is inconsistent"
            )
    except SliceError:
        _discard(out)
        raise
    return meta


def _place_objects(
    binary: Path,
    mesh: Path,
    model: PrinterModel,
    cfg: Mapping[str, str],
    objects: int,
    tmp: Path,
    timeout_s: float,
) -> Path:
    """A 3MF with the objects of `mesh` arranged apart on the bed (they may overlap as designed,
    e.g. a lid on its box), as copies are; SliceError if they do not fit on one bed together."""
    arrange_ini = tmp / "arrange.ini"
    arrange_ini.write_text(_arrange_profile(cfg, model), encoding="utf-8")
    plate = tmp / "objects.3mf"
    if not _arrange(binary, mesh, 1, arrange_ini, plate, timeout_s):
        bed = " x ".join(_mm(b) for b in model.bed[:2])
        raise SliceError(
            f"the {objects} objects of {mesh.name} do not fit side by side on one {model.name} bed "
            f"({bed} mm); make them smaller, build them separately, or choose a larger printer model"
        )
    return plate


def _package(
    plain: Path,
    send: Path,
    model: PrinterModel,
    meta: GcodeMeta,
    cfg: Mapping[str, str],
    fallback_png: bytes | None = None,
) -> None:
    from workers.bambu3mf import PlateInfo, package_gcode

    thumbs = [t for t in gcode_thumbnails(plain) if t.format == "png"]
    info = PlateInfo(
        printer_model=model.printer_model,
        printer_model_id=model.bambu_model_id,
        nozzle_diameter=meta.nozzle_diameter,
        print_time_s=meta.print_time_s,
        filament_g=meta.filament_g,
        filament_mm=meta.filament_mm,
        filament_type=meta.filament_type,
        layers=meta.layers,
        max_z=meta.bbox[1][2] if meta.bbox else None,
        bbox=meta.bbox,
        thumbnail_png=max(thumbs, key=lambda t: t.width * t.height).data if thumbs else fallback_png,
        bed=(model.bed[0], model.bed[1]),
        filament_colour=cfg.get("filament_colour"),
    )
    try:
        package_gcode(plain, send, info, cfg)
    except OSError as exc:
        raise SliceError(f"cannot write {send.name}: {exc}") from exc


def _from_cache(
    files: Mapping[str, Path], meta: Mapping[str, object], plain: Path, send: Path, key: str
) -> SliceResult:
    try:
        shutil.copyfile(files["gcode"], plain)
        if send != plain:
            shutil.copyfile(files["send"], send)
    except OSError as exc:
        raise SliceError(f"cannot copy the cached slice to {send.parent}: {exc}") from exc
    return SliceResult(
        gcode=send, meta=GcodeMeta.from_json(meta), plain_gcode=plain, cache_key=key, cached=True
    )


def _discard(out: Path) -> None:
    out.unlink(missing_ok=True)
    # PrusaSlicer writes "<out>.tmp" and renames it when done; a killed run leaves it behind.
    out.with_name(out.name + ".tmp").unlink(missing_ok=True)


_SUBSTITUTED_RE = re.compile(r'key = "([^"]+)"\s+loaded = "([^\t\n]*)\s+substituted = "([^"\n]*)"')
_CONFIG_ERROR_RE = re.compile(r'Failed loading configuration file "[^"]*": (.+)')


def _raise_for_failure(
    proc: subprocess.CompletedProcess[str], name: str, model: PrinterModel, out: Path
) -> None:
    said = proc.stdout + proc.stderr
    complaint = _slicer_complaint(proc.stdout, proc.stderr)
    if proc.returncode != 0 and "could not fit on the bed" in said:
        bed = " x ".join(_mm(b) for b in model.bed)
        raise SliceError(
            f"{name} does not fit on the {model.name} bed ({bed} mm) once the slicer places it; "
            "scale the part down or choose a printer model with a larger bed (farm profiles lists them)"
        )
    if proc.returncode < 0 or proc.returncode > 128:
        # Killed by a signal: -N from the binary itself, 128+N through a wrapper script.
        signum = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = f"signal {signum}"
        hint = (
            "it was probably out of memory: simplify the mesh or give the worker more memory"
            if signame == "SIGKILL"
            else "the mesh may be broken: repair it (e.g. `prusa-slicer --repair`) or try another quality"
        )
        raise SliceError(
            f"the slicer crashed ({signame}, exit code {proc.returncode}) on {name}: {complaint}; {hint}"
        )
    if proc.returncode != 0:
        if m := _CONFIG_ERROR_RE.search(said):
            raise SliceError(f"the slicer refused the settings: {m.group(1).strip()}")
        raise SliceError(f"the slicer failed on {name} (exit code {proc.returncode}): {complaint}")
    # An .ini value the slicer cannot parse is replaced by a default with only a warning.
    swapped = [f"{k}={v.strip().strip(chr(34))} (it used {s})" for k, v, s in _SUBSTITUTED_RE.findall(said)]
    if swapped:
        raise SliceError(f"the slicer did not accept the setting {', '.join(swapped)}; fix the value")
    if not out.is_file() or out.stat().st_size == 0:
        raise SliceError(f"the slicer wrote no G-code for {name}: {complaint}")


# --------------------------------------------------------------------------- G-code metadata

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


def _numbers(text: str) -> list[float]:
    """`1.5` or the per-extruder `1.5, 2.0` / `0.4,0.4`."""
    out = []
    for part in re.split(r"[,;]", text):
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out


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
    nozzles = _numbers(found.get("nozzle_diameter", ""))
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
    from farm.printer_models import MODELS
    from workers.bambu3mf import PackageError, extract_gcode

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
    from workers.bgcode import BgcodeError, read_bgcode

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
    values = _numbers(text) if text else []
    return round(sum(values), 4) if values else None


__all__ = [
    "BUNDLE_DIRS",
    "CopiesDontFit",
    "GcodeMeta",
    "SliceError",
    "SliceResult",
    "bundle_sections",
    "check_fits",
    "copies_per_plate",
    "count_layers",
    "find_bundle",
    "find_slicer",
    "first_layer_objects",
    "flatten_profile",
    "gcode_thumbnails",
    "load_preset",
    "mesh_bbox",
    "output_paths",
    "parse_bgcode_meta",
    "parse_duration",
    "parse_gcode_meta",
    "parse_sliced_file",
    "plates_for",
    "print_options",
    "profile_text",
    "slice_mesh",
    "slicer_version",
    "write_profile",
]
