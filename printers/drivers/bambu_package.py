"""What the printer is sent to start a print: the plate inside a sliced .gcode.3mf package and the
`project_file` command that names it (protocols.md §A.7)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from printers.drivers.bambu_ams import NO_AMS, Feed
from printers.drivers.base import DriverError

SLICE_INFO = "Metadata/slice_info.config"
ONLY_3MF = "Bambu printers print only sliced .gcode.3mf packages"


def project_file(
    name: str, plate: str, md5: str, subtask: str, job_id: str, feed: Feed = NO_AMS
) -> dict[str, Any]:
    """§A.7: the union of what Bambu Studio's plugin and bambuddy send; `feed` picks the slot."""
    return {
        "command": "project_file",
        "param": plate,
        "url": f"ftp:///{name}",
        "file": name,
        "md5": md5,
        "subtask_name": subtask,
        "project_id": job_id,
        "profile_id": "0",
        "task_id": job_id,
        "subtask_id": job_id,
        "bed_type": "auto",
        "timelapse": False,
        "bed_leveling": True,
        "flow_cali": False,
        "vibration_cali": True,
        "layer_inspect": False,
        "use_ams": feed.use_ams,  # use_ams without an AMS fails with 07FF_8012
        "ams_mapping": list(feed.ams_mapping),
        "ams_mapping2": [dict(m) for m in feed.ams_mapping2],
        "auto_bed_leveling": 2,
        "extrude_cali_flag": 2,
        "nozzle_offset_cali": 0,
        "cfg": "0",
    }


def plate_entry(path: Path) -> tuple[str, list[str]]:
    """The first plate G-code in the package and its filaments' types (slice_info.config);
    refuses anything that is not a plate-sliced 3MF."""
    try:
        with zipfile.ZipFile(path) as zf:
            plates = sorted(
                n for n in zf.namelist() if n.startswith("Metadata/plate_") and n.endswith(".gcode")
            )
            info = zf.read(SLICE_INFO) if SLICE_INFO in zf.namelist() else b""
    except (zipfile.BadZipFile, OSError) as exc:
        raise DriverError(f"{path.name} is not a .gcode.3mf package ({exc}): {ONLY_3MF}") from exc
    if not plates:
        raise DriverError(f"{path.name} holds no Metadata/plate_N.gcode: slice the plate before sending it")
    try:
        filaments = sorted(ET.fromstring(info).iter("filament"), key=lambda el: int(el.get("id") or 0))
    except (ET.ParseError, ValueError):
        filaments = []
    return plates[0], [str(el.get("type") or "") for el in filaments if el.get("type")]
