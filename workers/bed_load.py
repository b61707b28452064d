"""The printed weight on the bed, for Prusa's MK4 and MK4S, written into G-code after slicing.

Prusa's profiles for these bed-slingers tell the firmware, every layer, how much plastic the bed
carries (`M74 W<grams>`: the input shaper retunes its Y axis for the heavier bed) and lower the X/Y
acceleration as it grows (`M201` from a table over the weight). They use PrusaSlicer's
`extruded_weight_total`, which 2.5 does not have. So the farm's bundle writes marker comments
instead, and this fills them in from the extrusion so far, as that placeholder would:

    ;printfarm bed load: M74                          -> M74 W12.34
    ;printfarm bed load: M201 0:4000 1400:2500        -> M201 X3987 Y3987

Only the slicer's own extrusion counts (after the first marker), as in PrusaSlicer: the purge line
of the start G-code does not stay on the bed.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tempfile
from pathlib import Path

MARK = ";printfarm bed load:"
_E_RE = re.compile(r"\bE(-?\d*\.?\d+)")
_FOOTER_RE = re.compile(r"^; (filament_density|filament_diameter) = ([\d.]+)", re.MULTILINE)
_TAIL_BYTES = 256 * 1024


def interpolate(table: list[tuple[float, float]], x: float) -> float:
    """PrusaSlicer's interpolate_table(): linear between points, flat beyond the ends."""
    points = sorted(table)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def _grams_per_mm(path: Path) -> float:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        tail = f.read().decode("utf-8", errors="replace")
    found = dict(_FOOTER_RE.findall(tail))
    if "filament_density" not in found or "filament_diameter" not in found:
        raise ValueError(f"{path.name} has no filament_density/filament_diameter in its config block")
    radius = float(found["filament_diameter"]) / 2
    return math.pi * radius * radius * float(found["filament_density"]) / 1000  # mm3 * g/cm3 -> g


def _command(marker: str, grams: float) -> str:
    words = marker[len(MARK) :].split()
    if words == ["M74"]:
        return f"M74 W{grams:.2f} ; printed weight on the bed (g)"
    if words and words[0] == "M201" and len(words) > 1:
        table = [tuple(float(v) for v in point.split(":")) for point in words[1:]]
        accel = round(interpolate([(x, y) for x, y in table], grams))
        return f"M201 X{accel} Y{accel} ; acceleration for {grams:.0f} g on the bed"
    raise ValueError(f"unknown bed-load marker: {marker.strip()}")


def fill_bed_load(path: Path) -> int:
    """Replace the markers of the G-code at `path` (relative extrusion) in place; how many."""
    path = Path(path)
    per_mm = _grams_per_mm(path)
    extruded_mm = 0.0
    counting = False
    replaced = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".bed-load-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out, path.open(encoding="utf-8") as src:
            for line in src:
                if line.startswith(MARK):
                    counting = True
                    # A retraction before the first layer must not read as negative grams.
                    out.write(_command(line.rstrip("\r\n"), max(0.0, extruded_mm * per_mm)) + "\n")
                    replaced += 1
                    continue
                if line.startswith("M82"):
                    raise ValueError(f"{path.name} uses absolute extrusion (M82); the bed load needs M83")
                if counting and line[:3] in ("G1 ", "G0 ", "G2 ", "G3 "):
                    m = _E_RE.search(line.split(";", 1)[0])
                    if m:
                        extruded_mm += float(m.group(1))
                out.write(line)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return replaced
