"""The Bambu .gcode.3mf container (protocols.md A.9) and the slice cache, without the slicer."""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from farm.core.printer_models import MODELS
from farm.core.slice_error import SliceError
from workers.bambu3mf import (
    MODEL_SETTINGS,
    PLATE_GCODE,
    PLATE_PNG,
    REQUIRED_ENTRIES,
    PlateInfo,
    package_gcode,
)
from workers.gcode_meta import GcodeMeta, gcode_thumbnails, parse_gcode_meta, parse_sliced_file
from workers.plate_image import png_size
from workers.slice_cache import SliceCache, cache_key
from workers.slicer import output_paths, slice_mesh
from workers.slicer_profiles import flatten_profile

BODY = ";LAYER_CHANGE\nG1 X10 Y10 E1\n;LAYER_CHANGE\nG1 X20 Y10 E1\n; prusaslicer_config = begin\n"


def _package(tmp_path: Path, model_id: str = "C12") -> Path:
    gcode = tmp_path / "p.gcode"
    gcode.write_text(BODY)
    info = PlateInfo("Bambu Lab P1S", model_id, 0.4, 754, 4.13, 1384.5, "PETG", 2, 0.4)
    return package_gcode(
        gcode, tmp_path / "p.gcode.3mf", info, {"nozzle_diameter": "0.4", "temperature": "240"}
    )


def test_package_has_every_entry_and_a_correct_md5(tmp_path: Path) -> None:
    with zipfile.ZipFile(_package(tmp_path)) as zf:
        assert zf.testzip() is None
        assert set(REQUIRED_ENTRIES) <= set(zf.namelist())
        gcode = zf.read(PLATE_GCODE)
        assert zf.read(PLATE_GCODE + ".md5").decode() == hashlib.md5(gcode).hexdigest().upper()
        text = gcode.decode()
        assert text.startswith("; HEADER_BLOCK_START\n") and "; total layer number: 2\n" in text
        assert "; printer_model = Bambu Lab P1S\n; nozzle_diameter = 0.4\n" in text
        assert text.rstrip().endswith("; EXECUTABLE_BLOCK_END") and BODY in text
        types = ET.fromstring(zf.read("[Content_Types].xml"))
        exts = {t.get("Extension"): t.get("ContentType") for t in types}
        assert exts["gcode"] == "text/x.gcode" and "rels" in exts and "model" in exts
        rels = ET.fromstring(zf.read("Metadata/_rels/model_settings.config.rels"))
        assert [(r.get("Target"), r.get("Type")) for r in rels] == [
            ("/Metadata/plate_1.gcode", "http://schemas.bambulab.com/package/2021/gcode")
        ]
        assert ET.fromstring(zf.read("_rels/.rels"))[0].get("Target") == "/3D/3dmodel.model"
        settings = {
            m.get("key"): m.get("value")
            for m in ET.fromstring(zf.read("Metadata/model_settings.config")).iter("metadata")
        }
        assert settings["gcode_file"] == PLATE_GCODE
        info = ET.fromstring(zf.read("Metadata/slice_info.config"))
        plate = {m.get("key"): m.get("value") for m in info.iter("metadata")}
        assert (
            plate["printer_model_id"] == "C12" and plate["prediction"] == "754" and plate["weight"] == "4.13"
        )
        filament = info.find("plate/filament")
        assert filament is not None and filament.get("type") == "PETG" and filament.get("used_m") == "1.38"
        assert ET.fromstring(zf.read("3D/3dmodel.model")).find(".//{*}triangle") is not None


def test_presliced_3mf_is_parsed_and_a_damaged_one_refused(tmp_path: Path) -> None:
    meta = parse_sliced_file(_package(tmp_path))
    assert meta.printer_model == "P1S"  # from the CONFIG block, mapped to the catalogue name
    assert (meta.print_time_s, meta.filament_g, meta.filament_mm, meta.layers) == (754, 4.13, 1384.5, 2)

    damaged = tmp_path / "bad.gcode.3mf"
    with zipfile.ZipFile(tmp_path / "p.gcode.3mf") as src, zipfile.ZipFile(damaged, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b"X20", b"X21") if name == PLATE_GCODE else data)
    with pytest.raises(SliceError, match="does not match its MD5"):
        parse_sliced_file(damaged)
    (tmp_path / "junk.gcode.3mf").write_bytes(b"no zip")
    with pytest.raises(SliceError, match="not a readable"):
        parse_sliced_file(tmp_path / "junk.gcode.3mf")


def test_bare_bambu_zip_falls_back_to_the_model_id(tmp_path: Path) -> None:
    path = tmp_path / "bare.gcode.3mf"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(PLATE_GCODE, "; total estimated time: 1h 2m\nG1 X1\n")
        zf.writestr(
            "Metadata/slice_info.config",
            '<config><plate><metadata key="printer_model_id" value="N1"/></plate></config>',
        )
    meta = parse_sliced_file(path)
    assert meta.printer_model == "A1MINI" and meta.print_time_s == 3720


def test_output_paths() -> None:
    x1c, mini = MODELS["X1C"], MODELS["MINI"]
    assert output_paths(Path("a/j.gcode"), x1c) == (Path("a/j.gcode"), Path("a/j.gcode.3mf"))
    assert output_paths(Path("j.gcode.3mf"), x1c) == (Path("j.gcode"), Path("j.gcode.3mf"))
    assert output_paths(Path("j.gcode"), mini) == (Path("j.gcode"), Path("j.gcode"))


def test_slice_cache_round_trip_and_key(tmp_path: Path) -> None:
    mesh = tmp_path / "m.stl"
    mesh.write_bytes(b"mesh-1")
    key = cache_key(mesh, "layer_height = 0.2\n", "2.5.0")
    assert key != cache_key(mesh, "layer_height = 0.3\n", "2.5.0")
    assert key != cache_key(mesh, "layer_height = 0.2\n", "2.6.0")
    mesh2 = tmp_path / "m2.stl"
    mesh2.write_bytes(b"mesh-2")
    assert key != cache_key(mesh2, "layer_height = 0.2\n", "2.5.0")

    cache = SliceCache(tmp_path / "cache")
    assert cache.get(key) is None
    gcode = tmp_path / "x.gcode"
    gcode.write_text("G1 X1\n")
    meta = GcodeMeta(printer_model="MINI", print_time_s=60, bbox=((1.0, 2.0, 0.0), (3.0, 4.0, 5.0)))
    cache.put(key, {"gcode": gcode, "send": gcode}, meta.to_json())
    gcode.write_text("changed\n")  # the cache holds a copy
    hit = cache.get(key)
    assert hit is not None and hit.files["gcode"].read_text() == "G1 X1\n"
    assert GcodeMeta.from_json(hit.meta) == meta
    hit.files["send"].unlink()
    assert cache.get(key) is None  # an incomplete entry is a miss
    with pytest.raises(ValueError):
        cache.get("../../etc")


# A 1x1 PNG: what a G-code thumbnail block carries, base64 in comment lines.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_gcode_thumbnails_are_read(tmp_path: Path) -> None:
    b64 = base64.b64encode(PNG_1X1).decode()
    path = tmp_path / "t.gcode"
    path.write_text(
        "; generated by PrusaSlicer\n;\n"
        f"; thumbnail begin 1x1 {len(b64)}\n; {b64[:40]}\n; {b64[40:]}\n; thumbnail end\n;\n"
        f"; thumbnail_JPG begin 2x2 8\n; AAAAAAAA\n; thumbnail_JPG end\nG28\n"
    )
    thumbs = gcode_thumbnails(path)
    assert [(t.format, t.width, t.height) for t in thumbs] == [("png", 1, 1), ("jpg", 2, 2)]
    assert thumbs[0].data == PNG_1X1
    assert parse_gcode_meta(path).thumbnails == ["1x1", "2x2"]
    (tmp_path / "none.gcode").write_text("G28\n")
    assert gcode_thumbnails(tmp_path / "none.gcode") == []


@pytest.mark.skipif(shutil.which("prusa-slicer") is None, reason="prusa-slicer not installed")
def test_a_thumbnail_in_the_gcode_becomes_plate_1_png(tmp_path: Path) -> None:
    """PrusaSlicer 2.5 renders no thumbnails headless (its CLI has no offscreen OpenGL), so the
    block is put in through the start G-code: the real slice -> package path then carries it."""
    from tests.test_slicer import box_triangles, write_binary_stl

    b64 = base64.b64encode(PNG_1X1).decode()
    x1c = MODELS["X1C"]
    start = flatten_profile(x1c)["start_gcode"]
    block = f"; thumbnail begin 1x1 {len(b64)}\\n; {b64}\\n; thumbnail end\\n"
    # (16 mm: a box of 10s and 2s is all ASCII-range bytes, which admesh reads as an ASCII STL)
    cube = write_binary_stl(tmp_path / "c.stl", box_triangles((16, 16, 2)))
    result = slice_mesh(cube, x1c, tmp_path / "c.gcode.3mf", overrides={"start_gcode": block + start})
    assert result.meta.thumbnails == ["1x1"]
    with zipfile.ZipFile(result.gcode) as zf:
        assert zf.read(PLATE_PNG) == PNG_1X1
        settings = {
            m.get("key"): m.get("value") for m in ET.fromstring(zf.read(MODEL_SETTINGS)).iter("metadata")
        }
        assert settings["thumbnail_file"] == PLATE_PNG
    # Without one (what PrusaSlicer 2.5 writes), the plate picture is drawn from the G-code.
    plain = slice_mesh(cube, x1c, tmp_path / "p.gcode.3mf")
    assert plain.meta.thumbnails is None
    with zipfile.ZipFile(plain.gcode) as zf:
        drawn = zf.read(PLATE_PNG)
        assert drawn != PNG_1X1 and png_size(drawn) == (512, 512)
        assert png_size(zf.read("Metadata/plate_1_small.png")) == (128, 128)
