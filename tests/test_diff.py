"""`farm revisions` and `farm diff` on real builds: examples/bracket.py at two lengths through the
real CAD worker (build123d) and PrusaSlicer on `farm up`, compared with the bracket's geometry
worked out by hand; the diff image decoded with Pillow."""

from __future__ import annotations

import io
import json
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, RunningFarm, wait_until

PROJECT, PART = "brackets", "bracket"
PANEL, CAPTION, GAP = 256, 22, 8  # farm/coordinator/diffimage.py's layout
MARK = (255, 0, 0)
MARGIN = 0.06  # farm/core/mesh.py: of the picture, each side


def bracket_volume(length: float, width: float = 20, thickness: float = 4, hole_d: float = 4) -> float:
    """examples/bracket.py by hand: a base plate (length x width x thickness, centred on the origin)
    and an upright (thickness x width x width, from z=0) at one end, overlapping the plate's upper
    half; a hole of hole_d through the plate; the upright's two top edges along Y rounded with r=1
    (each takes (1 - pi/4) r^2 of section over the width)."""
    plate = length * width * thickness
    upright = thickness * width * width
    overlap = thickness * width * thickness / 2
    hole = math.pi * (hole_d / 2) ** 2 * thickness
    fillets = 2 * (1 - math.pi / 4) * 1.0**2 * width
    return plate + upright - overlap - hole - fillets


@dataclass
class Brackets:
    short: dict  # length 40
    long: dict  # length 60
    again: dict  # length 40 again: the same mesh from the CAD cache


def _sliced(farm: RunningFarm, build_id: int) -> dict:
    def done() -> dict | None:
        build = httpx.get(f"{farm.url}/api/builds/{build_id}", headers=farm.admin_headers()).json()
        assert build["stage"] != "failed", build["error"]
        slices = build["slices"]
        return build if slices and all(s["state"] == "done" for s in slices) else None

    return wait_until(done, 240, f"build {build_id} to be sliced", interval=0.5)  # type: ignore[no-any-return]


def _submit(farm: RunningFarm, path: Path, token: dict[str, str] | None = None, **options: object) -> dict:
    files = {"file": (path.name, path.read_bytes())}
    made = httpx.post(
        f"{farm.url}/api/builds",
        files=files,
        data={"options": json.dumps(options)},
        headers=token or farm.admin_headers(),
    )
    assert made.status_code == 201, made.text
    return made.json()  # type: ignore[no-any-return]


def _revise(farm: RunningFarm, build_id: int, **columns: str | None) -> None:
    """What the push hooks record on a build of a registered project's part, set here directly."""
    with sqlite3.connect(farm.data_dir / "farm.coordinator.db", timeout=30) as db:
        names = ", ".join(f"{k} = ?" for k in columns)
        db.execute(f"UPDATE build SET {names} WHERE id = ?", (*columns.values(), build_id))


@pytest.fixture(scope="module")
def brackets(farm: RunningFarm) -> Iterator[Brackets]:
    made = [
        _submit(farm, EXAMPLES / "bracket.py", params={"length": length})["id"] for length in (40, 60, 40)
    ]
    short, long, again = (_sliced(farm, i) for i in made)
    _revise(farm, short["id"], project_name=PROJECT, part_name=PART, git_commit="1" * 40)
    _revise(farm, long["id"], project_name=PROJECT, part_name=PART, git_commit="2" * 40, git_tag="v2")
    _revise(farm, again["id"], project_name=PROJECT, part_name=PART, git_commit="3" * 40)
    yield Brackets(short, long, again)


def _panels(png: bytes) -> list[Image.Image]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (2 * PANEL + 3 * GAP, PANEL + CAPTION + GAP)
    rgb = image.convert("RGB")
    return [
        rgb.crop((GAP + i * (PANEL + GAP), CAPTION, GAP + i * (PANEL + GAP) + PANEL, CAPTION + PANEL))
        for i in (0, 1)
    ]


def _marked(panel: Image.Image) -> int:
    return int((np.asarray(panel) == MARK).all(axis=2).sum())


def _part_columns(panel: Image.Image) -> tuple[int, int]:
    """The leftmost and rightmost columns with the part in them (not the background, not a box)."""
    px = np.asarray(panel).astype(np.int16)
    part = (np.abs(px - 245).max(axis=2) > 40) & ~(px == MARK).all(axis=2)
    cols = np.nonzero(part.any(axis=0))[0]
    return int(cols.min()), int(cols.max())


def test_diff_reports_the_volume_and_size_change_and_marks_it(
    farm: RunningFarm, brackets: Brackets, tmp_path: Path
) -> None:
    a, b = brackets.short, brackets.long
    out = tmp_path / "diff.png"
    code, d = farm.cli_json("diff", str(a["id"]), str(b["id"]), "--image", str(out))
    assert code == 0, d
    assert d["params"] == {"added": {}, "removed": {}, "changed": {"length": {"a": 40, "b": 60}}}
    volume = d["volume_mm3"]
    assert volume["a"] == pytest.approx(bracket_volume(40), rel=1e-6)
    assert volume["b"] == pytest.approx(bracket_volume(60), rel=1e-6)
    assert volume["change"] == pytest.approx(60 * 20 * 4 - 40 * 20 * 4, abs=1e-3)  # only the plate grew
    assert volume["percent"] == pytest.approx(100 * 1600 / bracket_volume(40), rel=1e-6)
    size = d["size_mm"]
    assert (size["x"]["a"], size["x"]["b"], size["x"]["change"]) == pytest.approx((40, 60, 20), abs=1e-3)
    for axis, expected in (("y", 20), ("z", 22)):  # 22: the plate's lower half (2) and the upright (20)
        assert (size[axis]["a"], size[axis]["b"], size[axis]["change"]) == pytest.approx(
            (expected, expected, 0), abs=1e-3
        )
    # The slicer's estimates per model, as each build's slices have them; a longer plate takes more.
    assert set(d["estimates"]) == {"MINI", "MK3S"}
    for model, est in d["estimates"].items():
        for side, build in (("a", a), ("b", b)):
            (sl,) = [s for s in build["slices"] if s["printer_model"] == model]
            assert (
                est["print_time_s"][side] == sl["print_time_s"]
                and est["filament_g"][side] == sl["filament_g"]
            )
        assert est["filament_g"]["change"] == pytest.approx(est["filament_g"]["b"] - est["filament_g"]["a"])
        assert est["filament_g"]["change"] > 0 and est["print_time_s"]["change"] > 0
    assert d["commit"] == {"a": "1" * 40, "b": "2" * 40, "changed": True}
    assert d["tag"] == {"a": None, "b": "v2", "changed": True}
    assert d["same_part"] is True and d["same_mesh"] is False
    assert d["image"]["regions"] >= 1

    # Both parts from one camera at one scale: their widths on screen are in the ratio of their
    # real widths; in this isometric view screen x is (x + y) / sqrt(2), so (length + 20) / sqrt(2).
    short, long = _panels(out.read_bytes())
    assert _marked(short) > 0 and _marked(long) > 0
    (l0, l1), (s0, s1) = _part_columns(long), _part_columns(short)
    fitted = PANEL * (1 - 2 * MARGIN)  # the larger part fills the frame's width
    assert l1 - l0 + 1 == pytest.approx(fitted, abs=3)
    assert (s1 - s0 + 1) / (l1 - l0 + 1) == pytest.approx(60 / 80, abs=0.02)

    # The same over HTTP, and in words.
    image = httpx.get(f"{farm.url}/api/builds/{a['id']}/diff/{b['id']}/image", headers=farm.admin_headers())
    assert image.headers["content-type"] == "image/png" and image.content == out.read_bytes()
    assert int(image.headers["X-Changed-Regions"]) == d["image"]["regions"]
    said = farm.cli("diff", str(a["id"]), str(b["id"]))
    assert said.returncode == 0, said.stderr
    assert "length: 40.0 -> 60.0" in said.stdout and "(+1,600.0 mm³, +34.9%)" in said.stdout, said.stdout
    assert "size x    40.00 mm -> 60.00 mm (+20.00 mm" in said.stdout and "tag       - -> v2" in said.stdout


def test_two_identical_builds_differ_in_nothing(
    farm: RunningFarm, brackets: Brackets, tmp_path: Path
) -> None:
    a, c = brackets.short, brackets.again
    out = tmp_path / "same.png"
    code, d = farm.cli_json("diff", str(a["id"]), str(c["id"]), "--image", str(out))
    assert code == 0, d
    assert d["same_mesh"] is True and d["params"] == {"added": {}, "removed": {}, "changed": {}}
    assert d["volume_mm3"]["change"] == 0 and d["volume_mm3"]["percent"] == 0
    assert all(c["change"] == 0 for c in d["size_mm"].values())
    assert d["image"]["regions"] == 0
    left, right = _panels(out.read_bytes())
    assert _marked(left) == 0 and _marked(right) == 0
    assert _part_columns(left) == _part_columns(right)  # both drawn, in the same place


def test_revisions_lists_a_parts_builds_newest_first(farm: RunningFarm, brackets: Brackets) -> None:
    url = f"{farm.url}/api/projects/{PROJECT}/parts/{PART}/revisions"
    rows = httpx.get(url, headers=farm.admin_headers()).json()
    ids = [brackets.again["id"], brackets.long["id"], brackets.short["id"]]
    assert [r["id"] for r in rows] == ids
    newest = rows[1]
    assert newest["git"]["tag"] == "v2" and newest["params"] == {"length": 60}
    assert newest["volume_mm3"] == pytest.approx(bracket_volume(60), rel=1e-6)
    assert newest["size_mm"] == pytest.approx([60, 20, 22], abs=1e-3)
    assert set(newest["estimates"]) == {"MINI", "MK3S"} and newest["stage"] == "ready"
    # Paged like every list: one a page, the cursor leads on.
    first = httpx.get(url, params={"limit": 1}, headers=farm.admin_headers())
    rest = httpx.get(
        url, params={"limit": 5, "cursor": first.headers["X-Next-Cursor"]}, headers=farm.admin_headers()
    )
    assert [r["id"] for r in first.json() + rest.json()] == ids and "X-Next-Cursor" not in rest.headers
    table = farm.cli("revisions", PROJECT, PART)
    assert table.returncode == 0 and "2222222" in table.stdout and "v2" in table.stdout, table.stdout


def test_bad_ids_and_names_are_a_clear_404(farm: RunningFarm, brackets: Brackets, tmp_path: Path) -> None:
    a = brackets.short["id"]
    done = farm.cli("diff", str(a), "999999", "--image", str(tmp_path / "x.png"))
    assert done.returncode == 1 and "no build 999999" in done.stderr and "HTTP 404" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.png").exists()
    admin = farm.admin_headers()
    for path, status in (
        (f"/api/builds/{a}/diff/999999", 404),
        (f"/api/builds/999999/diff/{a}/image", 404),
        (f"/api/builds/{a}/diff/0", 422),
        (f"/api/builds/{a}/diff/{2**31}", 422),
        (f"/api/builds/{a}/diff/abc/image", 422),
        ("/api/projects/brackets/parts/%00/revisions", 422),
    ):
        got = httpx.get(f"{farm.url}{path}", headers=admin)
        assert got.status_code == status, (path, got.text)
    part = httpx.get(f"{farm.url}/api/projects/{PROJECT}/parts/bracket2/revisions", headers=admin)
    assert part.status_code == 404 and "did you mean 'bracket'?" in part.json()["detail"]
    done = farm.cli("revisions", "bracketz", PART)
    assert done.returncode == 1 and "no builds of project 'bracketz'; did you mean 'brackets'?" in done.stderr


def test_a_build_without_a_mesh_has_no_image(farm: RunningFarm, brackets: Brackets, tmp_path: Path) -> None:
    src = tmp_path / "broken_part.py"
    src.write_text("from build123d import Box\n\npart = Box(10, 10\nresult = part\n")
    build = _submit(farm, src)
    admin = farm.admin_headers()
    wait_until(
        lambda: httpx.get(f"{farm.url}/api/builds/{build['id']}", headers=admin).json()["stage"] == "failed",
        120,
        "the broken build to fail",
    )
    done = farm.cli("diff", str(brackets.short["id"]), str(build["id"]), "--image", str(tmp_path / "x.png"))
    assert done.returncode == 1 and f"build {build['id']} has no mesh to draw (it is failed)" in done.stderr
    d = httpx.get(f"{farm.url}/api/builds/{brackets.short['id']}/diff/{build['id']}", headers=admin).json()
    assert d["volume_mm3"]["b"] is None and d["size_mm"]["x"]["change"] is None


def test_who_may_compare(farm: RunningFarm, brackets: Brackets) -> None:
    """Builds' numbers are for anyone who reads builds; the picture shows their meshes, so it
    follows the downloads' rule: a submitter sees it only for its own builds."""
    tokens = {}
    for role, printer in (("viewer", None), ("submitter", None), ("agent", farm.printers[0]["name"])):
        body = {"name": f"diff-{role}", "role": role, "printer": printer}
        made = httpx.post(f"{farm.url}/api/tokens", json=body, headers=farm.admin_headers())
        assert made.status_code in (200, 201), made.text
        tokens[role] = {"Authorization": f"Bearer {made.json()['token']}"}
    a, b = brackets.short["id"], brackets.long["id"]
    numbers, image = f"{farm.url}/api/builds/{a}/diff/{b}", f"{farm.url}/api/builds/{a}/diff/{b}/image"
    listing = f"{farm.url}/api/projects/{PROJECT}/parts/{PART}/revisions"
    assert httpx.get(numbers, headers=tokens["viewer"]).status_code == 200
    assert httpx.get(image, headers=tokens["viewer"]).status_code == 200
    assert httpx.get(listing, headers=tokens["viewer"]).status_code == 200
    assert httpx.get(numbers, headers=tokens["submitter"]).status_code == 200
    refused = httpx.get(image, headers=tokens["submitter"])
    assert refused.status_code == 403 and "belongs to 'admin'" in refused.json()["detail"]
    for url in (numbers, image, listing):
        assert httpx.get(url, headers=tokens["agent"]).status_code == 403
        assert httpx.get(url).status_code == 401
    # Its own builds (previews: the CAD cache has both parts), it may.
    own = [
        _submit(farm, EXAMPLES / "bracket.py", params={"length": n}, preview=True, token=tokens["submitter"])
        for n in (40, 60)
    ]
    for build in own:
        wait_until(
            lambda b=build: httpx.get(
                f"{farm.url}/api/builds/{b['id']}", headers=farm.admin_headers()
            ).json()["stl"],
            120,
            f"preview {build['id']}",
        )
    mine = httpx.get(
        f"{farm.url}/api/builds/{own[0]['id']}/diff/{own[1]['id']}/image", headers=tokens["submitter"]
    )
    assert mine.status_code == 200 and int(mine.headers["X-Changed-Regions"]) >= 1


def test_meshes_with_nan_corners_or_no_triangles_still_draw() -> None:
    """A submitted STL is never checked as a CAD build's is: NaN corners are left out (they would
    make the shared frame NaN and blank both sides), and an empty mesh draws as nothing."""
    from farm.coordinator.diffimage import diff_image

    tri = np.array([[[0, 0, 0], [10, 0, 0], [0, 10, 0]]], dtype=np.float32)
    nan = np.full((1, 3, 3), np.nan, dtype=np.float32)
    empty = np.zeros((0, 3, 3), dtype=np.float32)
    same = diff_image(np.concatenate([nan, tri]), tri, ("a", "b"))
    assert same.regions == []
    left, right = _panels(same.png)
    assert _part_columns(left) == _part_columns(right)
    gone = diff_image(tri, empty, ("a", "b"))
    assert len(gone.regions) == 1 and _marked(_panels(gone.png)[1]) > 0
    assert diff_image(empty, empty, ("a", "b")).regions == []
