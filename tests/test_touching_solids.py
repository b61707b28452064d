"""Shapes people actually write: solids that touch at a corner, along an edge or a tangent line, and
overlap. Each builds through the real CAD runner, and its 3MF is valid for lib3mf and sliced to G-code
by the real PrusaSlicer. The 3MF is written by workers.threemf from the STL's triangles (lib3mf's
writer refused a solid touching itself along an edge, and ran out of memory on large meshes); a truly
broken solid fails with its index, place and fault."""

from __future__ import annotations

import re
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from farm.core.mesh import inspect_mesh
from farm.core.printer_models import get_model
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest, CadResult
from workers.mesh_bbox import count_3mf_items
from workers.slicer import slice_mesh
from workers.threemf import MeshObject, model_xml, separate_lumps, weld, write_3mf

pytestmark = pytest.mark.timeout(300)

# name: (source, objects on the plate, whether a solid touches itself: lib3mf's writer refused those)
DESIGNS = {
    "boxes touching at a corner": (
        """\
        from build123d import Align, Box, Pos

        a = Box(10, 10, 10, align=Align.MIN)
        result = a + Pos(10, 10, 10) * Box(10, 10, 10, align=Align.MIN)
        """,
        2,
        False,
    ),
    "boxes sharing an edge": (
        """\
        from build123d import Align, Box, BuildPart, Locations

        with BuildPart() as p:
            Box(10, 10, 10, align=Align.MIN)
            with Locations((10, 10, 0)):
                Box(10, 10, 10, align=Align.MIN)
        result = p.part
        """,
        2,
        False,
    ),
    "box and cylinder touching along a tangent line": (
        """\
        from build123d import Align, Box, Cylinder, Pos

        box = Box(20, 20, 10, align=Align.MIN)
        result = box + Pos(25, 10, 0) * Cylinder(5, 10, align=(Align.CENTER, Align.CENTER, Align.MIN))
        """,
        2,
        False,
    ),
    "compound of overlapping solids": (
        """\
        from build123d import Box, Compound, Pos

        result = Compound([Box(10, 10, 10), Pos(5, 5, 0) * Box(10, 10, 10)])
        """,
        2,
        False,
    ),
    # One outline of two squares meeting at a corner: one solid, touching itself along an edge.
    "one outline of two squares meeting at a corner, extruded": (
        """\
        from build123d import Polygon, extrude

        corners = [(0, 0), (10, 0), (10, 10), (20, 10), (20, 20), (10, 20), (10, 10), (0, 10)]
        outline = Polygon(*corners, align=None)
        result = extrude(outline, 5)
        """,
        1,
        True,
    ),
    "a checkerboard outline in a BuildPart, and a plain box beside it": (
        """\
        from build123d import Box, BuildPart, BuildSketch, Polygon, Pos, extrude

        corners = [(0, 0), (10, 0), (10, 10), (20, 10), (20, 0), (30, 0), (30, 10), (20, 10), (20, 20),
                   (10, 20), (10, 10), (0, 10)]
        with BuildPart() as p:
            with BuildSketch():
                Polygon(*corners, align=None)
            extrude(amount=4)
        show(p, Pos(50, 0, 0) * Box(10, 10, 10), names=["checker", "cube"])
        """,
        2,
        True,
    ),
}


DESIGNS["a profile of two triangles meeting at a point, revolved: two rings touching along a circle"] = (
    """\
    from build123d import Axis, BuildPart, BuildSketch, Plane, Polygon, revolve

    with BuildPart() as p:
        with BuildSketch(Plane.XZ):
            Polygon((5, 0), (15, 0), (10, 5), (15, 10), (5, 10), (10, 5), align=None)
        revolve(axis=Axis.Z)
    result = p.part
    """,
    1,
    True,
)
# One lump, not two: a plate whose triangular hole touches its outer edge at a corner.
DESIGNS["a plate touching itself along an edge"] = (
    """\
    from build123d import Align, BuildPart, BuildSketch, Mode, Polygon, Rectangle, extrude

    with BuildPart() as p:
        with BuildSketch():
            Rectangle(30, 30, align=Align.MIN)
            Polygon((15, 0), (20, 10), (10, 10), align=None, mode=Mode.SUBTRACT)
        extrude(amount=5)
    result = p.part
    """,
    1,
    True,
)


@pytest.fixture
def runner(cad_runner: CadRunner) -> CadRunner:
    return cad_runner  # one warm fork server for the whole session (tests/conftest.py)


def build(runner: CadRunner, folder: Path, text: str) -> CadResult:
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "part.py"
    source.write_text(textwrap.dedent(text))
    return runner.build(CadRequest(source=source, outdir=folder / "out"))


def model_of(threemf: Path) -> str:
    with zipfile.ZipFile(threemf) as zf:
        return zf.read("3D/3dmodel.model").decode()


def lib3mf_objects(threemf: Path) -> list[tuple[str, str, bool]]:
    """(name, part number, manifold and oriented) of each mesh object, as lib3mf reads the package."""
    from lib3mf import get_wrapper

    model = get_wrapper().CreateModel()
    model.QueryReader("3mf").ReadFromFile(str(threemf))
    found = []
    objects = model.GetMeshObjects()
    while objects.MoveNext():
        mesh = objects.GetCurrentMeshObject()
        found.append((mesh.GetName(), mesh.GetPartNumber(), mesh.IsValid() and mesh.IsManifoldAndOriented()))
    return found


@pytest.mark.parametrize("design", list(DESIGNS))
def test_touching_solids_build_and_their_3mf_slices(runner: CadRunner, tmp_path: Path, design: str) -> None:
    source, objects, touches_itself = DESIGNS[design]
    result = build(runner, tmp_path, source)
    assert result.objects == objects
    assert result.mesh["open_edges"] == 0
    # Solids touching each other are separate objects, each closed; only one touching itself warns.
    assert (result.mesh["nonmanifold_edges"] > 0) == touches_itself, result.mesh
    model = model_of(result.threemf)
    assert '<metadata name="Application">printfarm</metadata>' in model
    read = lib3mf_objects(result.threemf)
    assert len(read) == count_3mf_items(result.threemf) == objects
    assert all(valid for _, _, valid in read), read  # every object closed and oriented, as 3MF asks
    printer = get_model("MK3S")
    assert printer is not None
    sliced = slice_mesh(result.threemf, printer, tmp_path / "part.gcode")
    gcode = sliced.gcode.read_text()
    assert re.search(r"^G1 .*E[0-9.]+", gcode, re.M), "no extrusion in the G-code"
    printed = set(re.findall(r"^; printing object (.+?) id:(\d+) copy \d+$", gcode, re.M))
    assert len({object_id for _, object_id in printed}) == objects, printed
    (_, _, z0), (_, _, z1) = result.bbox
    assert sliced.meta.bbox is not None and sliced.meta.bbox[1][2] <= z1 - z0 + 0.01


def test_the_farms_3mf_keeps_names_colors_and_objects(runner: CadRunner, tmp_path: Path) -> None:
    result = build(
        runner,
        tmp_path,
        """\
        from build123d import Box, Color, Polygon, Pos, extrude

        corners = [(0, 0), (10, 0), (10, 10), (20, 10), (20, 20), (10, 20), (10, 10), (0, 10)]
        outline = Polygon(*corners, align=None)
        bowtie = extrude(outline, 5)
        bowtie.label = "bowtie"
        bowtie.color = Color("red")
        cube = Pos(40, 0, 0) * Box(10, 10, 10)
        show(bowtie, cube, names=["bowtie", None])
        """,
    )
    assert result.objects == 2
    model = model_of(result.threemf)
    assert '<metadata name="Application">printfarm</metadata>' in model
    assert 'unit="millimeter"' in model
    assert re.search(
        r'<object id="\d+" type="model" name="bowtie" partnumber="bowtie" pid="\d+" pindex="0">', model
    )
    assert 'name="part-2" partnumber="part-2"' in model  # the default name: the script's, numbered
    assert 'displaycolor="#FF0000FF"' in model
    assert [(name, part, ok) for name, part, ok in lib3mf_objects(result.threemf)] == [
        ("bowtie", "bowtie", True),
        ("part-2", "part-2", True),
    ]


# --------------------------------------------------------------------------------------------------
# Truly broken shapes


def test_an_open_shell_beside_a_good_box_is_named_with_its_place(runner: CadRunner, tmp_path: Path) -> None:
    with pytest.raises(CadError) as caught:
        build(
            runner,
            tmp_path,
            """\
            from build123d import Box, Pos, Shell, Solid

            result = [Box(10, 10, 10), Pos(20, 0, 0) * Solid(Shell(Box(10, 10, 10).faces()[:-1]))]
            """,
        )
    error = caught.value
    assert error.kind == "mesh"
    assert error.message.startswith(
        'solid 2 of 2 ("part-2", x 15 to 25, y -5 to 5, z -5 to 5 mm): the mesh has 4 open edges: '
        "the shape is not a closed solid"
    ), error.message


def test_a_face_made_a_solid_is_named_as_flat(runner: CadRunner, tmp_path: Path) -> None:
    with pytest.raises(CadError) as caught:
        build(
            runner,
            tmp_path,
            """\
            from build123d import Box, Compound, Pos, Rectangle, Shell, Solid

            sheet = Solid(Shell([Rectangle(10, 10).faces()[0]]))
            result = Compound([Box(10, 10, 10), Pos(30, 0, 0) * sheet])
            """,
        )
    error = caught.value
    assert error.kind == "mesh"
    assert error.message.startswith(
        'solid 2 of 2 ("part-2", x 25 to 35, y -5 to 5, z 0 to 0 mm): the part is 0 mm thick along Z'
    ), error.message


# --------------------------------------------------------------------------------------------------
# The writer on hand-made meshes


def tetrahedron() -> np.ndarray:
    a, b, c, d = [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]
    return np.array([[a, c, b], [a, b, d], [b, c, d], [a, d, c]], dtype=np.float32)


def two_sharing_an_edge() -> np.ndarray:
    # The second, turned half a turn about the z axis, meets the first along the edge a-d only.
    first = tetrahedron()
    second = first * np.array([-1, -1, 1], dtype=np.float32)
    return np.concatenate([first, second])


def test_lumps_meeting_along_an_edge_get_their_own_vertices() -> None:
    vertices, faces = weld(two_sharing_an_edge())
    assert len(vertices) == 6 and inspect_mesh(two_sharing_an_edge()).nonmanifold_edges == 1
    split_vertices, split_faces = separate_lumps(vertices, faces)
    assert len(split_vertices) == 8 and len(split_faces) == 8
    edges = np.sort(np.stack([split_faces, split_faces[:, [1, 2, 0]]], axis=-1).reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()
    # The triangles, and so the shape, are unchanged.
    assert np.array_equal(
        np.sort(split_vertices[split_faces].reshape(-1, 9), axis=0),
        np.sort(vertices[faces].reshape(-1, 9), axis=0),
    )
    # Meeting at a corner only: that vertex is split too; a mesh with neither is left as it is.
    corner = np.concatenate([tetrahedron(), -tetrahedron()[:, ::-1]])
    assert len(weld(corner)[0]) == 7 and len(separate_lumps(*weld(corner))[0]) == 8
    plain = weld(tetrahedron())
    assert separate_lumps(*plain) is not None and len(separate_lumps(*plain)[0]) == 4


def test_a_written_package_reads_back_in_lib3mf_and_prusaslicer(tmp_path: Path) -> None:
    path = tmp_path / "pair.3mf"
    scaled = two_sharing_an_edge() * np.float32(10)
    write_3mf(path, [MeshObject(scaled, "pair", "pair & co"), MeshObject(tetrahedron() * 10 + 30, "other")])
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["3D/3dmodel.model", "[Content_Types].xml", "_rels/.rels"]
    assert lib3mf_objects(path) == [("pair & co", "pair", True), ("", "other", True)]
    assert 'name="pair &amp; co"' in model_xml([MeshObject(scaled, "pair", "pair & co")])
    printer = get_model("MK3S")
    assert printer is not None
    sliced = slice_mesh(path, printer, tmp_path / "pair.gcode")
    assert sliced.meta.bbox is not None and sliced.meta.bbox[1][2] == pytest.approx(10, abs=0.01)


def test_colours_are_shared_and_empty_objects_left_out() -> None:
    red, blue = (1.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 0.5)
    model = model_xml(
        [
            MeshObject(tetrahedron(), "a", color=red),
            MeshObject(np.zeros((0, 3, 3), dtype=np.float32), "empty", color=blue),
            MeshObject(tetrahedron() + 5, "b", color=red),
        ]
    )
    assert '<basematerials id="1"><base name="#FF0000FF" displaycolor="#FF0000FF"/></basematerials>' in model
    assert re.findall(r'<object id="(\d+)"[^>]*partnumber="(\w+)" pid="1" pindex="(\d+)"', model) == [
        ("2", "a", "0"),
        ("3", "b", "0"),
    ]
    assert re.findall(r'<item objectid="(\d+)"/>', model) == ["2", "3"]


def torus(around: int, across: int, big: float = 50.0, small: float = 10.0) -> np.ndarray:
    """A closed, outward-wound torus of 2 * around * across triangles."""
    u = np.linspace(0, 2 * np.pi, around, endpoint=False)[:, None]
    v = np.linspace(0, 2 * np.pi, across, endpoint=False)[None, :]
    ring = big + small * np.cos(v)
    grid = np.stack(np.broadcast_arrays(ring * np.cos(u), ring * np.sin(u), small * np.sin(v)), -1)
    grid = grid.astype(np.float32)
    i, j = np.arange(around)[:, None], np.arange(across)[None, :]
    a, b = grid[i, j], grid[(i + 1) % around, j]
    c, d = grid[(i + 1) % around, (j + 1) % across], grid[i, (j + 1) % across]
    return np.concatenate(
        [np.stack([a, b, c], -2).reshape(-1, 3, 3), np.stack([a, c, d], -2).reshape(-1, 3, 3)]
    )


def test_a_large_mesh_is_written_piece_by_piece_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lib3mf ran out of memory writing heat_exchanger (2.7M triangles). The farm's writer never holds
    the model's XML whole (each write into the zip is a few MB), and its peak is the welding of the
    one object being written (~380 bytes a triangle, measured)."""
    import tracemalloc

    writes: list[int] = []
    write = zipfile._ZipWriteFile.write  # type: ignore[attr-defined]  # writestr goes through it too

    def recorded(self: object, data: bytes) -> int:
        writes.append(len(data))
        return write(self, data)

    monkeypatch.setattr(zipfile._ZipWriteFile, "write", recorded)  # type: ignore[attr-defined]
    triangles = torus(400, 250)  # 200,000 triangles
    path = tmp_path / "ring.3mf"
    tracemalloc.start()
    try:
        write_3mf(path, [MeshObject(triangles, "ring", "ring", (1.0, 0.5, 0.0, 1.0))])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(writes) > 10e6 and max(writes) < 5e6  # ~15 MB of XML, no write over 5 MB
    assert peak < 500 * len(triangles)
    assert lib3mf_objects(path) == [("ring", "ring", True)]
