"""The CAD cache: what its key covers, hits and misses through real builds, and `farm build`/`inspect`."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from farm.commands.cad import register
from farm.core.settings import get_settings
from workers.cad_cache import CadCache, cached_build, cad_cache_key
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest, CadResult

pytestmark = pytest.mark.timeout(120)

PLATE = """\
from build123d import Box


def plate(length: float = 30.0, width=20, thick=2):
    return Box(length, width, thick)
"""
CUBE = "from build123d import Box\n\nresult = Box({size}, {size}, {size})\n"
VERSIONS = {"build123d": "0.13.0", "OCP": "cadquery-ocp-novtk 8.0.1.1.0"}


class CountingRunner:
    """A real runner that counts the builds that reach it, to tell a hit from a rebuild."""

    def __init__(self, runner: CadRunner) -> None:
        self.runner = runner
        self.builds = 0

    def build(self, req: CadRequest) -> CadResult:
        self.builds += 1
        return self.runner.build(req)


@pytest.fixture
def real_runner(cad_runner: CadRunner) -> CadRunner:
    return cad_runner  # one warm fork server for the whole session (tests/conftest.py)


@pytest.fixture
def runner(real_runner: CadRunner) -> CountingRunner:
    return CountingRunner(real_runner)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def size(result: CadResult) -> tuple[float, float, float]:
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    return (round(x1 - x0, 6), round(y1 - y0, 6), round(z1 - z0, 6))


def request(source: Path, **kw: object) -> CadRequest:
    return CadRequest(source=source, outdir=source.parent / "out", **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The key


def test_key_is_stable_and_ignores_param_order(tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", PLATE)
    first = cad_cache_key(source, "plate", {"length": "40", "width": "10"}, versions=VERSIONS)
    again = cad_cache_key(source, "plate", {"width": "10", "length": "40"}, versions=VERSIONS)
    assert first == again
    assert len(first) == 64 and int(first, 16) >= 0
    # The installed versions are read without importing build123d, and the key is stable with them too.
    assert cad_cache_key(source, "plate", {}) == cad_cache_key(source, "plate", {})


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("entry", {"entry": "other"}),
        ("no entry", {"entry": None}),
        ("param value", {"params": {"length": "41"}}),
        ("extra param", {"params": {"length": "40", "width": "10"}}),
        ("build123d version", {"versions": {**VERSIONS, "build123d": "0.14.0"}}),
        ("OCP version", {"versions": {**VERSIONS, "OCP": "cadquery-ocp 7.8.1"}}),
        ("declared packages", {"packages": ["bd_warehouse==0.2"]}),
    ],
)
def test_key_changes_with_each_input(tmp_path: Path, change: str, kwargs: dict[str, object]) -> None:
    source = write(tmp_path, "part.py", PLATE)
    base: dict[str, object] = {"entry": "plate", "params": {"length": "40"}, "versions": VERSIONS}
    assert cad_cache_key(source, **base) != cad_cache_key(source, **{**base, **kwargs}), change  # type: ignore[arg-type]


def test_key_changes_with_the_source_bytes_and_name(tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", PLATE)
    before = cad_cache_key(source, None, {}, versions=VERSIONS)
    source.write_text(PLATE + "\n# a comment changes the bytes\n")
    assert cad_cache_key(source, None, {}, versions=VERSIONS) != before
    renamed = write(tmp_path, "other.py", PLATE)  # the name becomes the 3MF object name
    assert cad_cache_key(renamed, None, {}, versions=VERSIONS) != before


# --------------------------------------------------------------------------------------------------
# Builds through the cache


def test_second_build_is_a_hit_with_identical_meshes(runner: CountingRunner, tmp_path: Path) -> None:
    cache = CadCache(tmp_path / "cache")
    source = write(tmp_path, "part.py", PLATE)
    req = request(source, entry="plate", params={"length": "50"})
    built, hit = cached_build(runner, cache, req)
    assert not hit and runner.builds == 1
    assert size(built) == (50.0, 20.0, 2.0)
    stl, threemf = built.stl.read_bytes(), built.threemf.read_bytes()

    again, hit = cached_build(runner, cache, req)
    assert hit and runner.builds == 1
    assert again.stl.read_bytes() == stl and again.threemf.read_bytes() == threemf
    assert again.bbox == built.bbox and again.volume == pytest.approx(50 * 20 * 2)
    assert again.objects == 1
    # A hit points into the cache; nothing is copied, and no staging directory is left behind.
    assert again.stl.is_relative_to(cache.root) and again.stl.parent == cache.entry_dir(again.stl.parent.name)
    assert not list(cache.root.glob("*/.tmp-*")) and not list(cache.root.glob("*/.old-*"))


def test_edited_source_misses_and_builds_the_new_geometry(runner: CountingRunner, tmp_path: Path) -> None:
    """MakerRepo served stale geometry after an edit; the source bytes are in the key."""
    cache = CadCache(tmp_path / "cache")
    source = write(tmp_path, "part.py", CUBE.format(size=10))
    first, _ = cached_build(runner, cache, request(source))
    assert size(first) == (10.0, 10.0, 10.0)
    source.write_text(CUBE.format(size=14))
    edited, hit = cached_build(runner, cache, request(source))
    assert not hit and runner.builds == 2
    assert size(edited) == (14.0, 14.0, 14.0)
    assert size(first) == (10.0, 10.0, 10.0)  # the old entry is untouched


def test_no_cache_forces_a_build_and_refreshes_the_entry(runner: CountingRunner, tmp_path: Path) -> None:
    cache = CadCache(tmp_path / "cache")
    req = request(write(tmp_path, "part.py", CUBE.format(size=8)))
    cached_build(runner, cache, req)
    forced, hit = cached_build(runner, cache, req, use_cache=False)
    assert not hit and runner.builds == 2
    assert size(forced) == (8.0, 8.0, 8.0) and forced.stl.is_file()
    _, hit = cached_build(runner, cache, req)
    assert hit and runner.builds == 2
    assert len(list(cache.root.glob("*/*"))) == 1  # replaced in place, no leftovers


def test_failed_build_is_not_cached(runner: CountingRunner, tmp_path: Path) -> None:
    cache = CadCache(tmp_path / "cache")
    req = request(write(tmp_path, "part.py", "from build123d import Box\n\nresult = Box(1, 2 3)\n"))
    for attempt in (1, 2):
        with pytest.raises(CadError) as caught:
            cached_build(runner, cache, req)
        assert caught.value.kind == "syntax"
        assert runner.builds == attempt  # the second attempt ran the script again
    assert cache.get(cad_cache_key(req.source, None, {})) is None


def test_entry_without_its_meta_is_a_miss(tmp_path: Path) -> None:
    cache = CadCache(tmp_path / "cache")
    entry = cache.entry_dir("ab" * 32)
    entry.mkdir(parents=True)
    (entry / "model.stl").write_bytes(b"half written")
    assert cache.get("ab" * 32) is None


# --------------------------------------------------------------------------------------------------
# The commands. Until farm/cli.py registers them, they run on a Typer app of their own, in-process
# (sharing the module's warm fork server); swap `farm` for `[sys.executable, "-m", "farm", ...]` then.


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_runner: CadRunner) -> Iterator[CliRunnerCall]:
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)
    yield CliRunnerCall(app)
    get_settings.cache_clear()


class CliRunnerCall:
    def __init__(self, app: typer.Typer) -> None:
        self.app = app

    def __call__(self, *args: str | Path) -> Result:
        return CliRunner().invoke(self.app, [str(a) for a in args])


def test_farm_build_writes_named_meshes_and_hits_the_cache_next_time(
    farm: CliRunnerCall, tmp_path: Path
) -> None:
    source = write(tmp_path, "plate.py", PLATE)
    out = tmp_path / "meshes"
    first = farm("build", source, "--param", "length=44", "-o", out, "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report["cached"] is False and report["size"] == [44.0, 20.0, 2.0]
    assert report["stl"] == str(out / "plate.stl") and report["threemf"] == str(out / "plate.3mf")
    stl = (out / "plate.stl").read_bytes()
    entries = list((tmp_path / "data" / "cad-cache").glob("*/*/model.stl"))
    assert len(entries) == 1 and entries[0].read_bytes() == stl

    second = farm("build", source, "--param", "length=44", "-o", out)
    assert second.exit_code == 0, second.output
    assert "cache hit" in second.stdout and "44 x 20 x 2 mm" in second.stdout
    assert str(out / "plate.stl") in second.stdout
    assert (out / "plate.stl").read_bytes() == stl

    forced = farm("build", source, "--param", "length=44", "-o", out, "--no-cache")
    assert forced.exit_code == 0 and "built in" in forced.stdout


def test_a_value_from_param_or_from_a_params_file_is_one_cache_entry(
    farm: CliRunnerCall, tmp_path: Path
) -> None:
    """Both are typed by the signature before the key is made: `length: float` takes "44" and 44
    as 44.0, `width=20` takes "12.0" and 12 as 12."""
    source = write(tmp_path, "plate.py", PLATE)
    out = tmp_path / "meshes"
    first = farm("build", source, "--param", "length=44", "--param", "width=12.0", "-o", out, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.strip().splitlines()[-1])["cached"] is False
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"length": 44, "width": 12}))
    second = farm("build", source, "--params", values, "-o", out, "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert report["cached"] is True and report["size"] == [44.0, 12.0, 2.0]

    wrong = farm("build", source, "--param", "width=wide", "-o", out)
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output
    assert wrong.stderr.strip() == "error: parameter 'width' expects a number, got 'wide'"


def test_farm_build_reports_a_cad_error_without_a_traceback(farm: CliRunnerCall, tmp_path: Path) -> None:
    source = write(tmp_path, "plate.py", PLATE)
    result = farm("build", source, "--artifact", "nope", "-o", tmp_path / "out")
    assert result.exit_code == 2  # found before building: a usage error
    assert result.stderr.strip().startswith("error: no entry point 'nope' in plate.py; available: plate")
    assert "Traceback" not in result.output and not (tmp_path / "out" / "plate.stl").exists()


def test_farm_build_of_a_missing_file_exits_2(farm: CliRunnerCall, tmp_path: Path) -> None:
    result = farm("build", tmp_path / "missing.py")
    assert result.exit_code == 2
    assert "missing.py does not exist" in result.stderr


def test_farm_inspect_lists_entry_points_with_defaults(farm: CliRunnerCall, tmp_path: Path) -> None:
    source = write(tmp_path, "plate.py", PLATE + "\n\ndef knob(diameter):\n    pass\n")
    text = farm("inspect", source)
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines() == [
        "plate  (line 4)",
        "  length: float = 30.0",
        "  width = 20",
        "  thick = 2",
        "knob  (line 8)",
        "  diameter  (required)",
    ]
    as_json = farm("inspect", source, "--json")
    entries = json.loads(as_json.stdout)
    assert [e["name"] for e in entries] == ["plate", "knob"]
    assert [(p["name"], p["default"]) for p in entries[0]["params"]] == [
        ("length", 30.0),
        ("width", 20),
        ("thick", 2),
    ]
    assert farm("inspect", tmp_path / "missing.py").exit_code == 2


def test_farm_build_writes_the_preview_and_step_on_request(farm: CliRunnerCall, tmp_path: Path) -> None:
    source = write(tmp_path, "plate.py", PLATE)
    out = tmp_path / "parts"
    plain = farm("build", source, "-o", out, "--json")
    assert plain.exit_code == 0, plain.output
    report = json.loads(plain.stdout.strip().splitlines()[-1])
    assert report["preview"] == str(out / "plate.png") and report["step"] is None
    assert (out / "plate.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not (out / "plate.step").exists()
    assert report["mesh"]["open_edges"] == 0 and report["mesh"]["triangles"] == 12
    with_step = farm("build", source, "-o", out, "--step")
    assert with_step.exit_code == 0, with_step.output
    assert str(out / "plate.step") in with_step.stdout and "built in" in with_step.stdout
    assert (out / "plate.step").read_text().startswith("ISO-10303-21;")
    again = farm("build", source, "-o", out, "--step", "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["cached"] is True


def test_farm_build_of_an_open_shell_says_what_is_wrong(farm: CliRunnerCall, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "box.py",
        "from build123d import Box, Shell, Solid\n\nresult = Solid(Shell(Box(10, 10, 10).faces()[:-1]))\n",
    )
    result = farm("build", source, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the mesh has ") and "open edges" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out" / "box.stl").exists()
