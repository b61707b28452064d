"""Follows a G-code file the way a printer would, for the checks of what the farm sends real printers.

It tracks, line by line, how hot the active nozzle can be (an upper bound: heating counts at once,
cooling only once the G-code waits for it), the bed target, the tool, and whether a Bambu AMS
block (`M620 S<n>A` … `M621 S<n>A`) is open. Steps that touch the plate are classified so a test
can ask "was Z ever homed or probed with a nozzle hotter than X?" (ooze on the plate, PEI damage)
and "did a tool change happen outside an AMS block?" (Bambu firmware and bambox refuse it).

Firmware differences that matter here:
- Marlin and Prusa's Buddy firmware: `M109 S<t>` waits only while heating; `M109 R<t>` waits for
  cooling too.
- Bambu firmware: `M109 S<t>` waits both ways (its templates cool with "M109 S140 ; wait nozzle
  temp down to heatbed acceptable").
- `G28 … T<t>` on Bambu is a temperature the homing *permits*, not a cooling step, so it earns
  no credit here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

AMBIENT_C = 25.0
_WORD = re.compile(r"([A-Z])([-+]?\d*\.?\d*)")
_TOOL = re.compile(r"^T(\d+)$")


@dataclass(frozen=True)
class Step:
    line: int  # 1-based line number
    text: str  # the command without its comment
    kind: str  # "home_z", "probe", "tool_change" or "other"
    nozzle_c: float  # upper bound of the active nozzle's temperature here (°C)
    bed_c: float  # bed target
    tool: int | None
    in_ams_block: bool


def _words(text: str) -> tuple[str, dict[str, str]]:
    """The command word and its parameters: "G28 Z P0 T300" -> ("G28", {"Z": "", "P": "0", "T": "300"})."""
    head, _, rest = text.partition(" ")
    params: dict[str, str] = {}
    for letter, value in _WORD.findall(rest.upper()):
        params.setdefault(letter, value)
    return head.upper(), params


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _lines(gcode: str | Iterable[str]) -> Iterable[str]:
    return gcode.splitlines() if isinstance(gcode, str) else gcode


def _kind(code: str, params: dict[str, str], flavor: str) -> str:
    if code == "G28":
        axes = {"X", "Y", "Z"} & params.keys()
        return "home_z" if not axes or "Z" in axes else "other"
    if code == "G29":
        if flavor != "bambu":
            # Buddy: `G29 P3.x` interpolates/extrapolates the mesh and a bare `G29 A` activates it;
            # neither moves the nozzle to the plate.
            p = params.get("P", "")
            if p.startswith("3") or (set(params) == {"A"} and not params["A"]):
                return "other"
        return "probe"
    if code in ("G30", "G80"):  # G80: the MK3/MK3S firmware's mesh bed levelling (P.I.N.D.A.)
        return "probe"
    if code == "G380":  # Bambu: move until contact; downwards is the plate
        z = _num(params.get("Z"))
        return "probe" if z is not None and z < 0 else "other"
    match = _TOOL.match(code)
    if match and int(match.group(1)) < 255:  # T255 / T1000 are Bambu's "no tool" pseudo-tools
        return "tool_change"
    return "other"


def walk(gcode: str | Iterable[str], *, flavor: str = "marlin", start_c: float = AMBIENT_C) -> list[Step]:
    """Every command of `gcode` with the machine state at that point; `flavor` is "marlin" or "bambu"."""
    if flavor not in ("marlin", "bambu"):
        raise ValueError(f"unknown flavor {flavor!r}")
    bound: dict[int, float] = {}  # tool -> hottest the nozzle can be
    tool: int | None = None
    bed = 0.0
    ams_open: str | None = None
    steps: list[Step] = []
    for number, raw in enumerate(_lines(gcode), start=1):
        text = raw.split(";", 1)[0].strip()
        if not text:
            continue
        code, params = _words(text)
        if code in ("M104", "M109"):
            target = _num(params.get("S")) if "S" in params else _num(params.get("R"))
            which = int(_num(params.get("T")) or 0) if "T" in params else (tool or 0)
            if target is not None:
                current = bound.get(which, start_c)
                waits_down = code == "M109" and ("R" in params or flavor == "bambu")
                bound[which] = target if waits_down else max(current, target)
        elif code in ("M140", "M190"):
            bed = _num(params.get("S")) or _num(params.get("R")) or 0.0
        elif code == "M620" and params.get("S", "").strip():
            ams_open = params["S"]
        elif code == "M621" and params.get("S", "").strip():
            ams_open = None
        kind = _kind(code, params, flavor)
        if kind == "tool_change":
            tool = int(code[1:])
        active = tool or 0
        steps.append(Step(number, text, kind, bound.get(active, start_c), bed, tool, ams_open is not None))
    return steps


def hot_z_moves(steps: list[Step], limit_c: float) -> list[Step]:
    """Z homing and probing steps done with a nozzle that may be hotter than `limit_c`."""
    return [s for s in steps if s.kind in ("home_z", "probe") and s.nozzle_c > limit_c]


def loose_tool_changes(steps: list[Step]) -> list[Step]:
    """Tool changes outside an `M620`/`M621` block (a Bambu AMS would not load the filament)."""
    return [s for s in steps if s.kind == "tool_change" and not s.in_ams_block]


def codes(gcode: str | Iterable[str]) -> list[str]:
    """The command words in order: ["M862.3", "G28", "G29", …]."""
    found = []
    for raw in _lines(gcode):
        text = raw.split(";", 1)[0].strip()
        if text:
            found.append(text.split(None, 1)[0].upper())
    return found


def start_sequence(gcode: str) -> str:
    """The part of `gcode` before the first layer change (PrusaSlicer writes ";LAYER_CHANGE")."""
    head, marker, _ = gcode.partition(";LAYER_CHANGE")
    if not marker:
        raise ValueError("no ;LAYER_CHANGE in this G-code")
    return head
