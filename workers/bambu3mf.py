"""Pack a plain G-code into the plate-sliced `.gcode.3mf` Bambu printers start jobs from.

Layout per protocols.md §A.9 (what Bambu Studio writes): content types, rels, a small valid
3D/3dmodel.model, Metadata/plate_1.gcode with its MD5, slice_info.config, model_settings.config
(+ rels), plate_1.json, project_settings.config (the slicer settings, per-filament values as
arrays padded to the printer's 5 slots, as Studio writes them), and the three plate pictures
(plate_1.png, plate_1_small.png, plate_no_light_1.png: the printer's screen shows them; the CAD
preview when there is one, else drawn from the G-code by workers.plate_image). The G-code gets
the HEADER and CONFIG comment blocks Bambu firmware looks for (without them a printer can hang
on "Unzip"), and after every layer marker (`M73 L`) the current `M73 P<pct> R<min>`, so progress
is reported on every layer. Checked by bambox (`bambox validate`, tests/test_bambu_fidelity.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

from workers.plate_image import plate_pngs

PLATE_GCODE = "Metadata/plate_1.gcode"
PLATE_MD5 = PLATE_GCODE + ".md5"
SLICE_INFO = "Metadata/slice_info.config"
MODEL_SETTINGS = "Metadata/model_settings.config"
MODEL_SETTINGS_RELS = "Metadata/_rels/model_settings.config.rels"
PLATE_JSON = "Metadata/plate_1.json"
PLATE_PNG = "Metadata/plate_1.png"
PLATE_SMALL_PNG = "Metadata/plate_1_small.png"
PLATE_NO_LIGHT_PNG = "Metadata/plate_no_light_1.png"
PLATE_TOP_PNG = "Metadata/top_1.png"  # Studio 2.x: the plate from above, which is what is drawn
PROJECT_SETTINGS = "Metadata/project_settings.config"
# What Studio writes as X-BBL-Client-Version: its own dotted version. The package's layout follows
# Studio 1.10 (no filament maps, no top/pick pictures), so that is the version it claims.
CLIENT_VERSION = "01.10.00.00"
SLOTS = 5  # AMS trays + external spool of a P1S: per-filament arrays are padded to this many
REQUIRED_ENTRIES: tuple[str, ...] = (
    "[Content_Types].xml",
    "_rels/.rels",
    "3D/3dmodel.model",
    PLATE_GCODE,
    PLATE_MD5,
    MODEL_SETTINGS,
    MODEL_SETTINGS_RELS,
    SLICE_INFO,
    PLATE_JSON,
    PLATE_PNG,
    PLATE_SMALL_PNG,
    PLATE_NO_LIGHT_PNG,
    PROJECT_SETTINGS,
)
PACKAGE_FORMAT = "bambu3mf-3"  # part of the slice cache key: bump when the package changes
GCODE_REL_TYPE = "http://schemas.bambulab.com/package/2021/gcode"
MODEL_REL_TYPE = "http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"
# Copied into the CONFIG block: what Bambu Studio and the firmware read to know the job.
CONFIG_BLOCK_KEYS = (
    "printer_model",
    "nozzle_diameter",
    "filament_type",
    "filament_diameter",
    "first_layer_temperature",
    "temperature",
    "first_layer_bed_temperature",
    "bed_temperature",
    "layer_height",
)
_COPY_CHUNK = 1024 * 1024
_EXECUTABLE_END = b"\n; EXECUTABLE_BLOCK_END\n"

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
 <Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
 <Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>
 <Default Extension="png" ContentType="image/png"/>
 <Default Extension="gcode" ContentType="text/x.gcode"/>
 <Default Extension="config" ContentType="application/xml"/>
 <Default Extension="json" ContentType="application/json"/>
 <Default Extension="md5" ContentType="text/plain"/>
</Types>
"""


def _rels(target: str, rel_type: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">\n'
        f' <Relationship Target="{target}" Id="rel-1" Type="{rel_type}"/>\n'
        "</Relationships>\n"
    )


# A 1 mm tetrahedron: readers want a valid model part; the printer only runs the G-code.
_MODEL = """<?xml version="1.0" encoding="UTF-8"?>
<model unit="millimeter" xml:lang="en-US" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
 xmlns:BambuStudio="http://schemas.bambulab.com/package/2021"
 xmlns:p="http://schemas.microsoft.com/3dmanufacturing/production/2015/06" requiredextensions="p">
 <metadata name="Application">printfarm</metadata>
 <metadata name="BambuStudio:3mfVersion">1</metadata>
 <resources>
  <object id="1" p:UUID="00000001-61cb-4c03-9d28-80fed5dfa1dc" type="model">
   <mesh>
    <vertices><vertex x="0" y="0" z="0"/><vertex x="1" y="0" z="0"/><vertex x="0" y="1" z="0"/>\
<vertex x="0" y="0" z="1"/></vertices>
    <triangles><triangle v1="0" v2="2" v3="1"/><triangle v1="0" v2="1" v3="3"/>\
<triangle v1="1" v2="2" v3="3"/><triangle v1="0" v2="3" v3="2"/></triangles>
   </mesh>
  </object>
 </resources>
 <build p:UUID="2c7c17d8-22b5-4d84-8835-1976022ea369">
  <item objectid="1" p:UUID="00000002-b1ec-4553-aec9-835e5b724bb4" printable="1"/>
 </build>
</model>
"""


@dataclass(frozen=True)
class PlateInfo:
    """What the package says about its plate, besides the G-code itself."""

    printer_model: str  # e.g. "Bambu Lab X1 Carbon"
    printer_model_id: str  # e.g. "BL-P001"
    nozzle_diameter: float | None = None
    print_time_s: int | None = None
    filament_g: float | None = None
    filament_mm: float | None = None
    filament_type: str | None = None
    layers: int | None = None
    max_z: float | None = None
    bbox: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    thumbnail_png: bytes | None = None  # the plate preview, when the G-code or CAD stage made one
    bed: tuple[float, float] = (256.0, 256.0)  # plate size, for the drawn pictures
    filament_colour: str | None = None  # "#RRGGBB"


def _duration(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def gcode_preamble(info: PlateInfo, config: Mapping[str, str]) -> bytes:
    """The HEADER and CONFIG blocks Bambu Studio opens its G-code with."""
    head = ["; HEADER_BLOCK_START", "; generated by printfarm"]
    if info.print_time_s is not None:
        t = _duration(info.print_time_s)
        head.append(f"; model printing time: {t}; total estimated time: {t}")
    if info.layers is not None:
        head.append(f"; total layer number: {info.layers}")
    if info.filament_mm is not None:
        head.append(f"; total filament length [mm] : {info.filament_mm:.2f}")
    if info.filament_g is not None:
        head.append(f"; total filament weight [g] : {info.filament_g:.2f}")
    if info.max_z is not None:
        head.append(f"; max_z_height: {info.max_z:.2f}")
    head += ["; HEADER_BLOCK_END", "", "; CONFIG_BLOCK_START"]
    values = {**config, "printer_model": info.printer_model}
    head += [f"; {k} = {values[k]}" for k in CONFIG_BLOCK_KEYS if k in values]
    head += ["; CONFIG_BLOCK_END", "", "; EXECUTABLE_BLOCK_START", ""]
    return "\n".join(head).encode()


def _slice_info(info: PlateInfo) -> str:
    def meta(key: str, value: object) -> str:
        return f"    <metadata key={quoteattr(key)} value={quoteattr(str(value))}/>"

    plate = [
        meta("index", 1),
        meta("printer_model_id", info.printer_model_id),
        meta("nozzle_diameters", info.nozzle_diameter if info.nozzle_diameter is not None else ""),
        meta("prediction", info.print_time_s or 0),
        meta("weight", f"{info.filament_g or 0:.2f}"),
        meta("outside", "false"),
        meta("support_used", "false"),
        meta("label_object_enabled", "false"),
    ]
    used_m = f"{(info.filament_mm or 0) / 1000:.2f}"
    ftype = quoteattr(info.filament_type or "PLA")
    colour = quoteattr(_colour(info))
    plate.append(
        f'    <filament id="1" tray_info_idx="" type={ftype} color={colour} '
        f'used_m="{used_m}" used_g="{info.filament_g or 0:.2f}"/>'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<config>\n  <header>\n'
        '    <header_item key="X-BBL-Client-Type" value="slicer"/>\n'
        f'    <header_item key="X-BBL-Client-Version" value="{CLIENT_VERSION}"/>\n'
        "  </header>\n  <plate>\n" + "\n".join(plate) + "\n  </plate>\n</config>\n"
    )


def _colour(info: PlateInfo) -> str:
    text = (info.filament_colour or "").strip().strip('"').split(";")[0]
    return text.upper() if re.fullmatch(r"#[0-9A-Fa-f]{6}", text) else "#FFFFFF"


def _model_settings() -> str:
    thumb = (
        f'    <metadata key="thumbnail_file" value="{PLATE_PNG}"/>\n'
        f'    <metadata key="thumbnail_no_light_file" value="{PLATE_NO_LIGHT_PNG}"/>\n'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<config>\n  <plate>\n'
        '    <metadata key="plater_id" value="1"/>\n'
        '    <metadata key="plater_name" value=""/>\n'
        '    <metadata key="locked" value="false"/>\n'
        f'    <metadata key="gcode_file" value="{PLATE_GCODE}"/>\n'
        f"{thumb}"
        "  </plate>\n</config>\n"
    )


def _plate_json(info: PlateInfo) -> str:
    data: dict[str, object] = {
        "version": 2,
        "nozzle_diameter": info.nozzle_diameter,
        "bed_type": "textured_plate",
        "filament_ids": [0],
        "filament_colors": [_colour(info)],
    }
    if info.bbox is not None:
        (x0, y0, _), (x1, y1, _) = info.bbox
        data["bbox_all"] = [x0, y0, x1, y1]
    return json.dumps(data, indent=1)


# PrusaSlicer keys whose values are per filament (or per extruder): lists in project_settings,
# under Studio's name when it has another one.
_PER_FILAMENT = {
    "filament_type": "filament_type",
    "filament_colour": "filament_colour",
    "temperature": "nozzle_temperature",
    "first_layer_temperature": "nozzle_temperature_initial_layer",
    "bed_temperature": "bed_temperature",
    "first_layer_bed_temperature": "bed_temperature_initial_layer",
    "filament_max_volumetric_speed": "filament_max_volumetric_speed",
    "filament_diameter": "filament_diameter",
    "filament_density": "filament_density",
    "filament_cost": "filament_cost",
    "nozzle_diameter": "nozzle_diameter",
    "retract_length": "retraction_length",
}


def _project_settings(info: PlateInfo, config: Mapping[str, str]) -> str:
    """The slicer settings as Studio's project_settings.config: a JSON object of strings, the
    per-filament ones as lists of SLOTS entries (one filament, repeated like a padded project)."""
    data: dict[str, object] = {k: str(v) for k, v in config.items()}
    for key, studio in _PER_FILAMENT.items():
        if key in config:
            first = str(config[key]).split(",")[0].split(";")[0].strip().strip('"')
            data[studio] = [first] * SLOTS
    data["filament_colour"] = [_colour(info)] * SLOTS
    bed = str(config.get("first_layer_bed_temperature", "")).split(",")[0]
    if bed:  # Studio keeps a bed temperature per plate type; every type gets the job's
        for plate in ("hot_plate_temp", "textured_plate_temp", "cool_plate_temp", "eng_plate_temp"):
            data[plate] = [bed] * SLOTS
    data.update(
        printer_model=info.printer_model,
        printer_settings_id=str(config.get("printer_settings_id", info.printer_model)),
        printable_height=str(config.get("max_print_height", "")),
        printable_area=[f"{x:g}x{y:g}" for x, y in ((0, 0), (info.bed[0], 0), info.bed, (0, info.bed[1]))],
        version=CLIENT_VERSION,
    )
    return json.dumps(data, indent=4, sort_keys=True)


def _copy_hashing(src: IO[bytes], dst: IO[bytes], md5: hashlib._Hash) -> None:
    while block := src.read(_COPY_CHUNK):
        md5.update(block)
        dst.write(block)


def _copy_with_progress(src: IO[bytes], dst: IO[bytes], md5: hashlib._Hash) -> None:
    """Copy the G-code, repeating the latest `M73 P<pct> R<min>` after every `M73 L<layer>`: Bambu
    firmware shows progress per layer, PrusaSlicer writes it per percent."""
    progress = b"M73 P0 R0\n"
    out: list[bytes] = []
    size = 0
    for line in src:
        out.append(line)
        if line.startswith(b"M73 P"):
            progress = line.split(b";", 1)[0].rstrip() + b"\n"
        elif line.startswith(b"M73 L"):
            out.append(progress)
        size += len(line)
        if size >= _COPY_CHUNK:
            block = b"".join(out)
            md5.update(block)
            dst.write(block)
            out, size = [], 0
    block = b"".join(out)
    md5.update(block)
    dst.write(block)


def package_gcode(gcode: Path, out: Path, info: PlateInfo, config: Mapping[str, str]) -> Path:
    """Write `out` (.gcode.3mf) holding `gcode` as plate 1; streamed, so size is no concern."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    md5 = hashlib.md5()
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
            zf.writestr("_rels/.rels", _rels("/3D/3dmodel.model", MODEL_REL_TYPE))
            zf.writestr("3D/3dmodel.model", _MODEL)
            with zf.open(PLATE_GCODE, "w", force_zip64=True) as dst, Path(gcode).open("rb") as src:
                preamble = gcode_preamble(info, config)
                md5.update(preamble)
                dst.write(preamble)
                _copy_with_progress(src, dst, md5)
                md5.update(_EXECUTABLE_END)
                dst.write(_EXECUTABLE_END)
            # Studio writes the digest in upper case; readers compare case-insensitively.
            zf.writestr(PLATE_MD5, md5.hexdigest().upper())
            zf.writestr(MODEL_SETTINGS, _model_settings())
            zf.writestr(MODEL_SETTINGS_RELS, _rels("/" + PLATE_GCODE, GCODE_REL_TYPE))
            zf.writestr(SLICE_INFO, _slice_info(info))
            zf.writestr(PLATE_JSON, _plate_json(info))
            zf.writestr(PROJECT_SETTINGS, _project_settings(info, config))
            drawn = plate_pngs(Path(gcode), info.bed, _colour(info))
            pictures = {
                PLATE_PNG: info.thumbnail_png or drawn["plate"],
                PLATE_SMALL_PNG: drawn["small"],
                PLATE_NO_LIGHT_PNG: drawn["no_light"],
                PLATE_TOP_PNG: drawn["no_light"],
            }
            for name, data in pictures.items():
                zf.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class PackageError(Exception):
    """The file is not a plate-sliced 3MF this module can read."""


def gcode_entry(zf: zipfile.ZipFile) -> str:
    """The plate G-code named by model_settings.config, else the first Metadata/plate_N.gcode."""
    names = set(zf.namelist())
    if MODEL_SETTINGS in names:
        try:
            root = ET.fromstring(zf.read(MODEL_SETTINGS))
        except ET.ParseError as exc:
            raise PackageError(f"{MODEL_SETTINGS} is not valid XML: {exc}") from exc
        for el in root.iter("metadata"):
            if el.get("key") == "gcode_file" and el.get("value") in names:
                return str(el.get("value"))
    plates = sorted(n for n in names if re.fullmatch(r"Metadata/plate_\d+\.gcode", n))
    if not plates:
        raise PackageError("it holds no Metadata/plate_N.gcode (is it a plate-sliced .gcode.3mf?)")
    return plates[0]


def printer_model_id(zf: zipfile.ZipFile) -> str | None:
    """`printer_model_id` from slice_info.config, if present."""
    try:
        root = ET.fromstring(zf.read(SLICE_INFO))
    except (KeyError, ET.ParseError):
        return None
    for el in root.iter("metadata"):
        if el.get("key") == "printer_model_id":
            return el.get("value") or None
    return None


def extract_gcode(package: Path, dest: Path) -> tuple[Path, str | None]:
    """Copy the plate G-code of `package` to `dest`, checking its MD5 when the package has one.
    Returns `dest` and the package's printer_model_id."""
    try:
        with zipfile.ZipFile(package) as zf:
            entry = gcode_entry(zf)
            md5 = hashlib.md5()
            with zf.open(entry) as src, Path(dest).open("wb") as dst:
                _copy_hashing(src, dst, md5)
            if entry + ".md5" in zf.namelist():
                expected = zf.read(entry + ".md5").decode("ascii", errors="replace").strip()
                if expected.lower() != md5.hexdigest():
                    raise PackageError(f"{entry} does not match its MD5 (the file is damaged)")
            return Path(dest), printer_model_id(zf)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"not a readable .gcode.3mf: {exc}") from exc


__all__ = [
    "PACKAGE_FORMAT",
    "PLATE_GCODE",
    "PLATE_NO_LIGHT_PNG",
    "PLATE_PNG",
    "PLATE_SMALL_PNG",
    "PROJECT_SETTINGS",
    "REQUIRED_ENTRIES",
    "PackageError",
    "PlateInfo",
    "extract_gcode",
    "gcode_preamble",
    "package_gcode",
    "printer_model_id",
]
