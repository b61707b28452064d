"""CAD outputs (issue #3): mesh checks, PNG previews, STEP on request and several objects per build,
through the real sandbox, real build123d and the real PrusaSlicer CLI."""

from __future__ import annotations

import io
import re
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.core.mesh import MeshProblem, check_mesh, inspect_mesh, png_bytes, read_stl, render
from farm.core.printer_models import get_model
from workers.bambu3mf import PLATE_PNG
from workers.cad_cache import CadCache, cached_build
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest, CadResult
from workers.gcode_meta import gcode_thumbnails
from workers.mesh_bbox import count_3mf_items
from workers.plate_image import png_size
from workers.slicer import slice_mesh

pytestmark = pytest.mark.timeout(180)

# A box with its top face left out: OCCT makes a "solid" of the open shell, and its mesh has a hole.
OPEN_BOX = """\
from build123d import Box, Shell, Solid

result = Solid(Shell(Box(10, 10, 10).faces()[:-1]))
"""
FLAT = """\
from build123d import Rectangle, Shell, Solid

result = Solid(Shell([Rectangle(10, 10).faces()[0]]))
"""
TALL = "from build123d import Cylinder\n\nresult = Cylinder(4, 40)\n"
WIDE = "from build123d import Box\n\nresult = Box(40, 40, 3)\n"
# A box and its lid, shown as designed: the lid sits on the box. Printed, they go side by side.
BOX_AND_LID = """\
from build123d import Box, Cylinder, Pos
from ocp_vscode import show

box = Box(20, 20, 10)
lid = Pos(0, 0, 6) * Cylinder(8, 2)
show(box, lid, names=["box", "lid"])
"""
LIST_OF_TWO = """\
from build123d import Box, Pos


def pair(gap: float = 5.0):
    return [Box(10, 10, 4), Pos(10 + gap, 0, 0) * Box(10, 10, 4)]
"""
# One BuildPart holding two solids that do not touch: a Part (a Compound) of two solids.
TWO_IN_ONE_PART = """\
from build123d import Box, BuildPart, Locations


def tray():
    with BuildPart() as p:
        Box(10, 10, 10)
        with Locations((30, 0, 0)):
            Box(10, 10, 5)
    return p.part
"""


@pytest.fixture
def runner(cad_runner: CadRunner) -> CadRunner:
    return cad_runner  # one warm fork server for the whole session (tests/conftest.py)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def build(runner: CadRunner, folder: Path, text: str, **kw: object) -> CadResult:
    source = write(folder, "part.py", text)
    return runner.build(CadRequest(source=source, outdir=folder / "out", **kw))  # type: ignore[arg-type]


def fails(runner: CadRunner, folder: Path, text: str) -> CadError:
    with pytest.raises(CadError) as caught:
        build(runner, folder, text)
    return caught.value


def size(result: CadResult) -> tuple[float, float, float]:
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    return (round(x1 - x0, 6), round(y1 - y0, 6), round(z1 - z0, 6))


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    image.load()  # Pillow checks every chunk's CRC and the zlib stream here
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


def build_items(threemf: Path) -> list[str]:
    with zipfile.ZipFile(threemf) as zf:
        model = zf.read("3D/3dmodel.model").decode()
    return re.findall(r"<item [^>]*>", model)


# --------------------------------------------------------------------------------------------------
# Mesh checks


def test_a_good_part_passes_the_checks_and_reports_them(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, tmp_path, WIDE)
    mesh = result.mesh
    assert mesh["triangles"] == len(read_stl(result.stl)) > 0
    assert mesh["open_edges"] == 0 and mesh["nonmanifold_edges"] == 0
    assert mesh["bbox"] == [[-20.0, -20.0, -1.5], [20.0, 20.0, 1.5]]
    assert mesh["check_ms"] >= 0 and mesh["preview_ms"] > 0


def test_an_open_shell_fails_with_its_open_edges_counted(runner: CadRunner, tmp_path: Path) -> None:
    error = fails(runner, tmp_path, OPEN_BOX)
    assert error.kind == "mesh"
    found = re.fullmatch(
        r"the mesh has (\d+) open edges: the shape is not a closed solid; check for (.+)",
        error.message,
    )
    assert found and int(found[1]) > 0, error.message
    assert "faces that are not part of a solid" in found[2]


def test_a_flat_solid_fails_as_having_no_thickness(runner: CadRunner, tmp_path: Path) -> None:
    error = fails(runner, tmp_path, FLAT)
    assert error.kind == "mesh"
    assert error.message.startswith("the part is 0 mm thick along Z (size 10 x 10 x 0 mm)")
    assert "extrude or thicken it" in error.message


def tetrahedron() -> np.ndarray:
    a, b, c, d = [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]
    return np.array([[a, c, b], [a, b, d], [b, c, d], [a, d, c]], dtype=np.float32)


def test_edge_counting_on_hand_made_meshes() -> None:
    closed = tetrahedron()
    assert inspect_mesh(closed).open_edges == 0
    assert inspect_mesh(closed[:3]).open_edges == 3  # one face missing: its three edges are open
    # Two tetrahedra meeting at one corner: both closed, nothing shared but a vertex.
    report = check_mesh(np.concatenate([closed, closed * np.float32(-1)]))
    assert report.open_edges == 0 and report.nonmanifold_edges == 0
    # Mirrored through z = 0, the second shares the face a-b-c: closed, but its edges have four triangles.
    mirrored = closed.copy()
    mirrored[..., 2] *= -1
    mirrored = mirrored[:, ::-1]  # keep the winding outward
    report = inspect_mesh(np.concatenate([closed, mirrored]))
    assert report.open_edges == 0 and report.nonmanifold_edges == 3


def test_empty_and_non_finite_meshes_are_refused() -> None:
    with pytest.raises(MeshProblem, match="the mesh is empty"):
        check_mesh(np.zeros((0, 3, 3), dtype=np.float32))
    broken = tetrahedron()
    broken[1, 2, 0] = np.nan
    with pytest.raises(MeshProblem, match="not finite numbers"):
        check_mesh(broken)


def test_ascii_and_binary_stl_read_the_same(tmp_path: Path) -> None:
    tris = tetrahedron() * np.float32(7.5)
    lines = ["solid t"]
    for tri in tris:
        lines += ["facet normal 0 0 0", " outer loop"]
        lines += [f"  vertex {x:.6e} {y:.6e} {z:.6e}" for x, y, z in tri]
        lines += [" endloop", "endfacet"]
    (tmp_path / "a.stl").write_text("\n".join([*lines, "endsolid t"]))
    records = np.zeros(len(tris), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    records["v"] = tris
    (tmp_path / "b.stl").write_bytes(b"\0" * 80 + np.uint32(len(tris)).tobytes() + records.tobytes())
    assert np.array_equal(read_stl(tmp_path / "a.stl"), tris)
    assert np.array_equal(read_stl(tmp_path / "b.stl"), tris)


# --------------------------------------------------------------------------------------------------
# Previews


def test_previews_decode_show_the_part_and_differ_between_parts(runner: CadRunner, tmp_path: Path) -> None:
    tall = build(runner, tmp_path / "tall", TALL)
    wide = build(runner, tmp_path / "wide", WIDE)
    masks = []
    for result in (tall, wide):
        assert result.preview is not None and result.preview_small is not None
        big, small = decode(result.preview.read_bytes()), decode(result.preview_small.read_bytes())
        assert big.shape == (256, 256, 4) and small.shape == (96, 96, 4)
        for image in (big, small):
            part = image[..., 3] > 0
            # Drawn and framed: a good share of the picture, with transparent corners around it.
            assert 0.05 < part.mean() < 0.9
            assert not image[0, 0, 3] and not image[-1, -1, 3]
            # Background transparent, the part opaque and shaded: its faces are not all one colour.
            assert (image[part][:, :3] != 0).any(axis=1).all()
            assert len({tuple(p) for p in image[image[..., 3] == 255][:, :3]}) >= 3
        masks.append(big[..., 3] > 127)
    overlap = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
    assert overlap < 0.6, f"a tall cylinder and a flat plate look alike ({overlap:.2f} overlap)"
    # The cylinder stands upright: taller than wide on screen; the plate is wider than tall.
    rows, cols = np.nonzero(masks[0])
    assert np.ptp(rows) > 2 * np.ptp(cols)
    rows, cols = np.nonzero(masks[1])
    assert np.ptp(cols) > np.ptp(rows)


def test_png_writer_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(17, 23, 4), dtype=np.uint8)
    assert np.array_equal(decode(png_bytes(pixels)), pixels)
    assert render(np.zeros((0, 3, 3)), 32)[..., 3].max() == 0  # nothing to draw: all transparent


def test_bambu_package_gets_the_cad_preview_when_the_gcode_has_no_thumbnail(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, tmp_path, WIDE)
    model = get_model("X1C")
    assert model is not None
    png = result.preview.read_bytes()  # type: ignore[union-attr]
    sliced = slice_mesh(result.stl, model, tmp_path / "wide.gcode", thumbnail_png=png)
    assert gcode_thumbnails(sliced.plain_gcode) == []  # PrusaSlicer 2.5 headless draws none
    with zipfile.ZipFile(sliced.gcode) as package:
        assert package.read(PLATE_PNG) == png
    bare = slice_mesh(result.stl, model, tmp_path / "bare.gcode")  # no preview: drawn from the G-code
    with zipfile.ZipFile(bare.gcode) as package:
        drawn = package.read(PLATE_PNG)
    assert drawn != png and png_size(drawn) == (512, 512)


# --------------------------------------------------------------------------------------------------
# STEP on request, and its cache entry


def test_step_only_on_request_and_the_cache_entry_keeps_it(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "pair.py", LIST_OF_TWO)
    cache = CadCache(tmp_path / "cache")

    def run(step: bool) -> tuple[CadResult, bool]:
        return cached_build(runner, cache, CadRequest(source=source, outdir=tmp_path / "out", step=step))

    plain, hit = run(False)
    assert not hit and plain.step is None
    assert not list((tmp_path / "cache").glob("*/*/model.step"))
    with_step, hit = run(True)  # the entry has no STEP: a miss, and the new entry has one
    assert not hit and with_step.step is not None
    text = with_step.step.read_text()
    assert text.startswith("ISO-10303-21;")
    assert text.count("MANIFOLD_SOLID_BREP") == 2  # both shapes, as exact solids
    assert "'pair-1'" in text and "'pair-2'" in text  # named as the 3MF's objects
    again, hit = run(True)
    assert hit and again.step is not None and again.step.read_text() == text
    without, hit = run(False)
    assert hit and without.step is None  # the same entry serves a request without STEP
    assert without.preview is not None and without.preview.is_file()


# --------------------------------------------------------------------------------------------------
# Several shapes, several objects


def test_a_list_and_a_compound_of_solids_become_separate_objects(runner: CadRunner, tmp_path: Path) -> None:
    pair = build(runner, tmp_path / "pair", LIST_OF_TWO)
    tray = build(runner, tmp_path / "tray", TWO_IN_ONE_PART)
    one = build(runner, tmp_path / "one", WIDE)
    assert (pair.objects, tray.objects, one.objects) == (2, 2, 1)
    assert len(build_items(pair.threemf)) == 2 and count_3mf_items(pair.threemf) == 2
    assert len(build_items(tray.threemf)) == 2 and count_3mf_items(tray.threemf) == 2
    assert len(build_items(one.threemf)) == 1 and count_3mf_items(one.threemf) == 1
    with zipfile.ZipFile(tray.threemf) as zf:
        model = zf.read("3D/3dmodel.model").decode()
    assert 'partnumber="tray-1"' in model and 'partnumber="tray-2"' in model
    # The STL stays one mesh holding both.
    assert tray.mesh["triangles"] == len(read_stl(tray.stl)) == 24
    assert tray.volume == pytest.approx(1000 + 500)


def printed_objects(gcode: str) -> set[str]:
    return set(re.findall(r"^; printing object (.+?) id:(\d+) copy \d+$", gcode, re.M))


def test_prusaslicer_places_the_objects_of_the_3mf_apart(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, tmp_path, BOX_AND_LID)
    assert result.objects == 2 and size(result)[2] == pytest.approx(12)  # the lid on the box
    model = get_model("MK3S")
    assert model is not None
    sliced = slice_mesh(result.threemf, model, tmp_path / "two.gcode")
    objects = printed_objects(sliced.gcode.read_text())
    assert len({object_id for _, object_id in objects}) == 2, objects
    # Placed apart on the bed, each standing on it: as tall as the box, and wider than either.
    (x0, y0, _), (x1, y1, z1) = sliced.meta.bbox  # type: ignore[misc]
    assert z1 == pytest.approx(10, abs=0.01)
    assert max(x1 - x0, y1 - y0) > 20 + 16
    # The STL, as before: one object, the lid on its box.
    single = slice_mesh(result.stl, model, tmp_path / "one.gcode")
    assert len(printed_objects(single.gcode.read_text())) == 1
    assert single.meta.bbox[1][2] == pytest.approx(12, abs=0.01)  # type: ignore[index]
