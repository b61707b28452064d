"""What the farm sends a Bambu printer, checked against Bambu's own sequences and a foreign validator (#15).

- `bambox validate` (PyPI bambox, the estampo project's checker of what Bambu firmware validates)
  on packages made by the real slice path: every Bambu model x one object, several objects, four
  copies; 0 errors.
- The G-code walker (tests/gcode_walker.py): no Z home or plate probe with the nozzle above 150 C,
  no tool change outside an AMS block; the old generic-Marlin preset fails the same check.
- Each model's start and end sequence does the steps of BambuStudio's profile for that model, in
  that order (lists below, with the reference's repository and path).

AMS: the G-code is the same with and without one, as Studio writes it: the filament is loaded in
`M620 S0A` ... `T0` ... `M621 S0A`, which the firmware runs when `project_file` says use_ams (its
ams_mapping picks the tray for filament 0) and skips otherwise (the external spool feeds). The
"without" case below checks the G-code with those blocks removed, as such a printer runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from farm.core.printer_models import MODELS, PrinterModel
from farm.core.slice_error import SliceError
from tests.gcode_walker import hot_z_moves, loose_tool_changes, start_sequence, walk
from tests.test_slicer import box_triangles, write_binary_stl
from workers.bambu3mf import PLATE_GCODE, PROJECT_SETTINGS
from workers.mesh_bbox import check_fits, mesh_bbox
from workers.plate_image import png_size
from workers.slicer import SliceResult, slice_mesh
from workers.slicer_profiles import flatten_profile

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")
BAMBOX = Path(sys.executable).with_name("bambox")
BAMBU = [m for m in MODELS.values() if m.protocol == "bambu"]
LAYOUTS = ("one", "several", "copies4")
HOT_Z_LIMIT_C = 150.0


def _two_objects_3mf(path: Path) -> Path:
    """Two boxes as two build items (what a multi-part CAD export holds)."""
    objects, items = [], []
    for oid, (size, at) in enumerate((((12, 12, 3), 0), ((8, 16, 2), 30)), start=1):
        tris = box_triangles(size)
        verts = sorted({v for tri in tris for v in tri})
        index = {v: i for i, v in enumerate(verts)}
        vxml = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in verts)
        txml = "".join(f'<triangle v1="{index[p]}" v2="{index[q]}" v3="{index[r]}"/>' for p, q, r in tris)
        objects.append(
            f'<object id="{oid}" type="model"><mesh><vertices>{vxml}</vertices>'
            f"<triangles>{txml}</triangles></mesh></object>"
        )
        items.append(f'<item objectid="{oid}" transform="1 0 0 0 1 0 0 0 1 {at} 0 0"/>')
    model = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<model unit="millimeter" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        f"<resources>{''.join(objects)}</resources><build>{''.join(items)}</build></model>"
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("3D/3dmodel.model", model)
    return path


_SLICES: dict[tuple[str, str], SliceResult] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bambu")


def _sliced(model: PrinterModel, layout: str, workdir: Path) -> SliceResult:
    """The farm's package for `model` and `layout`, sliced once per module by the real slicer."""
    key = (model.name, layout)
    if key not in _SLICES:
        box = write_binary_stl(workdir / "box.stl", box_triangles((16, 10, 3)))
        mesh = _two_objects_3mf(workdir / "two.3mf") if layout == "several" else box
        copies = 4 if layout == "copies4" else 1
        out = workdir / f"{model.name}-{layout}.gcode.3mf"
        _SLICES[key] = slice_mesh(mesh, model, out, copies=copies)
    return _SLICES[key]


def _gcode(result: SliceResult) -> str:
    with zipfile.ZipFile(result.gcode) as zf:
        return zf.read(PLATE_GCODE).decode()


def _bambox_validate(package: Path) -> tuple[int, dict]:
    """`bambox validate --json`: its exit status and report (wide, so rich wraps no line)."""
    env = {**os.environ, "COLUMNS": "10000", "NO_COLOR": "1"}
    cmd = [str(BAMBOX), "validate", "--json", str(package)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, json.loads(proc.stdout[proc.stdout.index("{") :], strict=False)


def _without_ams_blocks(gcode: str) -> str:
    """The G-code as a printer without an AMS runs it: `M620 S<n>A` ... `M621 S<n>A` skipped."""
    return re.sub(r"^M620 S\d+A.*?^M621 S\d+A[^\n]*\n", "", gcode, flags=re.MULTILINE | re.DOTALL)


# --------------------------------------------------------------------------- bambox


@needs_slicer
@pytest.mark.skipif(not BAMBOX.exists(), reason="bambox (dev extra) not installed")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model", BAMBU, ids=[m.name for m in BAMBU])
def test_bambox_finds_no_error_in_the_farms_packages(model: PrinterModel, layout: str, workdir: Path) -> None:
    result = _sliced(model, layout, workdir)
    status, report = _bambox_validate(result.gcode)
    assert report["errors"] == [] and report["valid"], report
    assert status == 0
    # Only Studio 2.x's object-picking picture is missing (a warning), nothing else is.
    assert {w["code"] for w in report["warnings"]} <= {"W010"}, report["warnings"]
    with zipfile.ZipFile(result.gcode) as zf:
        assert png_size(zf.read("Metadata/plate_1.png")) == (512, 512)
        assert png_size(zf.read("Metadata/plate_no_light_1.png")) == (512, 512)
        assert png_size(zf.read("Metadata/plate_1_small.png")) == (128, 128)
        settings = json.loads(zf.read(PROJECT_SETTINGS))
        info = zf.read("Metadata/slice_info.config").decode()
    assert settings["printer_model"] == model.printer_model
    assert settings["filament_type"] == ["PLA"] * 5 and settings["nozzle_temperature"] == ["215"] * 5
    assert re.search(r'X-BBL-Client-Version" value="\d\d\.\d\d\.\d\d\.\d\d"', info)
    objects = {"one": 1, "several": 2, "copies4": 4}[layout]
    assert result.meta.objects == objects


def test_bambox_catches_what_the_old_packages_lacked(tmp_path: Path) -> None:
    """Negative control: bambox does fail a package: G-code without layer markers is INVALID."""
    if not BAMBOX.exists():
        pytest.skip("bambox (dev extra) not installed")
    from workers.bambu3mf import PlateInfo, package_gcode

    gcode = tmp_path / "old.gcode"
    gcode.write_text(";LAYER_CHANGE\n;Z:0.2\nG1 X10 Y10 E1\n")
    pkg = package_gcode(gcode, tmp_path / "old.gcode.3mf", PlateInfo("Bambu Lab P1S", "C12", layers=1), {})
    status, report = _bambox_validate(pkg)
    assert {"E009", "E010"} <= {e["code"] for e in report["errors"]} and status != 0


# --------------------------------------------------------------------------- the walker

# The start G-code every Bambu preset had before #15 (workers/profiles/printfarm.ini), placeholders
# filled in for PLA: heat to 215 C, then home Z onto the plate with it.
OLD_BAMBU_START = """; printer model: Bambu Lab P1S
M140 S60 ; set bed temp
M104 S215 ; set extruder temp
G90 ; use absolute coordinates
M83 ; extruder relative mode
M190 S60 ; wait for bed temp
G28 ; home all
G1 X20 Y2 Z5 F6000 ; go to the purge line
M109 S215 ; wait for extruder temp
G1 Z0.3 F720
G92 E0
G1 X120 E10 F1200 ; purge line
G92 E0
;LAYER_CHANGE
"""


def test_the_walker_catches_the_old_presets_hot_homing() -> None:
    hot = hot_z_moves(walk(OLD_BAMBU_START, flavor="bambu"), HOT_Z_LIMIT_C)
    assert [(s.text, s.nozzle_c) for s in hot] == [("G28", 215.0)]


@needs_slicer
@pytest.mark.parametrize("ams", [True, False], ids=["ams", "external-spool"])
@pytest.mark.parametrize("model", BAMBU, ids=[m.name for m in BAMBU])
def test_z_is_homed_and_probed_only_with_a_cool_nozzle(model: PrinterModel, ams: bool, workdir: Path) -> None:
    gcode = _gcode(_sliced(model, "one", workdir))
    if not ams:
        gcode = _without_ams_blocks(gcode)
    steps = walk(gcode, flavor="bambu")
    assert hot_z_moves(steps, HOT_Z_LIMIT_C) == []
    assert loose_tool_changes(steps) == []
    # The check has something to check: Z is homed and the plate probed, at 140 C.
    touching = [s for s in steps if s.kind in ("home_z", "probe")]
    assert {s.kind for s in touching} == {"home_z", "probe"}
    assert max(s.nozzle_c for s in touching) == 140.0
    changes = [s for s in steps if s.kind == "tool_change"]
    if ams:  # filament 0 is loaded from the tray project_file's ams_mapping names
        assert [s.text for s in changes] == ["T0"] and changes[0].in_ams_block
    else:
        assert changes == []
    # Either way the nozzle is at print temperature and primed before the first layer.
    start = start_sequence(gcode)
    assert re.search(r"^M109 S215\b", start, re.MULTILINE) and re.search(r"^G0 X\S+ E\d", start, re.MULTILINE)


def test_the_filament_change_loads_inside_an_ams_block() -> None:
    for model in BAMBU:
        template = flatten_profile(model)["toolchange_gcode"].replace("\\n", "\n")
        text = re.sub(r"\{[^}]*\}", "200", template.replace("[next_extruder]", "2"))
        steps = walk(text, flavor="bambu")
        assert [s.text for s in steps if s.kind == "tool_change"] == ["T2"], model.name
        assert loose_tool_changes(steps) == [] and hot_z_moves(steps, HOT_Z_LIMIT_C) == []


# --------------------------------------------------------------------------- against BambuStudio's steps


def _in_order(gcode: str, steps: list[str]) -> None:
    """Each step (a regex on a command, comments stripped) is found after the previous one."""
    lines = [raw.split(";", 1)[0].strip() for raw in gcode.splitlines()]
    at = 0
    for step in steps:
        pattern = re.compile(step)
        found = next((i for i in range(at, len(lines)) if pattern.fullmatch(lines[i])), None)
        assert found is not None, f"step {step!r} not found after line {at + 1}"
        at = found + 1


# bambulab/BambuStudio: resources/profiles/BBL/machine/Bambu Lab X1 Carbon 0.4 nozzle template
# machine_start_gcode.json and Bambu Lab P1S 0.4 nozzle template machine_start_gcode.json: bed heated
# and waited for, X homed, vibration suppression on, filament loaded in an M620/M621 block at the
# rear, flushed into the chute, wiped on the brush, Z homed on the exposed steel, hard wipe on it,
# (X1C: scanner check), levelling behind g29_before_print_flag else a plain home, the mechanical
# check, X re-homed, nozzle to print temperature, prime line at the front.
# Difference on purpose: Bambu homes Z at print temperature - 20 C (`G28 Z P0 T300`); here at 140 C.
XP_START = [
    r"M140 S60",
    r"M190 S60",
    r"G28 X",
    r"M975 S1",
    r"M620 M",
    r"M620 S0A",
    r"T0",
    r"M621 S0A",
    r"M412 S1",
    r"G1 E50 F200",
    r"G1 X100 F18000",  # first wipe on the brush
    r"M109 S140",
    r"G28 Z P0 T140",
    r"G29\.2 S0",
    r"M221 Z0",
    r"G0 Z-1\.01.*",  # the nozzle pressed on the exposed steel
    r"G2 I0\.5 J0 F300",
    r"M221 R",
    r"G29\.2 S1",
    r"M1002 judge_flag g29_before_print_flag",
    r"M622 J1",
    r"G29 A X[\d.]+ Y[\d.]+ I[\d.]+ J[\d.]+",
    r"M623",
    r"M1002 judge_flag g29_before_print_flag",
    r"M622 J0",
    r"G28",
    r"M623",
    r"M975 S1",
    r"M970\.3 Q1 .*",
    r"M974 Q1 S2 P0",
    r"M970\.3 Q0 .*",
    r"M974 Q0 S2 P0",
    r"G28 X",
    r"M109 S215",
    r"G0 X240 E15 .*",
]
X1C_SCANNER = [r"G28 Z P0 T140", r"M972 S5 P0", r"M1002 judge_flag g29_before_print_flag"]

# bambulab/BambuStudio: resources/profiles/BBL/machine/Bambu Lab A1 0.4 nozzle template
# machine_start_gcode.json and Bambu Lab A1 mini 0.4 nozzle template machine_start_gcode.json:
# nozzle held low while the bed heats, X homed, Z homed with `G28 Z P0 T140`, build plate
# detection, filament loaded over the waste chute (X -48.2 / -13.5) in an M620/M621 block and
# flushed, the mechanical check, waste removed by touching the front edge (G380), brush wipe,
# exposed-steel wipe, levelling behind g29_before_print_flag (bed waited for, nozzle 140 C) else a
# plain home, prime line at the front edge.
# Differences on purpose: Bambu touches the waste off at 170 C and re-homes Z hot; here 140 C.
A1_START = [
    r"M104 S140",
    r"M140 S60",
    r"G28 X",
    r"M109 S140",
    r"G28 Z P0 T140",
    r"M1002 judge_flag build_plate_detect_flag",
    r"G39\.4",
    r"M975 S1",
    r"G1 X{chute} F3000",
    r"M620 M",
    r"M620 S0A",
    r"T0",
    r"M621 S0A",
    r"G1 E50 F200",
    r"M970(\.3)? Q1 .*",
    r"M974 Q1 S2 P0",
    r"M970(\.3)? Q0 .*",
    r"M974 Q0 S2 P0",
    r"G28 X",
    r"M109 S140",
    r"G380 S3 Z-5 F1200",  # push the purge waste off the front edge
    r"G1 Y{brush}.*",  # into the brush
    r"G0 Z-1\.01 .*",  # exposed steel
    r"M211 R",
    r"M1002 judge_flag g29_before_print_flag",
    r"M190 S60",
    r"M109 S140",
    r"M622 J1",
    r"G29 A1 X[\d.]+ Y[\d.]+ I[\d.]+ J[\d.]+",
    r"M623",
    r"M1002 judge_flag g29_before_print_flag",
    r"M622 J0",
    r"G28( T145)?",
    r"M623",
    r"M975 S1",
    r"M109 S215",
    r"G0 X\S+ E8 .*",
]
A1_PLACES = {"A1": {"chute": r"-48\.2", "brush": r"262\.5"}, "A1MINI": {"chute": r"-13\.5", "brush": r"185"}}

# bambulab/BambuStudio: resources/profiles/BBL/machine/Bambu Lab <model> 0.4 nozzle template
# machine_end_gcode.json: retract, lift, bed and fans off, filament pulled back to the AMS
# (M620 S255 / T255 / M621 S255), nozzle off, Z lowered with a weak motor, speed scales reset.
END = [
    r"G1 E-0\.8 F1800",
    r"G1 Z[\d.]+ F900",
    r"M140 S0",
    r"M106 S0",
    r"M620 S255",
    r"T255",
    r"M621 S255",
    r"M104 S0",
    r"M17 Z0\.4",
    r"G1 Z[\d.]+ F600",
    r"M17 R",
    r"M220 S100",
    r"M73\.2 R1\.0",
]


def _steps_for(model: PrinterModel) -> list[str]:
    if model.name in A1_PLACES:
        return [s.format(**A1_PLACES[model.name]) if "{" in s else s for s in A1_START]
    return XP_START


@needs_slicer
@pytest.mark.parametrize("model", BAMBU, ids=[m.name for m in BAMBU])
def test_start_and_end_follow_bambustudios_steps(model: PrinterModel, workdir: Path) -> None:
    gcode = _gcode(_sliced(model, "one", workdir))
    start = start_sequence(gcode)
    _in_order(start, _steps_for(model))
    if model.name == "X1C":
        _in_order(start, X1C_SCANNER)
    else:
        assert "M972" not in start
    _in_order(gcode[gcode.rindex(";LAYER_CHANGE") :], END)
    assert "M900" not in gcode  # no MK3 linear advance: Bambu's M900 means something else
    with pytest.raises(AssertionError):  # the comparison can fail: the steps out of order
        _in_order(start, list(reversed(_steps_for(model))))


@needs_slicer
@pytest.mark.parametrize("model", BAMBU, ids=[m.name for m in BAMBU])
def test_every_layer_says_its_number_and_progress(model: PrinterModel, workdir: Path) -> None:
    result = _sliced(model, "copies4", workdir)
    gcode = _gcode(result)
    layers = gcode.split(";LAYER_CHANGE\n")[1:]
    assert len(layers) == result.meta.layers == 15
    assert f"; total layer number: {len(layers)}\n" in gcode
    for n, layer in enumerate(layers):
        head = layer.splitlines()[:8]
        assert f"M73 L{n + 1}" in [h.split(";")[0].strip() for h in head], (n, head)
        assert f"M991 S0 P{n}" in [h.split(";")[0].strip() for h in head], (n, head)
        assert any(re.fullmatch(r"M73 P\d+ R\d+", h) for h in head), (n, head)


def test_build_volume_is_the_machines() -> None:
    tall = ((0.0, 0.0, 0.0), (20.0, 20.0, 251.0))
    for model in BAMBU:
        height = 180.0 if model.name == "A1MINI" else 250.0
        assert model.bed[2] == height and float(flatten_profile(model)["max_print_height"]) == height
        with pytest.raises(SliceError):
            check_fits(tall, model)
    assert MODELS["A1MINI"].bed == (180.0, 180.0, 180.0)


def test_mesh_bbox_of_the_two_object_fixture(tmp_path: Path) -> None:
    (lo, hi) = mesh_bbox(_two_objects_3mf(tmp_path / "t.3mf"))
    assert lo == (0.0, 0.0, 0.0) and hi == (38.0, 16.0, 3.0)
