"""What the farm sends Prusa's printers, checked step by step against Prusa's own profiles (#15).

The reference is prusa3d/PrusaSlicer-settings-prusa-fff: PrusaResearch/2.5.11.ini (commit
e110945, the newest bundle) for the printer presets "Original Prusa MK4 Input Shaper 0.4 nozzle",
"Original Prusa MK4S 0.4 nozzle", "Original Prusa XL Input Shaper 0.4 nozzle" and "Prusa CORE One
0.4 nozzle"; PrusaResearch/2.5.5.ini (main at 99beb4b, 2026-07-23) for their 0.4 mm filament
presets named in farm/core/printer_models.py (2.5.5's printers are the same but for the CORE One's
`M115`, and 2.5.6-2.5.11's changelog does not touch these filaments). Their values are written into
the tables below (the tests do not read the bundle), so a change on either side shows up here.
Every G-code checked comes from the real PrusaSlicer 2.5 CLI through workers.slicer, as the farm
slices it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from farm.core.printer_models import MATERIALS, MODELS
from tests.gcode_walker import codes, hot_z_moves, start_sequence, walk
from tests.test_slicer import box_triangles, write_binary_stl
from workers.bed_load import MARK, fill_bed_load, interpolate
from workers.slicer import slice_mesh
from workers.slicer_profiles import flatten_profile

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")

BUDDY = ("MK4", "MK4S", "XL", "COREONE")
PRUSA = ("MINI", "MK3S", *BUDDY)

# Nozzle temperature while Z is homed and the bed probed (the nozzle touches the sheet), per
# material. Reference: the `M104 T0 S{...}` / `M109 T0 R{...}` "bed leveling" expression of each
# start_gcode in PrusaResearch/2.5.11.ini: FLEX 210, PET* 175 (not on the CORE One), else 170.
# MINI: its 2.5 vendor profile (and the 2.5.5 MINI Input Shaper one) waits `M109 R170`.
MBL_C = {
    "MINI": dict.fromkeys(MATERIALS, 170),
    "MK4": {"PLA": 170, "PETG": 175, "ABS": 170, "ASA": 170, "TPU": 210},
    "MK4S": {"PLA": 170, "PETG": 175, "ABS": 170, "ASA": 170, "TPU": 210},
    "XL": {"PLA": 170, "PETG": 175, "ABS": 170, "ASA": 170, "TPU": 210},
    "COREONE": {"PLA": 170, "PETG": 170, "ABS": 170, "ASA": 170, "TPU": 210},
}

# Pressure advance (`M572 S`, 0.4 mm nozzle) and heatbreak fan target (`M142 S`) of the filament
# presets' start_filament_gcode in PrusaResearch/2.5.5.ini, the same for the four printers.
# FLEX: Prusa writes `M900 K0`, Buddy's legacy spelling of "no pressure advance"; the farm writes
# the native `M572 S0`, so no Buddy G-code has an M900 (see README).
PRESSURE_ADVANCE = {"PLA": "0.036", "PETG": "0.053", "ABS": "0.02", "ASA": "0.02", "TPU": "0"}
HEATBREAK_C = {"PLA": 36, "PETG": 36, "ABS": 40, "ASA": 40, "TPU": 36}

# Filament presets field by field, from PrusaResearch/2.5.5.ini.
FILAMENT_FIELDS = (
    "first_layer_temperature",
    "temperature",
    "first_layer_bed_temperature",
    "bed_temperature",
    "min_fan_speed",
    "max_fan_speed",
    "bridge_fan_speed",
    "disable_fan_first_layers",
    "fan_below_layer_time",
    "slowdown_below_layer_time",
    "filament_max_volumetric_speed",
)
FILAMENTS = {
    "Prusament PLA @PGIS": (230, 225, 60, 60, 100, 100, 100, 1, 100, 8, 15),
    "Prusament PETG @PGIS": (250, 250, 85, 90, 30, 60, 50, 3, 20, 9, 12),
    "Generic ABS @MK4": (260, 260, 100, 110, 15, 15, 25, 4, 30, 20, 15),
    "Prusament ASA @MK4": (260, 260, 105, 110, 20, 20, 30, 4, 20, 15, 15),
    "Generic FLEX @MK4": (230, 230, 50, 50, 30, 60, 80, 3, 100, 10, 3),
    "Prusament PLA @MK4S": (230, 225, 60, 60, 70, 100, 100, 1, 17, 6, 15),
    "Prusament PETG @MK4S": (250, 250, 85, 90, 20, 40, 40, 3, 20, 7, 12),
    "Generic ABS @MK4S": (260, 260, 100, 110, 10, 10, 20, 4, 30, 20, 15),
    "Prusament ASA @MK4S": (260, 260, 105, 110, 12, 12, 20, 4, 20, 10, 15),
    "Generic FLEX @MK4S": (230, 230, 50, 50, 30, 50, 70, 3, 100, 10, 3),
    "Prusament PLA @XLIS": (230, 225, 60, 60, 100, 100, 100, 1, 100, 10, 15),
    "Prusament PETG @XL": (250, 250, 80, 80, 30, 50, 50, 3, 20, 9, 12),
    "Generic ABS @XL": (260, 260, 100, 105, 15, 15, 25, 4, 30, 20, 15),
    "Prusament ASA @XL": (260, 260, 100, 105, 20, 20, 30, 4, 20, 15, 15),
    "Generic FLEX @XL": (230, 230, 50, 50, 30, 30, 80, 3, 100, 10, 2.5),
    "Prusament PLA @COREONE": (230, 225, 60, 60, 85, 100, 100, 1, 40, 8, 15),
    "Prusament PETG @COREONE": (250, 250, 85, 85, 30, 60, 60, 3, 20, 8, 12),
    "Generic ABS @COREONE": (260, 260, 110, 110, 15, 20, 25, 4, 30, 20, 15),
    "Prusament ASA @COREONE": (260, 260, 110, 110, 20, 25, 25, 4, 20, 10, 15),
    "Generic FLEX @COREONE": (230, 230, 50, 50, 30, 50, 70, 3, 100, 10, 2.5),
}

# machine_limits_* ("normal,stealth") of the four printer presets in PrusaResearch/2.5.11.ini.
# Not compared: machine_max_junction_deviation (0.01), a key PrusaSlicer 2.5 does not have.
_MK4_LIMITS = {
    "machine_max_acceleration_e": "2500,2500",
    "machine_max_acceleration_extruding": "4000,2500",
    "machine_max_acceleration_retracting": "2500,2500",
    "machine_max_acceleration_travel": "4000,2500",
    "machine_max_acceleration_x": "4000,2500",
    "machine_max_acceleration_y": "4000,2500",
    "machine_max_acceleration_z": "200,200",
    "machine_max_feedrate_e": "100,100",
    "machine_max_feedrate_x": "300,160",
    "machine_max_feedrate_y": "300,160",
    "machine_max_feedrate_z": "40,40",
    "machine_max_jerk_e": "10,10",
    "machine_max_jerk_x": "8,8",
    "machine_max_jerk_y": "8,8",
    "machine_max_jerk_z": "2,2",
    "machine_min_extruding_rate": "0,0",
    "machine_min_travel_rate": "0,0",
    "machine_limits_usage": "emit_to_gcode",
}
MACHINE_LIMITS = {
    "MK4": _MK4_LIMITS,
    "MK4S": _MK4_LIMITS,
    "XL": _MK4_LIMITS
    | {
        "machine_max_acceleration_retracting": "1200,1200",
        "machine_max_acceleration_travel": "5000,2500",
        "machine_max_acceleration_x": "7000,2500",
        "machine_max_acceleration_y": "7000,2500",
        "machine_max_feedrate_x": "400,140",
        "machine_max_feedrate_y": "400,140",
        "machine_max_feedrate_z": "12,12",
    },
    "COREONE": _MK4_LIMITS
    | {
        "machine_max_acceleration_e": "5000,2500",
        "machine_max_acceleration_extruding": "7000,2500",
        "machine_max_acceleration_travel": "7000,2500",
        "machine_max_acceleration_x": "10000,2500",
        "machine_max_acceleration_y": "10000,2500",
        "machine_max_acceleration_z": "400,200",
        "machine_max_feedrate_x": "350,160",
        "machine_max_feedrate_y": "350,160",
        "machine_max_feedrate_z": "12,12",
        "machine_max_jerk_x": "10,8",
        "machine_max_jerk_y": "10,8",
    },
}

# The start sequences' steps, in order, as PrusaResearch/2.5.11.ini's start_gcode writes them for
# Prusament PLA (first layer 230 °C, bed 60 °C) and the 0.4 mm nozzle, followed by the filament's
# pressure advance and heatbreak settings. A step matches a command that starts with it; the
# part's position decides the numbers of M555 and of the XL's cleaning place, so those are prefixes.
_MK4_FAMILY_START = [
    "M17",
    "M862.1 P0.4",
    'M862.3 P "{model}"',
    "M862.5 P2",
    'M862.6 P"Input shaper"',
    "M115 U6.5.7+12836",
    "M555 X",  # print area, for partial levelling
    "G90",
    "M83",
    "M140 S60",
    "M104 T0 S170",  # bed-levelling temperature
    "M109 T0 R170",
    "M84 E",
    "G28",
    "G1 X42 Y-4 Z5",
    "M302 S155",
    "G1 E-2",
    "M84 E",
    "G29 P9 X10 Y-4 W32 H4",  # nozzle cleaning
    "M106 S100",
    "G0 Z40",
    "M190 S60",
    "M107",
    "M84 E",
    "G29 P1",  # probe the print area
    "G29 P1 X0 Y0 W50 H20 C",
    "G29 P3.2",
    "G29 P3.13",
    "G29 A",
    "M104 S230",
    "G0 X0 Y-4 Z15",
    "M109 S230",
    "G92 E0",
    "M569 S0 E",
    "G92 E0",
    "G1 E2",
    "G0 E7 X15 Z0.2",  # purge line, in front of the sheet
    "G0 X25 E4",
    "G0 X35 E4",
    "G0 X45 E4",
    "G0 X48 Z0.05",
    "G0 X51 Z0.2",
    "G92 E0",
    "M221 S100",
    "M572 S0.036",
    "M142 S36",
]
START_STEPS = {
    ("MK4", "PLA"): [s.format(model="MK4") for s in _MK4_FAMILY_START],
    ("MK4S", "PLA"): [s.format(model="MK4S") for s in _MK4_FAMILY_START],
    ("XL", "PLA"): [
        "M17",
        'M862.3 P "XL"',
        "M862.5 P2",
        'M862.6 P"Input shaper"',
        "M115 U6.4.1+12026",
        "G90",
        "M83",
        "M555 X",
        "M862.1 P0.4",
        "M140 S60",
        "M104 T0 S170",
        "G28 XY",  # home the carriage...
        "T0 S1 L0 D0",  # ...pick the tool (as "Original Prusa XL - 2T Input Shaper 0.4 nozzle" does)...
        "M109 T0 R170",
        "M84 E",
        "G28 Z",  # ...and home Z with it
        "M104 T0 S70",  # idle_temperature of Prusament PLA @XLIS
        "M190 S60",
        "G29 G",
        "M109 T0 R170",
        "G1 X",
        "M302 S155",
        "G1 E-2",
        "M84 E",
        "G29 P9 X",
        "G0 Z10",
        "M106 S100",
        "M107",
        "M84 E",
        "G29 P1",
        "G29 P1 X30 Y0 W50 H20 C",
        "G29 P3.2",
        "G29 P3.13",
        "G29 A",
        "M104 S230",
        "G1 Z10",
        "G0 X30 Y-8",
        "M109 T0 S230",
        "M591 S0",
        "G92 E0",
        "G0 X30 Y-8",
        "G1 E2",
        "G0 E10 X40 Z0.2",
        "G0 X70 E9",
        "G0 X73 Z0.05",
        "G0 X76 Z0.2",
        "M591 R",
        "G92 E0",
        "M572 S0.036",
        "M142 S36",
    ],
    ("COREONE", "PLA"): [
        "M17",
        "M862.1 P0.4",
        'M862.3 P "COREONE"',
        "M862.5 P2",
        'M862.6 P"Input shaper"',
        "M115 U6.8.1+16182",
        "M555 X",
        "G90",
        "M83",
        "M140 S60",
        "M109 R170",
        "M84 E",
        "G28",
        "M141 S20",  # chamber_temperature of Prusament PLA @COREONE
        "M106 S70",
        "G0 Z40",
        "M104 T0 S170",  # its idle_temperature
        "M190 R60",
        "M107",
        "G29 G",
        "M109 R170",
        "M302 S155",
        "G1 E-2",
        "M84 E",
        "G29 P9 X208 Y-2.5 W32 H4",
        "M84 E",
        "G29 P1",
        "G29 P1 X150 Y0 W100 H20 C",
        "G29 P3.2",
        "G29 P3.13",
        "G29 A",
        "M104 S230",
        "G0 X249 Y-2.5 Z15",
        "M109 S230",
        "G92 E0",
        "M569 S0 E",
        "M591 S0",
        "G92 E0",
        "G1 E2",
        "G0 E5 X235 Z0.2",
        "G0 X225 E4",
        "G0 X215 E4",
        "G0 X205 E4",
        "G0 X202 Z0.05",
        "G0 X199 Z0.2",
        "M591 R",
        "G92 E0",
        "M221 S100",
        "M572 S0.036",
        "M142 S36",
    ],
    # Generic ABS @COREONE: chamber_minimal_temperature 40, chamber_temperature 55, idle 130, bed 110.
    ("COREONE", "ABS"): [
        'M862.3 P "COREONE"',
        "M140 S115",  # the bed heats the chamber
        "M109 R170",
        "G28",
        "M104 S130",
        "G1 Z10",
        "G1 X242 Y-9",
        "M191 S40",
        "M141 S55",
        "M107",
        "M140 S110",
        "G0 Z40",
        "M104 T0 S130",
        "M190 R110",
        "G29 G",
        "M109 R170",
        "G29 P9 X208 Y-2.5 W32 H4",
        "G29 P1",
        "M104 S260",
        "M109 S260",
        "G0 E5 X235 Z0.2",
        "M572 S0.02",
        "M142 S40",
    ],
    # Generic FLEX @MK4S: bed levelling at 210 °C, 4 mm retraction around the cleaning.
    ("MK4S", "TPU"): [
        "M104 T0 S210",
        "M109 T0 R210",
        "G28",
        "G1 E-4",
        "G29 P9 X10 Y-4 W32 H4",
        "M190 S50",
        "G29 P1",
        "M104 S230",
        "M109 S230",
        "G1 E4",
        "G0 E7 X15 Z0.2",
        "M572 S0",
        "M142 S36",
    ],
}

# end_gcode of the same presets, in order. XL: Prusa resets pressure advance with `M900 K0`; the
# farm writes the native `M572 S0` (no M900 in Buddy G-code, see README).
_MK4_FAMILY_END = [
    "G1 Z",
    "M104 S0",
    "M140 S0",
    "M107",
    "G1 X241 Y170",
    "G1 Z",
    "G4",
    "M572 S0",
    "M593 X T2 F0",
    "M593 Y T2 F0",
    "M84 X Y E",
]
END_STEPS = {
    "MK4": _MK4_FAMILY_END,
    "MK4S": _MK4_FAMILY_END,
    "XL": [
        "G1 Z",
        "M104 S0",
        "M140 S0",
        "M107",
        "G1 X6 Y350",
        "G1 Z",
        "M572 S0",
        "M142 S36",
        "M221 S100",
        "M84",
    ],
    "COREONE": [
        "G1 Z",
        "M104 S0",
        "M140 S0",
        "M141 S0",
        "M107",
        "G1 X242 Y211",
        "G4",
        "M572 S0",
        "M84 X Y E",
    ],
}


# --------------------------------------------------------------------------- helpers


def _commands(gcode: str) -> list[str]:
    """Each command without its comment, spaces collapsed."""
    out = []
    for raw in gcode.splitlines():
        text = " ".join(raw.split(";", 1)[0].split())
        if text:
            out.append(text)
    return out


def first_missing_step(gcode: str, steps: list[str]) -> str | None:
    """The first of `steps` not found, in order, as the start of a command of `gcode`; None if all
    are. A step matches whole words ("G28" is not "G280"), except that a last word of one letter
    stands for that parameter with any value ("M555 X" matches "M555 X114.06 Y98 W32 H20")."""
    commands = iter(_commands(gcode))
    for step in steps:
        any_value = re.search(r" [A-Z]$", step) is not None
        if not any(
            command == step or command.startswith(step if any_value else step + " ") for command in commands
        ):
            return step
    return None


def end_sequence(gcode: str) -> str:
    """What PrusaSlicer writes after the last layer: the end_filament_gcode and end_gcode."""
    return gcode[gcode.rindex(";TYPE:Custom") :]


Sliced = Callable[[str, str], str]  # (model, material) -> G-code text, sliced once per module


@pytest.fixture(scope="module")
def part(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_binary_stl(tmp_path_factory.mktemp("part") / "block.stl", box_triangles((16, 10, 3)))


@pytest.fixture(scope="module")
def sliced(part: Path, tmp_path_factory: pytest.TempPathFactory) -> Sliced:
    out = tmp_path_factory.mktemp("gcode")

    @cache
    def gcode(model: str, material: str) -> str:
        result = slice_mesh(part, MODELS[model], out / f"{model}_{material}.gcode", material=material)
        return result.gcode.read_text()

    return gcode


def _limit_c(model: str, material: str) -> float:
    if model == "MK3S":
        # The MK3S probes with an inductive sensor (P.I.N.D.A.), not the nozzle: Prusa's profile
        # homes and levels it at the printing temperature, so that is its bed-levelling temperature.
        return float(flatten_profile(MODELS[model], material)["first_layer_temperature"])
    return MBL_C[model][material]


# --------------------------------------------------------------------------- the walker checks

CASES = [(m, mat) for m in PRUSA for mat in MATERIALS]


@needs_slicer
@pytest.mark.parametrize(("model", "material"), CASES, ids=[f"{m}-{mat}" for m, mat in CASES])
def test_z_is_homed_and_probed_at_prusas_bed_levelling_temperature(
    model: str, material: str, sliced: Sliced
) -> None:
    text = sliced(model, material)
    steps = walk(text)
    limit = _limit_c(model, material)
    assert hot_z_moves(steps, limit) == []
    touching = [s for s in steps if s.kind in ("home_z", "probe")]
    assert touching, "no Z homing or probing at all"
    if model in BUDDY:
        # Not merely "cool enough": cleaning and levelling happen at the reference's temperature.
        cleaning = [s for s in steps if s.text.startswith("G29 P9")]
        assert len(cleaning) == 1 and cleaning[0].nozzle_c == limit
        levelling = [s for s in steps if s.text == "G29 P1"]
        assert len(levelling) == 1 and levelling[0].nozzle_c == limit
        assert levelling[0].bed_c == float(
            flatten_profile(MODELS[model], material)["first_layer_bed_temperature"]
        )


@needs_slicer
@pytest.mark.parametrize(
    ("model", "material"), [(m, mat) for m in BUDDY for mat in MATERIALS], ids=lambda v: str(v)
)
def test_buddy_gcode_sets_pressure_advance_with_m572_never_m900(
    model: str, material: str, sliced: Sliced
) -> None:
    text = sliced(model, material)
    assert "M900" not in codes(text)
    head = start_sequence(text)
    assert f"M572 S{PRESSURE_ADVANCE[material]}" in _commands(head)
    assert f"M142 S{HEATBREAK_C[material]}" in _commands(head)


@needs_slicer
@pytest.mark.parametrize(("model", "material"), list(START_STEPS), ids=lambda v: str(v))
def test_start_sequence_has_prusas_steps_in_order(model: str, material: str, sliced: Sliced) -> None:
    assert first_missing_step(start_sequence(sliced(model, material)), START_STEPS[model, material]) is None


@needs_slicer
@pytest.mark.parametrize("model", BUDDY)
def test_end_sequence_has_prusas_steps_in_order(model: str, sliced: Sliced) -> None:
    assert first_missing_step(end_sequence(sliced(model, "PLA")), END_STEPS[model]) is None


@needs_slicer
@pytest.mark.parametrize("model", BUDDY)
def test_partial_levelling_area_covers_the_first_layer(model: str, part: Path, tmp_path: Path) -> None:
    result = slice_mesh(part, MODELS[model], tmp_path / "p.gcode")
    m555 = next(c for c in _commands(start_sequence(result.gcode.read_text())) if c.startswith("M555 "))
    area = {k: float(v) for k, v in re.findall(r"([XYWH])(-?[\d.]+)", m555)}
    assert result.meta.bbox is not None
    (x0, y0, _), (x1, y1, _) = result.meta.bbox
    assert area["X"] <= x0 and area["Y"] <= y0
    assert area["X"] + area["W"] >= x1 and area["Y"] + area["H"] >= y1
    assert area["W"] < 60 and area["H"] < 40  # the part's neighbourhood, not the whole bed


@needs_slicer
@pytest.mark.parametrize("model", ["MK4S", "XL"])
def test_several_copies_are_all_levelled_and_probed_cool(model: str, part: Path, tmp_path: Path) -> None:
    result = slice_mesh(part, MODELS[model], tmp_path / "four.gcode", copies=4)
    text = result.gcode.read_text()
    assert result.meta.objects == 4 and result.meta.bbox is not None
    assert hot_z_moves(walk(text), MBL_C[model]["PLA"]) == []
    m555 = next(c for c in _commands(start_sequence(text)) if c.startswith("M555 "))
    area = {k: float(v) for k, v in re.findall(r"([XYWH])(-?[\d.]+)", m555)}
    (x0, y0, _), (x1, y1, _) = result.meta.bbox
    assert area["X"] <= x0 and area["Y"] <= y0
    assert area["X"] + area["W"] >= x1 and area["Y"] + area["H"] >= y1


@needs_slicer
@pytest.mark.parametrize("model", BUDDY)
def test_purge_line_is_in_front_of_the_sheet(model: str, sliced: Sliced) -> None:
    y = 0.0
    purge_ys = []
    for command in _commands(start_sequence(sliced(model, "PLA"))):
        if command.split()[0] not in ("G0", "G1"):
            continue
        words = dict(re.findall(r"([XYZE])(-?[\d.]+)", command))
        y = float(words.get("Y", y))
        if float(words.get("E", 0)) > 0 and "X" in words:
            purge_ys.append(y)
    assert len(purge_ys) >= 2
    assert all(-8 <= v < 0 for v in purge_ys), purge_ys  # Prusa: Y -4 (MK4), -8 (XL), -2.5 (CORE One)


# --------------------------------------------------------------------------- the weight on the bed

# MK4/MK4S layer_gcode `M74 W[extruded_weight_total]` and before_layer_gcode
# `M201 X{interpolate_table(extruded_weight_total, (0,4000), (1400,2500), (20000,2500))} Y{…}`
# in PrusaResearch/2.5.11.ini; PrusaSlicer 2.5 has no extruded_weight_total, workers/bed_load.py
# computes it.
PRUSA_ACCEL_TABLE = [(0.0, 4000.0), (1400.0, 2500.0), (20000.0, 2500.0)]


def test_bed_load_table_interpolates_as_prusaslicer_does() -> None:
    assert [interpolate(PRUSA_ACCEL_TABLE, g) for g in (-1, 0, 700, 1400, 5000, 30000)] == [
        4000,
        4000,
        3250,
        2500,
        2500,
        2500,
    ]


def test_fill_bed_load_counts_the_slicers_extrusion(tmp_path: Path) -> None:
    # 1.75 mm PLA at 1.24 g/cm3: 2.9826 mg per mm of filament.
    gcode = tmp_path / "g.gcode"
    gcode.write_text(
        "M83\nG1 X0 Y-4 E40 ; the start G-code's purge does not stay on the bed\n"
        f"{MARK} M201 0:4000 1400:2500 20000:2500\nG1 E-.7\nG1 Z.2\n{MARK} M74\n"
        "G1 E.7\nG1 X10 E1000.5\nG1 X20 E-1 ; retract\n"
        f"{MARK} M201 0:4000 1.5:2500\n{MARK} M74\n"
        "; filament_density = 1.24\n; filament_diameter = 1.75\n"
    )
    assert fill_bed_load(gcode) == 4
    lines = [line.split(";")[0].strip() for line in gcode.read_text().splitlines()]
    assert lines[2:6] == ["M201 X4000 Y4000", "G1 E-.7", "G1 Z.2", "M74 W0.00"]
    assert lines[9:11] == ["M201 X2500 Y2500", "M74 W2.98"]  # 1000.2 mm: 2.983 g
    assert MARK not in gcode.read_text()
    gcode.write_text(f"M82\n{MARK} M74\n; filament_density = 1.24\n; filament_diameter = 1.75\n")
    with pytest.raises(ValueError, match="M82"):
        fill_bed_load(gcode)
    gcode.write_text(f"{MARK} M999\n; filament_density = 1.24\n; filament_diameter = 1.75\n")
    with pytest.raises(ValueError, match="unknown bed-load marker"):
        fill_bed_load(gcode)


@needs_slicer
@pytest.mark.parametrize("model", BUDDY)
def test_mk4_family_tells_the_firmware_the_weight_on_the_bed(model: str, sliced: Sliced) -> None:
    text = sliced(model, "PLA")
    commands = _commands(text)
    weights = [float(c.split("W")[1]) for c in commands if c.startswith("M74 ")]
    if model not in ("MK4", "MK4S"):  # the XL and CORE One move the bed in Z only
        assert weights == []
        return
    assert len(weights) == len(re.findall(r"^;AFTER_LAYER_CHANGE$", text, re.MULTILINE)) == 15
    assert weights == sorted(weights) and weights[0] == 0
    footer = re.search(r"^; total filament used \[g\] = ([\d.]+)", text, re.MULTILINE)
    assert footer and 0.8 * float(footer.group(1)) <= weights[-1] <= float(footer.group(1))
    accels = [c.split() for c in commands if c.startswith("M201 X") and "Z" not in c]
    assert len(accels) == 15 and all(x[1:] == y[1:] for _, x, y in accels)
    # Each layer's acceleration is the table's value for the weight printed before it.
    expected = [interpolate(PRUSA_ACCEL_TABLE, w) for w in [0.0, *weights[:-1]]]
    assert [int(x[1:]) for _, x, _ in accels] == pytest.approx(expected, abs=1)
    assert not any(line.startswith(MARK) for line in text.splitlines())


# --------------------------------------------------------------------------- presets, field by field


@pytest.mark.parametrize("model", BUDDY)
def test_machine_limits_are_prusas(model: str) -> None:
    cfg = flatten_profile(MODELS[model], "PLA")
    assert {k: cfg.get(k) for k in MACHINE_LIMITS[model]} == MACHINE_LIMITS[model]


@needs_slicer
@pytest.mark.parametrize("model", BUDDY)
def test_machine_limits_reach_the_gcode(model: str, sliced: Sliced) -> None:
    limits = {k: v.split(",")[0] for k, v in MACHINE_LIMITS[model].items()}
    commands = _commands(start_sequence(sliced(model, "PLA")))
    acc, feed = "machine_max_acceleration_", "machine_max_feedrate_"
    assert (
        f"M201 X{limits[acc + 'x']} Y{limits[acc + 'y']} Z{limits[acc + 'z']} E{limits[acc + 'e']}"
        in commands
    )
    assert (
        f"M203 X{limits[feed + 'x']} Y{limits[feed + 'y']} Z{limits[feed + 'z']} E{limits[feed + 'e']}"
        in commands
    )
    travel = (limits[acc + "extruding"], limits[acc + "retracting"], limits[acc + "travel"])
    assert "M204 P{} R{} T{}".format(*travel) in commands
    jerk = [float(limits[f"machine_max_jerk_{a}"]) for a in "xyze"]
    assert "M205 X{:.2f} Y{:.2f} Z{:.2f} E{:.2f}".format(*jerk) in commands


FILAMENT_CASES = [(m, mat) for m in BUDDY for mat in MATERIALS]


@pytest.mark.parametrize(("model", "material"), FILAMENT_CASES, ids=lambda v: str(v))
def test_filament_presets_are_prusas(model: str, material: str) -> None:
    preset = MODELS[model].filament_presets[material]
    cfg = flatten_profile(MODELS[model], material)
    ours = tuple(float(cfg[k]) for k in FILAMENT_FIELDS)
    assert dict(zip(FILAMENT_FIELDS, ours, strict=True)) == dict(
        zip(FILAMENT_FIELDS, map(float, FILAMENTS[preset]), strict=True)
    )
    assert "M900" not in cfg["start_filament_gcode"]


# --------------------------------------------------------------------------- negative controls

# The Buddy printer preset the farm used before #15 (workers/profiles/printfarm.ini), verbatim,
# with the MK3 filament preset it was paired with.
OLD_START = [
    'M862.3 P "[printer_model]" ; printer model check',
    "M862.1 P[nozzle_diameter] ; nozzle diameter check",
    "M115 U6.0.0 ; tell printer latest fw version",
    "G90 ; use absolute coordinates",
    "M83 ; extruder relative mode",
    "M140 S[first_layer_bed_temperature] ; set bed temp",
    "M104 S170 ; nozzle temp for probing, no ooze",
    "M190 S[first_layer_bed_temperature] ; wait for bed temp",
    "M109 S170 ; wait for probing temp",
    "G28 ; home all",
    "G29 ; mesh bed leveling",
    "M104 S[first_layer_temperature] ; set extruder temp",
    "G1 X2 Y2 Z3 F4800",
    "M109 S[first_layer_temperature] ; wait for extruder temp",
    "G1 Z0.2 F720",
    "G92 E0",
    "G1 X60 E9 F1000 ; intro line",
    "G1 X100 E12.5 F1000 ; intro line",
    "G92 E0",
    "M221 S95 ; set flow",
]
OLD_BUDDY = """[printfarm]
base_bundle = PrusaResearch.ini

[printer:Old MK4]
inherits = Original Prusa i3 MK3S & MK3S+
gcode_flavor = marlin2
printer_model = MK4
bed_shape = 0x0,250x0,250x210,0x210
max_print_height = 220
start_gcode = """ + "\\n".join(OLD_START)


@needs_slicer
def test_the_checks_fail_on_the_old_buddy_preset(part: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "old.ini"
    bundle.write_text(OLD_BUDDY)
    old = dataclasses.replace(
        MODELS["MK4"], bundle=str(bundle), printer_preset="Old MK4", filament_presets={"PLA": "Prusament PLA"}
    )
    text = slice_mesh(part, old, tmp_path / "old.gcode").gcode.read_text()
    assert "M900" in codes(text)  # M900 K30: refused by Buddy firmware
    assert "M900 K30" in _commands(text)
    assert first_missing_step(start_sequence(text), START_STEPS["MK4", "PLA"]) == "M17"
    # Without the steps that make the old preset look different, the order check still bites:
    assert (
        first_missing_step(start_sequence(text), ["G28", "G29 P9 X10 Y-4 W32 H4"]) == "G29 P9 X10 Y-4 W32 H4"
    )


@needs_slicer
def test_the_walker_flags_z_moves_with_a_hot_nozzle(sliced: Sliced) -> None:
    ours = sliced("MK4S", "PLA")
    assert hot_z_moves(walk(ours), 170) == []
    # Heating to the printing temperature before homing, as the MK3S's own sequence does...
    lines = ours.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split(";")[0].strip() == "G28")
    hot = "\n".join([*lines[:at], "M109 S230", *lines[at:]])
    flagged = hot_z_moves(walk(hot), 170)
    assert flagged and {s.kind for s in flagged} == {"home_z", "probe"}
    assert all(s.nozzle_c == 230 for s in flagged)
    # ...which the MK3S does: held to a Buddy printer's limit, its G-code fails.
    assert hot_z_moves(walk(sliced("MK3S", "PLA")), 170)


def test_order_check_is_not_vacuous() -> None:
    gcode = "M17\nG28 ; home\nG29 P9 X10\nG29 P1\n"
    assert first_missing_step(gcode, ["M17", "G28", "G29 P9", "G29 P1"]) is None
    assert first_missing_step(gcode, ["G28", "M17"]) == "M17"  # order matters
    assert first_missing_step(gcode, ["G29 P1", "G29 P9"]) == "G29 P9"
    assert first_missing_step(gcode, ["G29 P1", "G29 X"]) == "G29 X"
    assert first_missing_step(gcode, ["G29 P9 X"]) is None  # a one-letter last word: any value
    assert first_missing_step("G28 XY\n", ["G28"]) is None and first_missing_step("G280\n", ["G28"]) == "G28"


def test_every_buddy_model_is_checked() -> None:
    buddy_models = {m.name for m in MODELS.values() if m.bundle == "buddy.ini"}
    assert buddy_models == set(BUDDY) == set(END_STEPS) == set(MACHINE_LIMITS)
    assert {m for m, _ in START_STEPS} == set(BUDDY)
    assert {p for m in BUDDY for p in MODELS[m].filament_presets.values()} == set(FILAMENTS)
