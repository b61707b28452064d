"""Every printer model `farm profiles` lists slices a real part into G-code that printer can run."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from farm.commands import slicing
from farm.printer_models import MODELS, PrinterModel, model_for_gcode
from tests.test_slicer import box_triangles, write_binary_stl
from workers.bambu3mf import PLATE_GCODE
from workers.slicer import flatten_profile, slice_mesh

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")

# The vendor start G-code of these two purges a few mm in front of the bed, which their
# firmware allows; our own profiles keep every move on the printable area.
FRONT_MARGIN = {"MINI": 5.0, "MK3S": 5.0}


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


def test_gcode_names_map_back_to_the_catalogue() -> None:
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
    return [int(t) for t in re.findall(rf"^M(?:{codes}) [SR](\d+)", text, re.MULTILINE)]


@needs_slicer
@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_every_profile_slices_a_part_that_fits_its_printer(
    model: PrinterModel, part: Path, tmp_path: Path
) -> None:
    result = slice_mesh(part, model, tmp_path / f"block_{model.name}.gcode")
    assert result.gcode.name.endswith(model.output_suffix)
    text = _gcode_text(result.gcode)

    # The model check the printer (or Bambu Studio) reads.
    if model.protocol == "bambu":
        config = text[text.index("; CONFIG_BLOCK_START") : text.index("; CONFIG_BLOCK_END")]
        assert f"; printer_model = {model.printer_model}\n" in config
        assert "M862.3" not in text  # Bambu firmware does not know it
    else:
        assert f'M862.3 P "{model.name}" ; printer model check' in text

    # Every move on the bed, nothing above the build height.
    bx, by, bz = model.bed
    margin = FRONT_MARGIN.get(model.name, 0.0)
    moves = _moves(text)
    assert len(moves) > 100
    assert all(-margin <= x <= bx and -margin <= y <= by and 0 <= z <= bz for x, y, z in moves), model.name
    first_layer = text.index(";LAYER_CHANGE")
    assert all(0 <= x <= bx and 0 <= y <= by for x, y, _ in _moves(text[first_layer:]))

    # Temperatures of the PLA preset: bed 60, nozzle 215, nothing hotter.
    cfg = flatten_profile(model, "PLA")
    nozzle = set(_temps(text, "104|109")) - {0}
    assert int(cfg["first_layer_temperature"]) in nozzle and max(nozzle) <= int(cfg["temperature"]) + 5
    assert re.search(rf"^M190 S{cfg['first_layer_bed_temperature']}\b", text, re.MULTILINE)
    assert set(_temps(text, "140|190")) <= {0, 60}

    # The parsed estimates.
    meta = result.meta
    assert meta.printer_model == model.name
    assert meta.layers == 15  # 3 mm at 0.2 mm
    assert meta.print_time_s is not None and 60 < meta.print_time_s < 20 * 60
    assert meta.filament_g is not None and 0.2 < meta.filament_g < 1.5
    assert meta.filament_m is not None and meta.filament_m == pytest.approx(meta.filament_mm / 1000, abs=1e-3)
    assert meta.bbox is not None
    assert [*meta.bbox[0], *meta.bbox[1]] == pytest.approx(
        [bx / 2 - 8, by / 2 - 5, 0, bx / 2 + 8, by / 2 + 5, 3]
    )


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
    assert bad.exit_code == 1 and "unknown printer model 'ender3'" in bad.stderr
    assert "Traceback" not in bad.output
