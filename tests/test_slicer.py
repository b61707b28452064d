"""The printer-model catalogue and the PrusaSlicer wrapper, against the real prusa-slicer."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from farm.core.print_options import print_options
from farm.core.printer_models import DEFAULT_MODEL, MATERIALS, MODELS, QUALITIES, PrinterModel, get_model
from farm.core.slice_error import SliceError
from workers.arrange import CopiesDontFit, copies_per_plate, plates_for
from workers.gcode_meta import GcodeMeta, count_layers, gcode_thumbnails, parse_duration, parse_gcode_meta
from workers.mesh_bbox import check_fits, mesh_bbox
from workers.prusaslicer import find_slicer, slicer_version
from workers.slice_cache import SliceCache
from workers.slicer import slice_mesh
from workers.slicer_profiles import find_bundle, flatten_profile, load_preset, write_profile

needs_slicer = pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")

Vec = tuple[float, float, float]

# --------------------------------------------------------------------------- test meshes


def box_triangles(size: Vec, origin: Vec = (0.0, 0.0, 0.0)) -> list[tuple[Vec, Vec, Vec]]:
    """The 12 triangles of a box, wound so their normals point outwards (as slicers expect)."""
    corners = [
        tuple(origin[i] + (size[i] if bit else 0.0) for i, bit in enumerate(bits))
        for bits in ((x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1))
    ]
    centre = [origin[i] + size[i] / 2 for i in range(3)]
    quads = [(0, 2, 6, 4), (1, 5, 7, 3), (0, 4, 5, 1), (2, 3, 7, 6), (0, 1, 3, 2), (4, 6, 7, 5)]
    tris = []
    for a, b, c, d in quads:
        for tri in ((a, b, c), (a, c, d)):
            p, q, r = (corners[i] for i in tri)
            n = _cross(_sub(q, p), _sub(r, p))
            outward = sum(n[i] * (p[i] - centre[i]) for i in range(3)) > 0
            tris.append((p, q, r) if outward else (p, r, q))
    return tris


def _sub(a: Sequence[float], b: Sequence[float]) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def write_binary_stl(path: Path, tris: list[tuple[Vec, Vec, Vec]]) -> Path:
    # The header starts with "solid" on purpose: real exporters do that and it must not fool the reader.
    data = [b"solid binary".ljust(80, b" "), struct.pack("<I", len(tris))]
    data += [struct.pack("<12fH", 0, 0, 0, *p, *q, *r, 0) for p, q, r in tris]
    path.write_bytes(b"".join(data))
    return path


def write_ascii_stl(path: Path, tris: list[tuple[Vec, Vec, Vec]]) -> Path:
    lines = ["solid box"]
    for tri in tris:
        lines += ["  facet normal 0 0 0", "    outer loop"]
        lines += [f"      vertex {x:e} {y:e} {z:e}" for x, y, z in tri]
        lines += ["    endloop", "  endfacet"]
    path.write_text("\n".join([*lines, "endsolid box", ""]))
    return path


def write_3mf(path: Path, size: Vec, item_transform: str, component_transform: str) -> Path:
    """A box as object 1, used through a component of object 2, which the build places."""
    verts = sorted({v for tri in box_triangles(size) for v in tri})
    index = {v: i for i, v in enumerate(verts)}
    vxml = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in verts)
    txml = "".join(
        f'<triangle v1="{index[p]}" v2="{index[q]}" v3="{index[r]}"/>' for p, q, r in box_triangles(size)
    )
    model = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<model unit="centimeter" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        f'<resources><object id="1" type="model"><mesh><vertices>{vxml}</vertices>'
        f"<triangles>{txml}</triangles></mesh></object>"
        f'<object id="2" type="model"><components>'
        f'<component objectid="1" transform="{component_transform}"/></components></object></resources>'
        f'<build><item objectid="2" transform="{item_transform}"/></build></model>'
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("3D/3dmodel.model", model)
    return path


@pytest.fixture(scope="module")
def cube20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_binary_stl(tmp_path_factory.mktemp("mesh") / "cube20.stl", box_triangles((20, 20, 20)))


# --------------------------------------------------------------------------- catalogue


def test_get_model_is_case_insensitive() -> None:
    assert get_model("mini") is MODELS["MINI"]
    assert get_model(" Mk3s ") is MODELS["MK3S"]
    assert get_model("MK4-does-not-exist") is None
    assert DEFAULT_MODEL in MODELS


@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_catalogue_offers_every_quality_and_material(model: PrinterModel) -> None:
    assert model.qualities == QUALITIES
    assert model.materials == MATERIALS
    assert model.name == model.name.upper()  # the string the firmware compares in M862.3


def _condition_holds(condition: str, cfg: dict[str, str]) -> bool:
    """Evaluate a PrusaSlicer `compatible_*_condition` (the subset Prusa's bundle uses)."""

    def lookup(name: str, index: int | None = None) -> object:
        if name == "num_extruders":
            return len(cfg["nozzle_diameter"].split(","))
        raw = cfg[name]
        if index is not None:
            raw = raw.split(",")[index]
        try:
            return float(raw)
        except ValueError:
            return raw.strip('"')

    def regex_match(value: object, pattern: str) -> bool:
        return re.fullmatch(pattern, str(value)) is not None

    expr = re.sub(
        r"([a-z_]+(?:\[\d+\])?)\s*=~\s*/([^/]*)/", lambda m: f"_re({m.group(1)}, {m.group(2)!r})", condition
    )
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    expr = re.sub(
        r"\b(?<!_)([a-z][a-z0-9_]*)(?:\[(\d+)\])?",
        lambda m: m.group(0) if m.group(1) in {"and", "or", "not"} else f"_v({m.group(1)!r}, {m.group(2)})",
        expr,
    )
    return bool(eval(expr, {"__builtins__": {}}, {"_v": lookup, "_re": regex_match}))


def _compatible(preset: dict[str, str], printer_name: str, cfg: dict[str, str]) -> bool:
    listed = [p.strip().strip('"') for p in preset.get("compatible_printers", "").split(";") if p.strip()]
    if listed:
        return printer_name in listed
    condition = preset.get("compatible_printers_condition", "").strip()
    return not condition or _condition_holds(condition, cfg)


def test_condition_checker_is_not_vacuous() -> None:
    mini = MODELS["MINI"]
    bundle = find_bundle(mini.bundle)
    printer = load_preset(bundle, "printer", mini.printer_preset)
    # The plain PETG preset excludes the MINI; the checker must see that.
    assert not _compatible(load_preset(bundle, "filament", "Prusament PETG"), mini.printer_preset, printer)
    assert _compatible(load_preset(bundle, "filament", "Prusament PETG @MINI"), mini.printer_preset, printer)


@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_catalogue_presets_exist_match_the_model_and_are_compatible(model: PrinterModel) -> None:
    bundle = find_bundle(model.bundle)
    printer = load_preset(bundle, "printer", model.printer_preset)
    x, y, _ = (f"{v:g}" for v in model.bed)
    assert printer["bed_shape"] == f"0x0,{x}x0,{x}x{y},0x{y}"
    assert float(printer["max_print_height"]) == model.bed[2]
    assert float(printer["nozzle_diameter"].split(",")[0]) == model.nozzle
    assert printer["printer_model"] == model.printer_model
    expected_type = {"PLA": "PLA", "PETG": "PETG", "ABS": "ABS", "ASA": "ASA", "TPU": "FLEX"}
    for quality, name in model.print_presets.items():
        print_ = load_preset(bundle, "print", name)
        assert _compatible(print_, model.printer_preset, printer), (quality, name)
        for material, fname in model.filament_presets.items():
            filament = load_preset(bundle, "filament", fname)
            assert filament["filament_type"] == expected_type[material], fname
            assert _compatible(filament, model.printer_preset, printer), (material, fname)
            prints_cond = filament.get("compatible_prints_condition", "").strip()
            assert not prints_cond or _condition_holds(prints_cond, {**printer, **print_}), (fname, name)


# --------------------------------------------------------------------------- flattening


@pytest.mark.parametrize(("model", "height"), [("MINI", "0.2"), ("MK3S", "0.2")])
def test_flatten_profile_real_bundle(model: str, height: str) -> None:
    m = MODELS[model]
    cfg = flatten_profile(m, "PLA")
    x, y, _ = (f"{v:g}" for v in m.bed)
    assert cfg["bed_shape"] == f"0x0,{x}x0,{x}x{y},0x{y}"
    assert cfg["printer_model"] == model
    assert cfg["layer_height"] == height
    assert cfg["temperature"] == "215"
    assert cfg["filament_settings_id"] == '"Prusament PLA"'
    assert not {"inherits", "compatible_printers_condition", "alias"} & cfg.keys()
    assert flatten_profile(m, "pla", "FINE")["layer_height"] == "0.15"  # choices are case-insensitive


def test_flatten_profile_follows_prusaslicer_inheritance_rules(tmp_path: Path) -> None:
    (tmp_path / "test.ini").write_text(
        "# comment\r\n"
        "[printer:*base*]\r\nbed_shape = 0x0,10x0,10x10,0x10\r\ncolour = base\r\nonly_base = 1\r\n"
        "[printer:*other*]\r\ncolour = other\r\nonly_other = 2\r\n"
        "[printer:P]\r\ninherits = *base*; *other*\r\nprinter_model = P\r\nalias = Pee\r\n"
        "[print:*q*]\r\nlayer_height = 0.3\r\ncolour = print\r\n"
        '[print:Q]\r\ninherits = *q*\r\ncompatible_printers_condition = printer_model=="P"\r\n'
        "[filament:F]\r\ntemperature = 200\r\nfilament_type = PLA\r\n"
    )
    model = dataclasses.replace(
        MODELS["MINI"],
        bundle="test.ini",
        printer_preset="P",
        print_presets={"standard": "Q"},
        filament_presets={"PLA": "F"},
    )
    cfg = flatten_profile(model, "PLA", overrides={"temperature": "205"}, bundle_dirs=[tmp_path])
    assert cfg["only_base"] == "1" and cfg["only_other"] == "2"
    assert cfg["colour"] == "print"  # print merged over printer
    assert load_preset(tmp_path / "test.ini", "printer", "P")["colour"] == "other"  # last parent wins
    assert cfg["temperature"] == "205"  # overrides win
    assert "alias" not in cfg and "inherits" not in cfg and "compatible_printers_condition" not in cfg
    out = write_profile(cfg, tmp_path / "flat.ini").read_text().splitlines()
    assert out == sorted(out) and "layer_height = 0.3" in out

    with pytest.raises(SliceError, match=r"no \[print:\*missing\*\] preset"):
        flatten_profile(
            dataclasses.replace(model, print_presets={"standard": "*missing*"}), bundle_dirs=[tmp_path]
        )


def test_unknown_material_and_quality_list_the_choices() -> None:
    with pytest.raises(SliceError, match=r"unknown material 'nylon' for the MINI; choose one of: PLA, PETG"):
        flatten_profile(MODELS["MINI"], "nylon")
    with pytest.raises(SliceError, match=r"unknown quality 'ultra'.*draft, standard, fine"):
        flatten_profile(MODELS["MK3S"], "PLA", "ultra")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"post_process": "/bin/sh -c 'rm -rf ~'"}, "cannot be set from a job"),
        ({"fill_density": "5%\nstart_gcode = M112"}, "must be one line"),
        ({"Fill Density": "5%"}, "is not a slicer setting name"),
    ],
)
def test_unsafe_overrides_are_refused(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SliceError, match=message):
        flatten_profile(MODELS["MINI"], "PLA", overrides=overrides)


# --------------------------------------------------------------------------- meshes and fit


def flat(bbox: tuple[Vec, Vec]) -> list[float]:
    return [*bbox[0], *bbox[1]]


def test_mesh_bbox_ascii_binary_and_3mf_agree(tmp_path: Path) -> None:
    tris = box_triangles((30.0, 12.5, 7.0), origin=(-5.0, 3.0, 1.0))
    expected = [-5.0, 3.0, 1.0, 25.0, 15.5, 8.0]
    binary = mesh_bbox(write_binary_stl(tmp_path / "b.stl", tris))
    assert flat(binary) == pytest.approx(expected)
    assert flat(mesh_bbox(write_ascii_stl(tmp_path / "a.stl", tris))) == pytest.approx(flat(binary))
    # 3MF in cm: a 3 x 1 x 0.5 cm box, moved by its component, turned 90 degrees about z by its item.
    path = write_3mf(
        tmp_path / "b.3mf",
        (3.0, 1.0, 0.5),
        item_transform="0 1 0 -1 0 0 0 0 1 10 0 0",
        component_transform="1 0 0 0 1 0 0 0 1 1 2 3",
    )
    # Component: x 1..4, y 2..3, z 3..3.5; then (x, y) -> (-y + 10, x): x 7..8, y 1..4 (cm).
    assert flat(mesh_bbox(path)) == pytest.approx([70.0, 10.0, 30.0, 80.0, 40.0, 35.0])
    scaled = write_3mf(
        tmp_path / "s.3mf", (3.0, 1.0, 0.5), "2 0 0 0 1 0 0 0 1 0 0 0", "1 0 0 0 1 0 0 0 1 1 2 3"
    )
    assert flat(mesh_bbox(scaled)) == pytest.approx([20.0, 20.0, 30.0, 80.0, 30.0, 35.0])


def test_mesh_bbox_rejects_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "empty.stl").write_bytes(b"")
    (tmp_path / "junk.stl").write_bytes(b"\x00" * 200)
    (tmp_path / "bad.3mf").write_bytes(b"not a zip")
    (tmp_path / "x.step").write_text("ISO-10303-21;")
    for name, message in [
        ("empty.stl", "is empty"),
        ("junk.stl", "is not an STL file"),
        ("bad.3mf", "not a readable 3MF"),
        ("x.step", "supported meshes are"),
    ]:
        with pytest.raises(SliceError, match=message):
            mesh_bbox(tmp_path / name)


def test_check_fits() -> None:
    mini = MODELS["MINI"]
    check_fits(((0, 0, 0), (180.00001, 180, 180)), mini)  # float32 noise on an exact fit
    with pytest.raises(SliceError) as err:
        check_fits(((-150, 0, 0), (150, 40, 20)), mini)
    assert str(err.value) == (
        "the part is 300.0 x 40.0 x 20.0 mm but the MINI bed is 180 x 180 x 180 mm; scale the part down "
        "or choose a printer model with a larger bed (farm profiles lists them)"
    )
    # Too tall: PrusaSlicer itself would slice this without a word.
    with pytest.raises(SliceError, match=r"20\.0 x 20\.0 x 200\.0 mm"):
        check_fits(((0, 0, 0), (20, 20, 200)), mini)
    check_fits(((0, 0, 0), (240, 200, 200)), MODELS["MK3S"])


# --------------------------------------------------------------------------- slicing


def _fake_slicer(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "slicer-ran"
    fake = tmp_path / "fake-slicer"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    fake.chmod(0o755)
    return fake, marker


def test_too_big_part_fails_before_the_slicer_runs(tmp_path: Path) -> None:
    mesh = write_binary_stl(tmp_path / "long.stl", box_triangles((300, 40, 20)))
    fake, marker = _fake_slicer(tmp_path)
    with pytest.raises(SliceError, match=r"300.0 x 40.0 x 20.0 mm but the MINI bed is 180 x 180 x 180 mm"):
        slice_mesh(mesh, MODELS["MINI"], tmp_path / "out.gcode", slicer=fake)
    assert not marker.exists()


def test_missing_mesh_and_missing_slicer(tmp_path: Path, cube20: Path) -> None:
    with pytest.raises(SliceError, match="does not exist or is not executable"):
        find_slicer(tmp_path / "nope")
    with pytest.raises(SliceError, match="does not exist or is not executable"):
        slice_mesh(cube20, MODELS["MINI"], tmp_path / "o.gcode", slicer=tmp_path / "nope")
    fake, _ = _fake_slicer(tmp_path)
    assert find_slicer(fake) == fake
    with pytest.raises(SliceError, match=r"the mesh .*missing\.stl does not exist"):
        slice_mesh(tmp_path / "missing.stl", MODELS["MINI"], tmp_path / "o.gcode", slicer=fake)


def _xy_moves(gcode: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float, bool]]]:
    """(x, y) of every G0/G1 before the first layer, and (x, y, extruding) from the first layer on."""
    start: list[tuple[float, float]] = []
    layers: list[tuple[float, float, bool]] = []
    x = y = 0.0
    in_layers = False
    with gcode.open() as f:
        for line in f:
            if line.startswith(";LAYER_CHANGE"):
                in_layers = True
            if not line.startswith(("G1 ", "G0 ")):
                continue
            code = line.split(";", 1)[0]
            mx, my, me = (re.search(rf"{a}(-?[\d.]+)", code) for a in "XYE")
            if not (mx or my):
                continue
            x = float(mx.group(1)) if mx else x
            y = float(my.group(1)) if my else y
            if in_layers:
                layers.append((x, y, bool(me and float(me.group(1)) > 0)))
            else:
                start.append((x, y))
    return start, layers


@needs_slicer
def test_slicer_version() -> None:
    assert re.match(r"2\.\d+\.\d+", slicer_version(find_slicer()))


@needs_slicer
# The vendor-bundle models in depth; tests/test_profiles.py slices every model, Bambu included.
@pytest.mark.parametrize("name", ["MINI", "MK3S"])
def test_slice_cube(name: str, cube20: Path, tmp_path: Path) -> None:
    model = MODELS[name]
    result = slice_mesh(cube20, model, tmp_path / "out" / f"cube-{name}.gcode")
    text = result.gcode.read_text()
    assert f'M862.3 P "{name}"' in text
    nozzle = {int(t) for t in re.findall(r"^M10[49] S(\d+)", text, re.MULTILINE)} - {0}
    assert 215 in nozzle and max(nozzle) <= 220, nozzle  # Prusament PLA
    assert re.search(r"^M190 S60", text, re.MULTILINE)
    assert "; print_settings_id = 0.20mm QUALITY @" in text

    meta = result.meta
    assert meta.printer_model == name
    assert meta.print_time_s is not None and 10 * 60 < meta.print_time_s < 60 * 60
    assert meta.filament_g is not None and 2 < meta.filament_g < 6  # 8 cm3 cube, 15% infill
    assert meta.filament_mm is not None and meta.filament_mm > 500
    assert meta.filament_cm3 is not None and meta.filament_cm3 > 1
    assert meta.layers == 100  # 20 mm at 0.2 mm
    assert meta.nozzle_diameter == 0.4 and meta.filament_type == "PLA"

    bx, by, _ = model.bed
    start, layers = _xy_moves(result.gcode)
    # The start G-code's purge line goes a few mm off the front edge, as the firmware allows.
    assert all(-5 <= x <= bx and -5 <= y <= by for x, y in start)
    assert all(0 <= x <= bx and 0 <= y <= by for x, y, _ in layers)
    # The cube itself (the last layer's extrusion) is centred on the bed and 20 mm wide.
    top = [(x, y) for x, y, e in layers[-400:] if e]
    xs, ys = [p[0] for p in top], [p[1] for p in top]
    assert min(xs) == pytest.approx(bx / 2 - 10, abs=0.5) and max(xs) == pytest.approx(bx / 2 + 10, abs=0.5)
    assert min(ys) == pytest.approx(by / 2 - 10, abs=0.5) and max(ys) == pytest.approx(by / 2 + 10, abs=0.5)


@needs_slicer
def test_overrides_reach_the_gcode_and_unknown_keys_are_named(cube20: Path, tmp_path: Path) -> None:
    mini = MODELS["MINI"]
    result = slice_mesh(cube20, mini, tmp_path / "o.gcode", material="PETG", overrides={"fill_density": "5%"})
    text = result.gcode.read_text()
    assert "; fill_density = 5%" in text and "; filament_type = PETG" in text
    # Prusament PETG @MINI: 240 for the first layer, 250 after.
    assert re.search(r"^M109 S240", text, re.MULTILINE) and re.search(r"^M104 S250", text, re.MULTILINE)
    with pytest.raises(SliceError, match="unknown slicer setting 'fil_density'; did you mean fill_density"):
        slice_mesh(cube20, mini, tmp_path / "o.gcode", overrides={"fil_density": "5%"})


@needs_slicer
def test_slicer_refusals_become_clear_errors(tmp_path: Path) -> None:
    # A model whose catalogue bed is bigger than its profile's: our check passes, PrusaSlicer aborts.
    liar = dataclasses.replace(MODELS["MINI"], bed=(400.0, 400.0, 400.0))
    mesh = write_binary_stl(tmp_path / "wide.stl", box_triangles((250, 20, 5)))
    stale = tmp_path / "o.gcode"
    stale.write_text("; an older result\n")
    with pytest.raises(SliceError, match=r"wide\.stl does not fit on the MINI bed .* once the slicer"):
        slice_mesh(mesh, liar, stale)
    assert not stale.exists()  # never left looking like this slice's output

    # Formats the wrapper does not pre-read go straight to PrusaSlicer; its complaint is passed on.
    (tmp_path / "empty.amf").write_text("")
    with pytest.raises(SliceError, match=r"exit code 1\): .*Loading of a model file failed") as err:
        slice_mesh(tmp_path / "empty.amf", MODELS["MINI"], tmp_path / "o.gcode")
    assert "Initializing StaticPrintConfigs" not in str(err.value)


@needs_slicer
def test_slicer_timeout(cube20: Path, tmp_path: Path) -> None:
    with pytest.raises(SliceError, match=r"did not finish within 0\.01 s"):
        slice_mesh(cube20, MODELS["MINI"], tmp_path / "t.gcode", timeout_s=0.01)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- G-code metadata


def test_parse_gcode_meta_from_head_and_tail(tmp_path: Path) -> None:
    layer = "".join(f"G1 X{i % 50}.5 Y{i % 40}.25 E0.0123\n" for i in range(400))
    body = "".join(f";LAYER_CHANGE\n;Z:{(n + 1) * 0.2:.1f}\n{layer}" for n in range(250))  # ~5 MB
    footer = (
        "; filament used [mm] = 1000.5, 200.25\n"
        "; filament used [cm3] = 2.4, 0.5\n"
        "; filament used [g] = 3.0, 0.6\n"
        "; total filament used [g] = 3.61\n"
        "; estimated printing time (normal mode) = 1d 2h 3m 4s\n"
        "; prusaslicer_config = begin\n"
        "; before_layer_gcode = ;BEFORE_LAYER_CHANGE\\n;LAYER_CHANGE\\n\n"
        "; filament_type = PETG;PLA\n"
        "; nozzle_diameter = 0.6,0.6\n"
        "; printer_model = XL\n"
        "; prusaslicer_config = end\n"
    )
    path = tmp_path / "big.gcode"
    path.write_text(f'; generated by PrusaSlicer\nM862.3 P "XL" ; printer model check\n{body}{footer}')
    assert path.stat().st_size > 1_000_000
    meta = parse_gcode_meta(path)
    assert meta.printer_model == "XL"
    assert meta.print_time_s == 93784
    assert meta.filament_mm == pytest.approx(1200.75)
    assert meta.filament_cm3 == pytest.approx(2.9)
    assert meta.filament_g == pytest.approx(3.61)  # the total, not the sum of rounded parts
    assert meta.nozzle_diameter == 0.6 and meta.filament_type == "PETG;PLA"
    assert meta.layers == 250
    assert count_layers(path, chunk=7) == 250  # markers split across chunk edges count once
    assert parse_gcode_meta(path, layers=False).layers is None

    # Without a total line (older or foreign slicers) the per-extruder values add up.
    short = tmp_path / "short.gcode"
    short.write_text("; filament used [g] = 3.0, 0.6\n; estimated printing time (silent mode) = 5m\n")
    assert parse_gcode_meta(short).filament_g == pytest.approx(3.6)
    assert parse_gcode_meta(short).print_time_s == 300


def test_parse_gcode_meta_of_foreign_gcode(tmp_path: Path) -> None:
    path = tmp_path / "plain.gcode"
    path.write_text("G28\nG1 X10 Y10\n")
    assert parse_gcode_meta(path) == GcodeMeta()  # all unknown, and no exception
    assert parse_duration("2h 5s") == 7205


# --------------------------------------------------------------------------- overrides, crashes


def test_print_options_map_to_slicer_settings() -> None:
    assert print_options(infill="20") == {"fill_density": "20%"}
    assert print_options(infill="7.5%")["fill_density"] == "7.5%"
    assert print_options(supports="buildplate") == {
        "support_material": "1",
        "support_material_auto": "1",
        "support_material_buildplate_only": "1",
    }
    assert print_options(supports="None")["support_material"] == "0"
    assert print_options(brim=5) == {"brim_width": "5", "brim_type": "outer_only"}
    assert print_options(brim=0)["brim_type"] == "no_brim"
    assert print_options() == {}
    for kwargs, message in [
        ({"infill": "lots"}, "infill must be a percentage"),
        ({"infill": "120%"}, "infill must be a percentage"),
        ({"supports": "tree"}, "supports must be one of none, buildplate, everywhere"),
        ({"brim": -1.0}, "brim width is in mm"),
    ]:
        with pytest.raises(SliceError, match=message):
            print_options(**kwargs)  # type: ignore[arg-type]


def _first_layer_extent(text: str) -> tuple[float, float]:
    """Width in x and y of what the first layer extrudes (skirt and brim included)."""
    first = text.index(";LAYER_CHANGE")
    layer = text[first : text.index(";LAYER_CHANGE", first + 1)]
    xs, ys = [], []
    x = y = 0.0
    for line in layer.splitlines():
        if line.startswith("G1 "):
            code = line.split(";", 1)[0]
            mx, my, me = (re.search(rf"{a}(-?[\d.]+)", code) for a in "XYE")
            x, y = float(mx.group(1)) if mx else x, float(my.group(1)) if my else y
            if me and float(me.group(1)) > 0 and (mx or my):
                xs.append(x)
                ys.append(y)
    return max(xs) - min(xs), max(ys) - min(ys)


@needs_slicer
def test_supports_brim_and_set_reach_the_gcode(tmp_path: Path) -> None:
    # A post with a 30 mm arm at the top: the arm overhangs and needs support.
    tris = box_triangles((6, 6, 12), origin=(0, 0, 0)) + box_triangles((30, 6, 3), origin=(0, 0, 12))
    mesh = write_binary_stl(tmp_path / "arm.stl", tris)
    mini = MODELS["MINI"]
    no_support = {**print_options(supports="none"), "layer_height": "0.16"}
    plain = slice_mesh(mesh, mini, tmp_path / "plain.gcode", overrides=no_support)
    text = plain.gcode.read_text()
    assert ";TYPE:Support material" not in text and "; support_material = 0" in text
    # --set layer_height=0.16: a 0.2 mm first layer, then 0.16 mm steps up to 15 mm.
    assert "; layer_height = 0.16" in text
    assert plain.meta.layers == 1 + round((15 - 0.2) / 0.16)
    supported = slice_mesh(
        mesh, mini, tmp_path / "sup.gcode", overrides=print_options(supports="everywhere", infill=40)
    )
    text = supported.gcode.read_text()
    assert ";TYPE:Support material" in text
    assert "; support_material = 1" in text and "; fill_density = 40%" in text
    # The brim adds about 5 mm on every side of the first layer (skirt included in both).
    with_brim = {**no_support, **print_options(brim=5)}
    brim = slice_mesh(mesh, mini, tmp_path / "brim.gcode", overrides=with_brim)
    assert "; brim_width = 5" in brim.gcode.read_text()
    (w0, d0), (w1, d1) = (
        _first_layer_extent(plain.gcode.read_text()),
        _first_layer_extent(brim.gcode.read_text()),
    )
    assert w1 - w0 == pytest.approx(9, abs=2) and d1 - d0 == pytest.approx(9, abs=2)


@needs_slicer
def test_settings_the_slicer_refuses_are_named(cube20: Path, tmp_path: Path) -> None:
    mini = MODELS["MINI"]
    with pytest.raises(SliceError, match=r"refused the settings: Invalid value .* layer_height: abc"):
        slice_mesh(cube20, mini, tmp_path / "a.gcode", overrides={"layer_height": "abc"})
    # PrusaSlicer swaps an unreadable boolean for a default with only a warning; the wrapper does not.
    with pytest.raises(SliceError, match=r"did not accept the setting support_material=maybe \(it used 0\)"):
        slice_mesh(cube20, mini, tmp_path / "b.gcode", overrides={"support_material": "maybe"})
    with pytest.raises(SliceError, match=r"exit code 1\): Layer height can't be greater than nozzle"):
        slice_mesh(cube20, mini, tmp_path / "c.gcode", overrides={"layer_height": "5"})
    assert list(tmp_path.iterdir()) == []


def _crashing_slicer(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / "crashing-slicer"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # The binary itself dies of a signal: Python sees -N.
        ('echo "Segmentation fault" >&2\nkill -SEGV $$', r"crashed \(SIGSEGV, exit code -11\)"),
        ("kill -KILL $$", r"crashed \(SIGKILL, exit code -9\).*out of memory"),
        # Through a wrapper script (AppImage, flatpak): 128 + N.
        ("echo 'what():  std::bad_alloc' >&2\nexit 134", r"crashed \(SIGABRT, exit code 134\) on cube20"),
        ("echo 'No such file: x' >&2\nexit 1", r"failed on cube20\.stl \(exit code 1\): No such file: x"),
    ],
)
def test_slicer_crashes_become_clear_errors(cube20: Path, tmp_path: Path, body: str, message: str) -> None:
    fake = _crashing_slicer(tmp_path, body)
    out = tmp_path / "o.gcode"
    with pytest.raises(SliceError, match=message):
        slice_mesh(cube20, MODELS["MINI"], out, slicer=fake)
    assert not out.exists()


# --------------------------------------------------------------------------- copies


def _labels(text: str) -> set[str]:
    return set(re.findall(r"^; printing object (.+)$", text, re.MULTILINE))


@needs_slicer
@pytest.mark.parametrize("name", ["MINI", "X1C"])
def test_copies_that_fit_share_one_plate(name: str, tmp_path: Path) -> None:
    model = MODELS[name]
    cube = write_binary_stl(tmp_path / "cube.stl", box_triangles((15, 15, 4)))
    result = slice_mesh(cube, model, tmp_path / "four.gcode", copies=4)
    text = result.plain_gcode.read_text() if result.plain_gcode else ""
    assert result.meta.objects == 4 and len(_labels(text)) == 4
    bx, by, _ = model.bed
    first = text.index(";LAYER_CHANGE")
    # The print, that is: Bambu's end sequence parks over the purge chute, off the plate.
    printed = tmp_path / "printed.gcode"
    printed.write_text(text.split(";===== printfarm end", 1)[0])
    moves = [(x, y) for x, y, _ in _xy_moves(printed)[1]]
    assert all(0 <= x <= bx and 0 <= y <= by for x, y in moves)
    assert text[first:].count(";LAYER_CHANGE") == result.meta.layers == 20
    (x0, y0, z0), (x1, y1, z1) = result.meta.bbox or ((0, 0, 0), (0, 0, 0))
    assert x0 > 0 and x1 < bx and y0 > 0 and y1 < by and (z0, z1) == (0, 4)
    # Four 15 mm parts side by side, with the slicer's spacing between them.
    assert (x1 - x0) * (y1 - y0) >= 4 * 15 * 15
    single = slice_mesh(cube, model, tmp_path / "one.gcode")
    assert result.meta.filament_g == pytest.approx(4 * (single.meta.filament_g or 0), rel=0.1)


@needs_slicer
def test_copies_that_do_not_fit_say_how_many_do(tmp_path: Path) -> None:
    big = write_binary_stl(tmp_path / "big.stl", box_triangles((100, 70, 5)))
    mini, xl = MODELS["MINI"], MODELS["XL"]
    out = tmp_path / "o.gcode"
    with pytest.raises(CopiesDontFit) as err:
        slice_mesh(big, mini, out, copies=3)
    assert err.value.per_plate == 2 and err.value.plates == [2, 1]
    assert str(err.value) == (
        "3 copies of big.stl (100.0 x 70.0 mm each) do not fit on one MINI bed (180 x 180 mm): "
        "2 fit per plate, so print them as 2 plates (2 + 1 copies)"
    )
    assert not out.exists()
    # The split is exact: the per-plate number fits, one more does not.
    per_plate = copies_per_plate(big, xl, 20)
    assert 1 < per_plate < 20
    assert copies_per_plate(big, xl, per_plate) == per_plate
    assert copies_per_plate(big, xl, per_plate + 1) == per_plate
    result = slice_mesh(big, xl, tmp_path / "xl.gcode", copies=per_plate, quality="draft")
    assert result.meta.objects == per_plate
    assert plates_for(20, per_plate)[0] == per_plate and sum(plates_for(20, per_plate)) == 20


@needs_slicer
def test_copies_are_part_of_the_cache_key(cube20: Path, tmp_path: Path) -> None:
    cache = SliceCache(tmp_path / "cache")
    one = slice_mesh(cube20, MODELS["MINI"], tmp_path / "1.gcode", cache=cache)
    two = slice_mesh(cube20, MODELS["MINI"], tmp_path / "2.gcode", copies=2, cache=cache)
    again = slice_mesh(cube20, MODELS["MINI"], tmp_path / "3.gcode", copies=2, cache=cache)
    assert not two.cached and again.cached and one.cache_key != two.cache_key
    assert (one.meta.objects, two.meta.objects, again.meta.objects) == (1, 2, 2)


# --------------------------------------------------------------------------- thumbnails


@needs_slicer
def test_the_cad_preview_becomes_a_plain_gcode_thumbnail(tmp_path: Path, cube20: Path) -> None:
    """PrusaSlicer 2.5 makes no thumbnail headless: the CAD preview goes in, as PrusaSlicer writes one."""
    from farm.core.mesh import png_bytes, read_stl, render

    png = png_bytes(render(read_stl(cube20), 96))
    result = slice_mesh(cube20, MODELS["MINI"], tmp_path / "thumb.gcode", thumbnail_png=png)
    assert result.meta.thumbnails == ["96x96"]
    thumbs = gcode_thumbnails(result.gcode)
    assert [(t.width, t.height, t.format, t.data) for t in thumbs] == [(96, 96, "png", png)]
    text = result.gcode.read_text()
    assert text.startswith("; generated by PrusaSlicer")  # still the first line
    assert 'M862.3 P "MINI"' in text[: 64 * 1024]  # the firmware's model check is still near the top
    plain = slice_mesh(cube20, MODELS["MINI"], tmp_path / "plain.gcode")
    assert plain.meta.thumbnails is None and gcode_thumbnails(plain.gcode) == []
