"""What Bambu firmware checks in a job it is asked to start (protocols.md §A.7, §A.9; fidelity.md).

The emulator fails a job here where a real printer would, with the code and words the printer's
screen shows, so that a package or a `project_file` the real one would refuse cannot pass tests:

* the archive: a zip with `[Content_Types].xml`, `_rels/.rels`, the plate G-code `param` names and
  its `.md5` matching it;
* the G-code: a `; HEADER_BLOCK_START` … `; total layer number: N` … `; HEADER_BLOCK_END` block
  at its head (without it a real printer hangs on "Unzip"; failing says the same, testably);
* layer changes: the firmware counts layers from `M73 L<n>` / `M991 S0 P<n>`; a G-code without
  them still prints, but the printer reports layer 0 throughout, as a real one does;
* `use_ams` / `ams_mapping`: the mapped trays must exist and hold each filament's material.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from printers.emulators.common import parse_duration

UNPARSABLE = 0x05004003  # screen: "unable to parse the file" (BambuStudio #6697, #7864)
BAD_3MF = 0x0502403D  # screen: "unable to process the 3MF file" (bambuddy #1389)
AMS_MAPPING = 0x07FF8012  # "failed to get AMS mapping table" (protocols.md §A.6)
MESSAGES = {
    UNPARSABLE: "Printing stopped because the printer was unable to parse the file. "
    "Please resend your print job.",
    BAD_3MF: "The print has been stopped because the printer was unable to process the 3MF file.",
    AMS_MAPPING: "Failed to get AMS mapping table.",
}
EXTERNAL_SPOOL = -1  # in the flat ams_mapping (254/255 there would select AMS tray 0 on firmware)
HEADER_BYTES = 64 * 1024
CHUNK_BYTES = 1024 * 1024
_ESTIMATE_RE = re.compile(rb"total estimated time: ([^;\n]+)")
_LAYERS_RE = re.compile(rb"^; total layer number: (\d+)", re.MULTILINE)
_FILAMENT_TYPE_RE = re.compile(rb"^; filament_type = ([^\r\n]+)", re.MULTILINE)
_M73_L_RE = re.compile(rb"^M73 L(\d+)", re.MULTILINE)
_M991_RE = re.compile(rb"^M991 S0 P(\d+)", re.MULTILINE)


@dataclass
class PlateCheck:
    """What the firmware reads from a package; `problem` is (print_error, reason) when it fails it."""

    estimate_s: float | None = None
    layers: int = 0  # `; total layer number:` in the header
    marked_layers: int = 0  # layer changes the G-code announces (M73 L and M991 S0 P both)
    filament_types: list[str] = field(default_factory=list)  # per filament, 1-based in the file
    problem: tuple[int, str] | None = None


def _fail(check: PlateCheck, code: int, detail: str) -> PlateCheck:
    check.problem = (code, f"{MESSAGES[code]} ({detail})")
    return check


def inspect_package(package: Path, entry: str) -> PlateCheck:
    """Stream the plate G-code once: layout, MD5, header block, filament types, layer markers."""
    check = PlateCheck()
    try:
        with zipfile.ZipFile(package) as zf:
            names = set(zf.namelist())
            if entry not in names:
                return _fail(check, BAD_3MF, f"{entry} is not in the 3MF")
            missing = [n for n in ("[Content_Types].xml", "_rels/.rels", entry + ".md5") if n not in names]
            if missing:
                return _fail(check, UNPARSABLE, "missing " + ", ".join(missing))
            expected = zf.read(entry + ".md5").decode("ascii", "replace").strip().lower()
            md5, head, m73, m991 = hashlib.md5(), b"", 0, 0
            carry = b""
            with zf.open(entry) as f:
                while block := f.read(CHUNK_BYTES):
                    md5.update(block)
                    if len(head) < HEADER_BYTES:
                        head += block[: HEADER_BYTES - len(head)]
                    text = carry + block
                    cut = text.rfind(b"\n") + 1  # count whole lines only; the rest waits for the next block
                    m73 += len(_M73_L_RE.findall(text, 0, cut))
                    m991 += len(_M991_RE.findall(text, 0, cut))
                    carry = text[cut:]
            m73 += len(_M73_L_RE.findall(carry))
            m991 += len(_M991_RE.findall(carry))
            check.filament_types = _slice_info_types(zf) if "Metadata/slice_info.config" in names else []
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        return _fail(check, BAD_3MF, f"cannot read the 3MF: {exc}")
    if md5.hexdigest() != expected:
        return _fail(check, BAD_3MF, f"{entry} does not match {entry}.md5")
    start, end = head.find(b"; HEADER_BLOCK_START"), head.find(b"; HEADER_BLOCK_END")
    layers = _LAYERS_RE.search(head, max(start, 0), max(end, 0))
    if start < 0 or end < start or layers is None:
        detail = "no HEADER_BLOCK with '; total layer number:' at the head of the G-code"
        return _fail(check, UNPARSABLE, detail)
    estimate = _ESTIMATE_RE.search(head, start, end)
    check.estimate_s = parse_duration(estimate.group(1).decode("ascii", "replace")) if estimate else None
    check.layers = int(layers.group(1))
    check.marked_layers = min(m73, m991)
    if not check.filament_types:
        found = _FILAMENT_TYPE_RE.search(head)
        check.filament_types = found.group(1).decode("ascii", "replace").strip().split(";") if found else []
    return check


def _slice_info_types(zf: zipfile.ZipFile) -> list[str]:
    try:
        root = ET.fromstring(zf.read("Metadata/slice_info.config"))
    except ET.ParseError:
        return []
    filaments = sorted(root.iter("filament"), key=lambda el: int(el.get("id") or 0))
    return [str(el.get("type") or "") for el in filaments]


def check_ams_mapping(
    cmd: dict[str, Any],
    ams: list[tuple[str, str]] | None,
    spool: tuple[str, str],
    filament_types: list[str],
) -> tuple[int, str] | None:
    """(print_error, reason) when the firmware cannot feed the job as `cmd` maps it, else None.

    Without `use_ams` the printer feeds from the external spool and checks nothing (it cannot
    know what is on it). With it, every filament of the file needs a mapped tray that exists
    and holds its material; -1 sends that filament to the external spool."""
    if not cmd.get("use_ams"):
        return None

    def bad(detail: str) -> tuple[int, str]:
        return AMS_MAPPING, f"{MESSAGES[AMS_MAPPING]} ({detail})"

    mapping = cmd.get("ams_mapping")
    if not ams:
        return bad("use_ams is set but the printer has no AMS")
    wanted = filament_types or [""]
    if not isinstance(mapping, list) or len(mapping) < len(wanted):
        return bad(f"ams_mapping {mapping!r} does not map {len(wanted)} filament(s)")
    for index, (tray, material) in enumerate(zip(mapping, wanted, strict=False)):
        if tray == EXTERNAL_SPOOL:
            loaded = spool[0]
        elif isinstance(tray, int) and not isinstance(tray, bool) and 0 <= tray < len(ams):
            loaded = ams[tray][0]
        else:
            return bad(f"filament {index + 1} is mapped to tray {tray!r}, which does not exist")
        if not loaded:
            return bad(f"filament {index + 1} is mapped to tray {tray}, which is empty")
        if material and loaded.upper() != material.upper():
            return bad(f"filament {index + 1} is {material} but tray {tray} holds {loaded}")
    return None
