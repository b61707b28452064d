"""What a design shows, in each viewer convention (issue #21): the scripts in tests/designs, built
through the real sandboxed CAD runner with real build123d. Each is checked for the objects of its
3MF (as lib3mf reads the package), their names, colours and volumes, and for what was skipped."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from farm.commands.cad import register
from farm.core.printer_models import get_model
from farm.core.settings import get_settings
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest, CadResult
from workers.slicer import slice_mesh

pytestmark = pytest.mark.timeout(300)
DESIGNS = Path(__file__).with_name("designs")


@pytest.fixture
def runner(cad_runner: CadRunner) -> CadRunner:
    return cad_runner  # one warm fork server for the whole session (tests/conftest.py)


def build(runner: CadRunner, name: str, tmp_path: Path) -> CadResult:
    return runner.build(CadRequest(source=DESIGNS / name, outdir=tmp_path / "out"))


def hex_of(name: str, alpha: float | None = None) -> str:
    """A colour as the 3MF writes it, computed by build123d as the build computes it."""
    from build123d import Color

    r, g, b, a = tuple(Color(name))
    return "#" + "".join(f"{round(c * 255):02X}" for c in (r, g, b, a if alpha is None else alpha))


def objects_of(threemf: Path) -> list[tuple[str, str | None, float]]:
    """(name, display colour, enclosed volume) of each object of the package, in order; each
    object's mesh must be closed and oriented for lib3mf, as the 3MF core specification asks."""
    from lib3mf import get_wrapper

    with zipfile.ZipFile(threemf) as zf:
        model = zf.read("3D/3dmodel.model").decode()
    colors = re.findall(r'<base name="[^"]*" displaycolor="([^"]+)"/>', model)
    pindex = {
        m["name"]: int(m["pindex"]) if m["pindex"] else None
        for m in re.finditer(
            r'<object id="\d+" type="model" name="(?P<name>[^"]+)"[^>]*?(?:pindex="(?P<pindex>\d+)")?>', model
        )
    }
    wrapper = get_wrapper()
    package = wrapper.CreateModel()
    package.QueryReader("3mf").ReadFromFile(str(threemf))
    found = []
    meshes = package.GetMeshObjects()
    while meshes.MoveNext():
        mesh = meshes.GetCurrentMeshObject()
        assert mesh.IsValid() and mesh.IsManifoldAndOriented(), mesh.GetName()
        vertices = np.array([v.Coordinates[0:3] for v in mesh.GetVertices()], dtype=np.float64)
        faces = np.array([t.Indices[0:3] for t in mesh.GetTriangleIndices()], dtype=np.int64)
        a, b, c = (vertices[faces[:, k]] for k in range(3))
        volume = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)
        index = pindex.get(mesh.GetName())
        found.append((mesh.GetName(), colors[index] if index is not None else None, volume))
    return found


def check(result: CadResult, expected: list[tuple[str, str | None, float]]) -> None:
    got = objects_of(result.threemf)
    assert [(n, c) for n, c, _ in got] == [(n, c) for n, c, _ in expected]
    for (name, _, volume), (_, _, wanted) in zip(got, expected, strict=True):
        assert volume == pytest.approx(wanted, rel=0.01), name  # tessellated: within 1 %
    assert result.objects == len(expected)
    assert result.volume == pytest.approx(sum(v for _, _, v in expected), rel=1e-6)


PI = np.pi


def test_a_guard_on_locals_finds_show_object_with_its_name_and_a_0_255_colour(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, "guard_locals.py", tmp_path)
    check(result, [("knob", "#FF0000CC", PI * 100 * 8)])  # (255, 0, 0) at alpha 0.8
    assert result.skipped == [] and result.warnings == []


def test_a_guard_on_globals_finds_show_and_names_the_object_after_its_variable(
    runner: CadRunner, tmp_path: Path
) -> None:
    check(build(runner, "guard_globals.py", tmp_path), [("plate", None, 40 * 20 * 2)])


def test_cq_editor_debug_is_drawn_not_printed_and_log_goes_to_the_build_log(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, "cq_editor_debug_log.py", tmp_path)
    check(result, [("body", hex_of("steelblue"), 30 * 30 * 10 - PI * 16 * 10)])
    assert result.skipped == ["drill (shown with debug())"]
    assert "skipped: drill (shown with debug())" in result.warnings
    assert result.log is not None
    log = result.log.read_text()
    assert "drilling the body\n" in log and "skipped: drill (shown with debug())\n" in log


def test_show_with_names_and_colours_in_each_spelling(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "show_names_colors.py", tmp_path)
    check(
        result,
        [
            ("base", hex_of("orange"), 20 * 20 * 5),
            ("peg", "#0000FFFF", PI * 9 * 10),
            ("ball", "#00FF00FF", 4 / 3 * PI * 4**3),
        ],
    )
    assert [(s["name"], s["kind"], s["prints"]) for s in result.shown] == [
        ("base", "a part", True),
        ("peg", "a part", True),
        ("ball", "a part", True),
    ]


def test_raw_ocp_shapes_are_printed(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "raw_ocp.py", tmp_path)
    check(result, [("plate", None, 30 * 30 * 4 - PI * 25 * 4), ("cube", None, 1000)])
    assert [s["kind"] for s in result.shown] == ["a part", "a solid"]


def test_a_mixed_scene_prints_the_part_and_lists_the_rest_as_skipped(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, "mixed_scene.py", tmp_path)
    check(result, [("handle", None, 10 * 6 * 30)])
    skipped = ["center_line (a curve)", "outline (a sketch)", "marker (a face)", "origin (a Location)"]
    assert result.skipped == skipped
    assert f"skipped: {', '.join(skipped)}" in result.warnings
    assert result.log is not None and f"skipped: {', '.join(skipped)}" in result.log.read_text()


def test_nothing_solid_fails_and_names_what_was_shown(runner: CadRunner, tmp_path: Path) -> None:
    with pytest.raises(CadError) as caught:
        build(runner, "only_curves.py", tmp_path)
    assert caught.value.kind == "empty"
    assert caught.value.message == (
        "only_curves.py shows nothing solid to print: path (a curve), profile (a sketch); "
        "show a Part, a BuildPart or a Solid"
    )


def test_dicts_show_their_values_by_key_and_lists_their_items_numbered_or_by_label(
    runner: CadRunner, tmp_path: Path
) -> None:
    leg = 4 * 4 * 20
    check(
        build(runner, "dict_and_list.py", tmp_path),
        [
            ("top", None, 600),
            ("shelf", None, 600),
            ("legs-1", None, leg),
            ("legs-2", None, leg),
            ("back_leg", None, leg),
        ],
    )


def test_an_assembly_prints_each_child_by_label_and_colour_where_the_assembly_is(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, "assembly.py", tmp_path)
    check(
        result,
        [("tub", hex_of("blue"), 4000), ("lid", hex_of("red"), 800), ("knob", None, PI * 4 * 4)],
    )
    (x0, _, z0), (x1, _, z1) = result.bbox
    assert (x0, x1, z0, z1) == pytest.approx((90, 110, -5, 17))  # moved with the assembly
    assert [(s["name"], s["kind"], s["solids"]) for s in result.shown] == [("box", "an assembly", 3)]


def test_solids_that_touch_are_each_checked_on_their_own(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "stud_wall.py", tmp_path)
    plate, stud = 100 * 4 * 2, 2 * 4 * 40
    check(result, [(f"wall-{i}", None, plate if i <= 2 else stud) for i in range(1, 11)])
    assert result.mesh["open_edges"] == 0 and result.mesh["nonmanifold_edges"] == 0
    assert result.warnings == []


def test_show_all_shows_every_shape_variable_by_name(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "show_all_scene.py", tmp_path)
    check(result, [("left", None, 1000), ("right", None, 500)])
    assert result.skipped == ["sketch (a sketch)"]


def test_prusaslicer_reads_the_objects_names(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "show_names_colors.py", tmp_path)
    printer = get_model("MK3S")
    assert printer is not None
    gcode = slice_mesh(result.threemf, printer, tmp_path / "named.gcode").gcode.read_text()
    printed = set(re.findall(r"^; printing object (.+?) id:\d+ copy \d+$", gcode, re.M))
    assert printed == {"base", "peg", "ball"}


def test_what_is_shown_again_prints_once_as_last_shown(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "shown_twice.py", tmp_path)
    check(result, [("base", hex_of("orange"), 20 * 20 * 4), ("lid", hex_of("blue"), 20 * 20 * 2)])
    assert result.skipped == ["base (shown again)", "first_try (shown again as base)"]


def test_push_object_then_show_objects(runner: CadRunner, tmp_path: Path) -> None:
    check(
        build(runner, "push_objects.py", tmp_path), [("cube", hex_of("red", 0.5), 1000), ("bar", None, 320)]
    )


def test_faces_of_a_compound_outside_its_solids_are_listed_as_skipped(
    runner: CadRunner, tmp_path: Path
) -> None:
    result = build(runner, "loose_faces.py", tmp_path)
    check(result, [("kit", None, 1000)])
    assert result.skipped == ["kit (its 1 face, outside any solid)"]


# --------------------------------------------------------------------------------------------------
# farm inspect --shown and farm build, on a copy of a design in a folder of its own


def farm_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> Result:
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        get_settings.cache_clear()


def copy_design(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / "design"
    folder.mkdir(parents=True)
    shutil.copy(DESIGNS / name, folder / name)
    return folder / name


def test_farm_inspect_shown_lists_names_kinds_and_what_prints(
    runner: CadRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = copy_design("mixed_scene.py", tmp_path)
    text = farm_cli(tmp_path, monkeypatch, "inspect", source, "--shown")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [
        "handle       a part, prints as 1 object",
        "center_line  a curve, skipped",
        "outline      a sketch, skipped",
        "marker       a face, skipped",
        "origin       a Location, skipped",
    ]
    assert not (source.parent / "mixed_scene.stl").exists()  # nothing meshed, nothing written
    colours = copy_design("show_names_colors.py", tmp_path / "c")
    as_json = farm_cli(tmp_path, monkeypatch, "inspect", colours, "--shown", "--json")
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.stdout)["shown"]
    assert [(s["name"], s["kind"], s["solids"], s["prints"]) for s in shown] == [
        ("base", "a part", 1, True),
        ("peg", "a part", 1, True),
        ("ball", "a part", 1, True),
    ]
    assert shown[1]["color"] == [0.0, 0.0, 1.0, 1.0]


def test_farm_inspect_shown_says_when_nothing_would_print(
    runner: CadRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = copy_design("only_curves.py", tmp_path)
    text = farm_cli(tmp_path, monkeypatch, "inspect", source, "--shown")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [
        "path     a curve, skipped",
        "profile  a sketch, skipped",
        "nothing solid: a build of it would fail",
    ]
    refused = farm_cli(tmp_path, monkeypatch, "inspect", source, "--param", "x=1")
    assert refused.exit_code == 2 and "go with --shown" in refused.stderr


def test_farm_build_reports_what_it_skipped(
    runner: CadRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = copy_design("mixed_scene.py", tmp_path)
    built = farm_cli(tmp_path, monkeypatch, "build", source, "-o", tmp_path / "out", "--json")
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout.strip().splitlines()[-1])
    skipped = ["center_line (a curve)", "outline (a sketch)", "marker (a face)", "origin (a Location)"]
    assert report["skipped"] == skipped and report["objects"] == 1
    assert f"warning: skipped: {', '.join(skipped)}" in built.stderr


def test_a_script_may_write_files_beside_itself(runner: CadRunner, tmp_path: Path) -> None:
    check(build(runner, "exports_beside.py", tmp_path), [("part", None, 1000)])
    assert not (DESIGNS / "part-export.stl").exists() and not (DESIGNS / "notes").exists()  # a copy's


def test_a_project_build_may_write_beside_its_script_but_not_outside_its_folders(
    runner: CadRunner, tmp_path: Path
) -> None:
    from farm.core.project import pack_file

    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "requirements.txt").write_text("")
    (folder / "logs").mkdir()
    (folder / "logs" / "part.log").write_text("an earlier run's log\n")  # as logging.basicConfig appends
    (folder / "part.py").write_text(
        "from pathlib import Path\n"
        "from build123d import Box, export_stl\n"
        "part = Box(5, 5, 5)\n"
        "export_stl(part, 'beside.stl')\n"
        "with open('logs/part.log', 'a') as log:\n"
        "    log.write('built\\n')\n"
        "Path('logs/more.txt').write_text('x')\n"
        "try:\n"
        "    Path('/usr/escaped.txt').write_text('x')\n"
        "except OSError as error:\n"
        "    print('refused:', type(error).__name__)\n"
        "show(part)\n"
    )
    packed = pack_file(folder / "part.py", tmp_path)
    result = runner.build(CadRequest(Path(packed.entry), tmp_path / "out", project=packed.archive))
    assert result.volume == pytest.approx(125)
    assert result.log is not None and "refused: " in result.log.read_text()
    assert not Path("/usr/escaped.txt").exists() and not (folder / "beside.stl").exists()


def test_a_rotated_solid_with_vertices_a_hair_off_zero_is_closed(runner: CadRunner, tmp_path: Path) -> None:
    result = build(runner, "rotated_board.py", tmp_path)
    check(result, [("board", None, (38.1 * 88.9 - (4 - PI) * 6.35**2) * 3962.4)])
    assert result.mesh["open_edges"] == 0
