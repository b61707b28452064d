"""Every printer model `farm profiles` lists slices a real part into G-code that printer can run."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import typer
from typer.testing import CliRunner

from farm.commands import slicing
from farm.core.printer_models import (
    MATERIALS,
    MODELS,
    QUALITIES,
    PrinterModel,
    UnknownChoice,
    check_model,
    find_model,
    model_for_gcode,
)
from tests.test_slicer import box_triangles, write_binary_stl
from workers.bambu3mf import PLATE_GCODE, REQUIRED_ENTRIES
from workers.slicer import slice_mesh
from workers.slicer_profiles import flatten_profile

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")

# Prusa's start G-code purges (and cleans the nozzle) a few mm in front of the sheet, which their
# firmware allows: Y -2 (MINI), -3 (MK3S), -4 (MK4, MK4S), -8 (XL), -2.5 and, warming the
# chamber, -9 (CORE One).
FRONT_MARGIN = {"MINI": 5.0, "MK3S": 5.0, "MK4": 5.0, "MK4S": 5.0, "XL": 10.0, "COREONE": 10.0}


def _cli() -> typer.Typer:
    app = typer.Typer()
    slicing.register(app)
    return app


def test_farm_profiles_json_lists_every_model() -> None:
    result = CliRunner().invoke(_cli(), ["profiles", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == list(MODELS)
    by_name = {r["model"]: r for r in rows}
    assert by_name["A1MINI"]["protocol"] == "bambu" and by_name["A1MINI"]["bed_x"] == 180
    assert by_name["X1C"]["output"] == ".gcode.3mf" and by_name["MK4S"]["output"] == ".gcode"
    assert (by_name["XL"]["bed_x"], by_name["XL"]["bed_y"], by_name["XL"]["bed_z"]) == (360, 360, 360)


# Names as printed on the machines and typed by people: case, spaces, dashes and "+" aside.
NAMES_AS_PRINTED = {
    "Core One": "COREONE",
    "core-one": "COREONE",
    "CORE ONE": "COREONE",
    "Prusa CORE One": "COREONE",
    "core_one": "COREONE",
    "MK3S+": "MK3S",
    "mk3s+": "MK3S",
    "Original Prusa i3 MK3S & MK3S+": "MK3S",
    "MK4S": "MK4S",
    "mk4s": "MK4S",
    "Original Prusa MK4S": "MK4S",
    "MK4IS": "MK4",
    "Original Prusa XL": "XL",
    "MINI+": "MINI",
    "A1 mini": "A1MINI",
    "a1-mini": "A1MINI",
    "A1 Mini": "A1MINI",
    "Bambu Lab A1 mini": "A1MINI",
    "X1 Carbon": "X1C",
    "Bambu Lab X1 Carbon": "X1C",
    "p1s": "P1S",
}


@pytest.mark.parametrize(("typed", "model"), NAMES_AS_PRINTED.items())
def test_model_names_as_printed_on_the_machine_are_accepted(typed: str, model: str) -> None:
    assert check_model(typed) is MODELS[model]


@pytest.mark.parametrize("typed", ["Core Two", "MK5", "A1 maxi", "Original Prusa", ""])
def test_unknown_model_names_are_refused_with_a_hint(typed: str) -> None:
    with pytest.raises(UnknownChoice, match="unknown printer model"):
        check_model(typed)
    assert find_model(typed) is None


def test_gcode_names_map_back_to_the_catalogue() -> None:
    assert model_for_gcode("MK4IS") is MODELS["MK4"] and model_for_gcode("MK4") is MODELS["MK4"]
    assert model_for_gcode("XLIS") is MODELS["XL"] and model_for_gcode("COREONE") is MODELS["COREONE"]
    assert model_for_gcode("Bambu Lab X1 Carbon") is MODELS["X1C"]
    assert model_for_gcode('"MK4S"') is MODELS["MK4S"]
    assert model_for_gcode("Ender 3") is None


@pytest.fixture(scope="module")
def part(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Small on purpose: ten models are sliced, and the whole file must stay well under a minute.
    return write_binary_stl(tmp_path_factory.mktemp("part") / "block.stl", box_triangles((16, 10, 3)))


def _gcode_text(path: Path) -> str:
    if path.name.endswith(".gcode.3mf"):
        with zipfile.ZipFile(path) as zf:
            return zf.read(PLATE_GCODE).decode()
    return path.read_text()


def _moves(text: str) -> list[tuple[float, float, float]]:
    """Absolute (x, y, z) after every G0/G1 that moves in X, Y or Z."""
    x = y = z = 0.0
    out = []
    for line in text.splitlines():
        if not line.startswith(("G0 ", "G1 ")):
            continue
        code = line.split(";", 1)[0]
        axes = dict(re.findall(r"([XYZ])(-?[\d.]+)", code))
        if not axes:
            continue
        x, y, z = (float(axes.get(a, v)) for a, v in zip("XYZ", (x, y, z), strict=True))
        out.append((x, y, z))
    return out


def _temps(text: str, codes: str) -> list[int]:
    return [int(t) for t in re.findall(rf"^M(?:{codes}) (?:T\d+ )?[SR](\d+)", text, re.MULTILINE)]


STAGING_NOZZLE_C = {70, 100, 130, 150, 170, 175, 210}


# Sane ranges, whatever the preset: (nozzle min, max), (bed min, max) in degrees C.
SANE_TEMPS = {
    "PLA": ((200, 230), (55, 65)),
    "PETG": ((230, 255), (80, 90)),
    "ABS": ((245, 260), (95, 110)),
    "ASA": ((250, 265), (95, 110)),
    "TPU": ((220, 245), (40, 60)),
}
CASES = [(m, mat) for m in MODELS.values() for mat in MATERIALS]


def _check_bambu_package(path: Path, model: PrinterModel) -> str:
    """The package opens as a zip with every required entry and a correct MD5; returns the G-code."""
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert set(REQUIRED_ENTRIES) <= set(zf.namelist()), sorted(zf.namelist())
        gcode = zf.read(PLATE_GCODE)
        assert zf.read(PLATE_GCODE + ".md5").decode().lower() == hashlib.md5(gcode).hexdigest()
        info = ET.fromstring(zf.read("Metadata/slice_info.config"))
        plate = {m.get("key"): m.get("value") for m in info.iter("metadata")}
        assert plate["printer_model_id"] == model.bambu_model_id
        settings = ET.fromstring(zf.read("Metadata/model_settings.config"))
        assert any(m.get("value") == PLATE_GCODE for m in settings.iter("metadata"))
    return gcode.decode()


def _check_temperatures(text: str, cfg: dict[str, str], material: str, bambu: bool = False) -> None:
    first, later = int(cfg["first_layer_temperature"]), int(cfg["temperature"])
    bed_first, bed_later = int(cfg["first_layer_bed_temperature"]), int(cfg["bed_temperature"])
    (lo, hi), (blo, bhi) = SANE_TEMPS[material]
    assert lo <= first <= hi and lo <= later <= hi, (material, first, later)
    assert blo <= bed_first <= bhi and blo <= bed_later <= bhi, (material, bed_first, bed_later)
    layer1 = text.index(";LAYER_CHANGE")
    start, body = text[:layer1], text[layer1:]
    # Heated and waited for before the first layer...
    assert re.search(rf"^M109 (T0 )?S{first}\b", start, re.MULTILINE), "no wait for the nozzle temperature"
    assert re.search(rf"^M190 [SR]{bed_first}\b", start, re.MULTILINE), "no wait for the bed temperature"
    # ...then the later-layer values once the first layer is down.
    if later != first:
        assert re.search(rf"^M104 S{later}\b", body, re.MULTILINE)
    if bed_later != bed_first:
        assert re.search(rf"^M140 S{bed_later}\b", body, re.MULTILINE)
    # Nothing else but 0 (off) and the staging temperatures: Bambu's 140 (homing, wiping,
    # levelling); on Prusa's printers the ooze-free bed-levelling ones (170, 175 for PETG, 210 for
    # FLEX), the idle ones while the bed heats (70-170) and the CORE One's 115 °C bed that warms
    # the chamber for ABS and ASA.
    staging = {140} if bambu else STAGING_NOZZLE_C
    assert set(_temps(text, "104|109")) <= {0, first, later} | staging
    assert set(_temps(text, "140|190")) <= {0, bed_first, bed_later} | (set() if bambu else {115})


@needs_slicer
@pytest.mark.parametrize(("model", "material"), CASES, ids=[f"{m.name}-{mat}" for m, mat in CASES])
def test_every_profile_slices_a_part_that_fits_its_printer(
    model: PrinterModel, material: str, part: Path, tmp_path: Path
) -> None:
    result = slice_mesh(part, model, tmp_path / f"block_{model.name}.gcode", material=material)
    assert result.gcode.name.endswith(model.output_suffix)
    if model.protocol == "bambu":
        text = _check_bambu_package(result.gcode, model)
        assert text == _gcode_text(result.gcode)
    else:
        text = result.gcode.read_text()

    # The model check the printer (or Bambu Studio) reads.
    if model.protocol == "bambu":
        config = text[text.index("; CONFIG_BLOCK_START") : text.index("; CONFIG_BLOCK_END")]
        assert f"; printer_model = {model.printer_model}\n" in config
        assert "M862.3" not in text  # Bambu firmware does not know it
    else:
        assert f'M862.3 P "{model.name}" ; printer model check' in text
        # and the nozzle check (the MINI's vendor start G-code has none)
        assert "M862.1 P0.4" in text or model.name == "MINI"

    # Every move on the bed, nothing above the build height. Bambu's start and end sequences also
    # go to the machine's places off the plate (purge chute, cutter, brush, exposed steel; checked
    # against Bambu's own in tests/test_bambu_fidelity.py), so there it is the print that is checked.
    bx, by, bz = model.bed
    margin = FRONT_MARGIN.get(model.name, 0.0)
    first_layer = text.index(";LAYER_CHANGE")
    printed = text[first_layer : text.index(";===== printfarm end")] if model.protocol == "bambu" else text
    moves = _moves(printed)
    assert len(moves) > 100
    assert all(-margin <= x <= bx and -margin <= y <= by and 0 <= z <= bz for x, y, z in moves), model.name
    assert all(0 <= x <= bx and 0 <= y <= by for x, y, _ in _moves(printed[printed.index(";LAYER_CHANGE") :]))

    cfg = flatten_profile(model, material)
    _check_temperatures(text, cfg, material, bambu=model.protocol == "bambu")

    # The parsed estimates.
    meta = result.meta
    assert meta.printer_model == model.name
    assert meta.filament_type == cfg["filament_type"]
    assert meta.layers == 15 == text.count(";LAYER_CHANGE")  # 3 mm at 0.2 mm
    assert meta.objects == 1
    assert meta.print_time_s is not None and 60 < meta.print_time_s < 30 * 60
    assert meta.filament_g is not None and 0.2 < meta.filament_g < 1.5
    assert meta.filament_m is not None and meta.filament_m == pytest.approx(meta.filament_mm / 1000, abs=1e-3)
    # The footer's own numbers, to the digit.
    footer_g = re.search(r"^; total filament used \[g\] = ([\d.]+)", text, re.MULTILINE)
    assert footer_g and meta.filament_g == float(footer_g.group(1))
    assert meta.bbox is not None
    assert [*meta.bbox[0], *meta.bbox[1]] == pytest.approx(
        [bx / 2 - 8, by / 2 - 5, 0, bx / 2 + 8, by / 2 + 5, 3]
    )


@needs_slicer
@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_every_quality_prints_at_its_layer_height(model: PrinterModel, part: Path, tmp_path: Path) -> None:
    layers = {}
    for quality in QUALITIES:
        result = slice_mesh(part, model, tmp_path / f"{quality}.gcode", quality=quality)
        text = _gcode_text(result.gcode)
        height = float(flatten_profile(model, "PLA", quality)["layer_height"])
        assert f"; layer_height = {height:g}\n" in text
        zs = [float(z) for z in re.findall(r"^;Z:([\d.]+)", text, re.MULTILINE)]
        assert zs[0] == pytest.approx(0.2) and zs[-1] == pytest.approx(3.0, abs=height / 2 + 1e-6)
        steps = {round(b - a, 3) for a, b in itertools.pairwise(zs[1:])}
        assert max(steps) == pytest.approx(height, abs=0.011), (quality, steps)
        assert result.meta.layers == len(zs)
        layers[quality] = len(zs)
    assert layers["draft"] < layers["standard"] < layers["fine"]


@needs_slicer
# TPU's volumetric cap: 1.2-1.35 mm3/s on the MINI and the MK3-family preset the A1 uses, 3 mm3/s
# in Prusa's FLEX preset for the MK4S (its direct drive), which the MK3 print speeds barely exceed.
@pytest.mark.parametrize(("name", "slower"), [("MINI", 1.3), ("MK4S", 1.1), ("A1", 1.3)])
def test_tpu_prints_slowly(name: str, slower: float, tmp_path: Path) -> None:
    cube = write_binary_stl(tmp_path / "c.stl", box_triangles((20, 20, 10)))
    times = {
        mat: slice_mesh(cube, MODELS[name], tmp_path / f"{mat}.gcode", material=mat).meta.print_time_s or 0
        for mat in ("PLA", "TPU")
    }
    assert times["TPU"] > slower * times["PLA"], times


@needs_slicer
def test_farm_slice_uses_the_cache_and_reports_errors(part: Path, tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()
    args = ["slice", str(part), "--printer-model", "a1mini", "--cache-dir", str(tmp_path / "c"), "--json"]
    first = runner.invoke(app, [*args, "-o", str(tmp_path / "one.gcode")])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["output"].endswith("one.gcode.3mf") and not doc["cached"] and doc["printer_model"] == "A1MINI"
    second = runner.invoke(app, [*args, "-o", str(tmp_path / "two.gcode.3mf")])
    again = json.loads(second.stdout)
    assert again["cached"] and again["print_time_s"] == doc["print_time_s"]
    assert Path(again["output"]).read_bytes() == Path(doc["output"]).read_bytes()

    bad = runner.invoke(
        app, ["slice", str(part), "--printer-model", "ender3", "-o", str(tmp_path / "x.gcode")]
    )
    assert bad.exit_code == 2 and "unknown printer model 'ender3'" in bad.stderr
    assert "Traceback" not in bad.output


@needs_slicer
def test_farm_slice_overrides_copies_and_json(tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()
    cube = write_binary_stl(tmp_path / "cube.stl", box_triangles((20, 20, 5)))
    base = ["slice", str(cube), "--printer-model", "MK4S", "--no-cache", "--json"]
    opts = ["--set", "layer_height=0.16", "--supports", "buildplate", "--brim", "3", "--infill", "30"]
    ok = runner.invoke(app, [*base, *opts, "--copies", "3", "-o", str(tmp_path / "three.gcode")])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["objects"] == 3 and doc["layers"] == 1 + round((5 - 0.2) / 0.16)
    assert doc["printer_model"] == "MK4S" and doc["filament_type"] == "PLA"
    assert doc["print_time_s"] > 0 and doc["filament_g"] > 0 and doc["filament_m"] > 0
    (x0, y0, z0), (x1, y1, z1) = doc["bbox"]
    assert (z0, z1) == (0, 5) and (x1 - x0) * (y1 - y0) >= 3 * 20 * 20
    assert "thumbnails" in doc
    text = Path(doc["output"]).read_text()
    for line in ("; layer_height = 0.16", "; brim_width = 3", "; fill_density = 30%"):
        assert line in text
    assert "; support_material_buildplate_only = 1" in text

    split = runner.invoke(app, [*base, "--copies", "200", "-o", str(tmp_path / "many.gcode")])
    assert split.exit_code == 1 and "Traceback" not in split.output
    err = json.loads(split.stdout)
    assert err["per_plate"] > 1 and sum(err["plates"]) == 200 and max(err["plates"]) == err["per_plate"]
    assert f"{err['per_plate']} fit per plate" in err["error"] and "MK4S bed (250 x 210 mm)" in err["error"]
    assert not (tmp_path / "many.gcode").exists()

    bad = runner.invoke(app, [*base, "--set", "layer_height", "-o", str(tmp_path / "x.gcode")])
    assert bad.exit_code == 2 and "--set wants KEY=VALUE" in bad.stderr  # a usage error
    bad = runner.invoke(app, [*base, "--supports", "tree", "-o", str(tmp_path / "x.gcode")])
    assert bad.exit_code == 1 and "supports must be one of none, buildplate, everywhere" in bad.stderr
