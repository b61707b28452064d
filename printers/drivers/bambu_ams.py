"""Which Bambu filament slot feeds a job: `use_ams`, `ams_mapping`, `ams_mapping2` (protocols.md §A.7).

The farm's G-code has one filament. With an AMS, that filament is mapped to the tray holding the
job's material (and colour, when the job names one): `ams_mapping[0]` is the global tray id
(unit * 4 + slot), `ams_mapping2[0]` the same as unit and slot. A printer without an AMS gets
`use_ams: false` and empty lists, as Bambu Studio sends (P1S refuses `use_ams` there, 07FF_8012).
With an AMS but the job's filament only on the external spool: `use_ams: false`, `-1` in the flat
list and `{"ams_id": 255, "slot_id": 0}` beside it, as bambuddy sends (a raw 254 there selects AMS
tray 0 on firmware). When no slot holds the material the job is refused before anything is
uploaded, so the agent reports the attempt failed and another printer can take the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from printers.colors import color_name
from printers.drivers.base import DriverError

EXTERNAL = {"ams_id": 255, "slot_id": 0}


@dataclass(frozen=True)
class Feed:
    use_ams: bool
    ams_mapping: list[int]
    ams_mapping2: list[dict[str, int]]


NO_AMS = Feed(False, [], [])


def json_object(value: Any) -> dict[str, Any]:
    """`value` when the report holds an object there, else an empty one (reports vary by model)."""
    return value if isinstance(value, dict) else {}


def _trays(report: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(global tray id, tray) for every loaded AMS tray the report lists."""
    ams = json_object(report.get("ams"))
    found = []
    for unit in ams.get("ams") or []:
        if not isinstance(unit, dict) or not str(unit.get("id", "")).isdigit():
            continue
        for tray in unit.get("tray") or []:
            if isinstance(tray, dict) and str(tray.get("id", "")).isdigit() and tray.get("tray_type"):
                found.append((int(unit["id"]) * 4 + int(tray["id"]), tray))
    return found


def _describe(tray: dict[str, Any]) -> str:
    kind = str(tray.get("tray_type") or "").upper() or "unknown"
    color = color_name(str(tray.get("tray_color") or ""))
    return f"{kind} {color}" if color else kind


def choose_feed(report: dict[str, Any], material: str | None, color: str | None) -> Feed:
    """The slot for a job wanting `material` (e.g. "PLA") in `color` (a plain name, see colors.py);
    either may be None (anything goes). DriverError, written for the operator, when none fits."""
    ams = json_object(report.get("ams"))
    if not ams.get("ams"):
        return NO_AMS  # nothing to choose: the printer feeds what is on its spool holder
    want_kind = material.upper() if material else None

    def fits(tray: dict[str, Any]) -> bool:
        kind = str(tray.get("tray_type") or "").upper()
        return (
            bool(kind)
            and (want_kind is None or kind == want_kind)
            and (color is None or color_name(str(tray.get("tray_color") or "")) == color.lower())
        )

    trays = _trays(report)
    feeding = str(ams.get("tray_now", ""))
    matches = [tid for tid, tray in trays if fits(tray)]
    if matches:
        tid = int(feeding) if feeding.isdigit() and int(feeding) in matches else matches[0]
        return Feed(True, [tid], [{"ams_id": tid // 4, "slot_id": tid % 4}])
    spool = json_object(report.get("vt_tray"))
    if fits(spool) or (want_kind is None and color is None):
        return Feed(False, [-1], [dict(EXTERNAL)])
    wanted = " ".join(w for w in (material, color) if w)
    loaded = ", ".join(f"tray {tid}: {_describe(t)}" for tid, t in trays) or "no loaded tray"
    on_spool = _describe(spool) if spool.get("tray_type") else "not set"
    raise DriverError(
        f"no filament slot holds {wanted}: the AMS has {loaded}; the external spool is {on_spool}. "
        "Load it (and set it on the printer's screen), or let another printer take the job"
    )
