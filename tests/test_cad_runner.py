"""Real build123d builds through a real CadRunner: one fork server for the module, children per build."""

from __future__ import annotations

import ast
import os
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.core.entry_points import list_entry_points
from workers.cad_folders import sweep_stale_build_folders
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadLimits, CadRequest, CadResult

pytestmark = pytest.mark.timeout(120)

TOKEN = "farm-test-token-0f9e8d"

BRACKET = """\
from build123d import Box, BuildPart, Hole


def bracket(length: float = 40.0, width=20, hole=True):
    with BuildPart() as p:
        Box(length, width, 10)
        if hole:
            Hole(radius=2.5)
    return p.part


def knob(diameter=12.0):
    from build123d import Cylinder

    return Cylinder(diameter / 2, 8)
"""

GOOD = "from build123d import Box\n\nresult = Box(10, 10, 10)\n"


@pytest.fixture(scope="module")
def runner() -> Iterator[CadRunner]:
    # The token is in the worker's environment when the fork server starts; no child may see it.
    saved = os.environ.get("FARM_TOKEN")
    os.environ["FARM_TOKEN"] = TOKEN
    runner = CadRunner()
    try:
        runner.start()
        assert os.environ["FARM_TOKEN"] == TOKEN  # restored in the parent after the scrubbed start
        yield runner
    finally:
        runner.close()
        if saved is None:
            os.environ.pop("FARM_TOKEN", None)
        else:
            os.environ["FARM_TOKEN"] = saved


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def build(runner: CadRunner, source: Path, limits: CadLimits | None = None, **kw: object) -> CadResult:
    return runner.build(CadRequest(source=source, outdir=source.parent / "out", **kw), limits=limits)  # type: ignore[arg-type]


def fails(runner: CadRunner, source: Path, limits: CadLimits | None = None, **kw: object) -> CadError:
    with pytest.raises(CadError) as caught:
        build(runner, source, limits, **kw)
    return caught.value


def assert_still_builds(runner: CadRunner, folder: Path) -> None:
    good = folder / "again"
    good.mkdir(exist_ok=True)
    result = build(runner, write(good, "good.py", GOOD))
    assert result.bbox == ((-5.0, -5.0, -5.0), (5.0, 5.0, 5.0))


def size(result: CadResult) -> tuple[float, float, float]:
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    return (round(x1 - x0, 6), round(y1 - y0, 6), round(z1 - z0, 6))


# --------------------------------------------------------------------------------------------------
# Builds that work


def test_parametric_function_gets_typed_params(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", BRACKET)
    result = build(runner, source, entry="bracket", params={"length": "60", "width": "25", "hole": "no"})
    assert size(result) == (60.0, 25.0, 10.0)
    assert result.volume == pytest.approx(60 * 25 * 10)
    assert result.objects == 1
    # Binary STL: 80-byte header, facet count, 50 bytes a facet.
    data = result.stl.read_bytes()
    (facets,) = struct.unpack_from("<I", data, 80)
    assert facets > 0 and len(data) == 84 + 50 * facets
    with zipfile.ZipFile(result.threemf) as threemf:
        model = threemf.read("3D/3dmodel.model").decode()
    assert 'partnumber="bracket"' in model


def test_module_colon_function_entry_and_int_default_takes_a_float(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", BRACKET)
    result = build(runner, source, entry="part:bracket", params={"width": "12.5", "hole": "false"})
    assert size(result) == (40.0, 12.5, 10.0)


def test_show_from_ocp_vscode_gives_one_object_per_shape(runner: CadRunner, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Box, BuildPart, Pos
        from ocp_vscode import Camera, set_defaults, set_port, show

        set_port(3939)
        set_defaults(reset_camera=Camera.KEEP)
        with BuildPart() as base:
            Box(30, 10, 4)
        lid = Pos(0, 30, 0) * Box(30, 10, 2)
        show(base, lid, names=["base", "lid"])
        """,
    )
    result = build(runner, source)
    assert result.objects == 2
    assert size(result) == (30.0, 40.0, 4.0)
    with zipfile.ZipFile(result.threemf) as threemf:
        model = threemf.read("3D/3dmodel.model").decode()
    assert model.count("<object ") >= 2
    assert 'partnumber="base"' in model and 'partnumber="lid"' in model


def test_bare_show_builtin(runner: CadRunner, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Cylinder

        part = Cylinder(5, 20)
        show(part)
        """,
    )
    assert size(build(runner, source)) == (10.0, 10.0, 20.0)


def test_ocp_vscode_star_import_and_show_object(runner: CadRunner, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Sphere
        from ocp_vscode import *

        set_port(3939)
        reset_show()
        show_object(Sphere(6), name="ball", options={"alpha": 0.5})
        """,
    )
    result = build(runner, source)
    assert size(result) == (12.0, 12.0, 12.0)
    with zipfile.ZipFile(result.threemf) as threemf:
        assert 'partnumber="ball"' in threemf.read("3D/3dmodel.model").decode()


def test_module_level_result(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "from build123d import Box\n\nresult = Box(7, 8, 9)\n")
    assert size(build(runner, source)) == (7.0, 8.0, 9.0)


def test_single_function_without_required_params_is_called(runner: CadRunner, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Box


        def slot(length, width):  # a helper: it needs arguments, so it is no entry point
            return Box(length, width, 1)


        def plate(size=33):
            return Box(size, size, 2) - slot(10, 2)
        """,
    )
    assert size(build(runner, source)) == (33.0, 33.0, 2.0)


def test_concurrent_builds_from_threads(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", BRACKET)

    def one(length: int) -> tuple[float, float, float]:
        outdir = tmp_path / f"out-{length}"
        request = CadRequest(source, outdir, entry="bracket", params={"length": str(length)})
        return size(runner.build(request))

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(one, [41, 42, 43, 44]))
    assert [s[0] for s in sizes] == [41.0, 42.0, 43.0, 44.0]


# --------------------------------------------------------------------------------------------------
# The user's mistakes


def test_syntax_error_names_file_and_line(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "from build123d import Box\n\nresult = Box(1, 2 3)\n")
    error = fails(runner, source)
    assert error.kind == "syntax"
    assert error.message.startswith("part.py, line 3: SyntaxError:")
    assert "result = Box(1, 2 3)" in error.message
    assert_still_builds(runner, tmp_path)


def test_exception_in_a_helper_names_the_users_file_and_line(runner: CadRunner, tmp_path: Path) -> None:
    write(
        tmp_path,
        "helpers.py",
        """\
        def check(radius):
            if radius > 10:
                raise ValueError("radius too large")
            return radius
        """,
    )
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Cylinder
        from helpers import check


        def knob(radius=25.0):
            return Cylinder(check(radius), 5)
        """,
    )
    error = fails(runner, source)
    assert error.kind == "exception"
    first_line = error.message.splitlines()[0]
    assert first_line == "helpers.py, line 3, in check: ValueError: radius too large"
    assert "called from part.py, line 6, in knob" in error.message
    assert "cad_child" not in error.message
    assert_still_builds(runner, tmp_path)


def test_unknown_entry_lists_the_available_ones(runner: CadRunner, tmp_path: Path) -> None:
    error = fails(runner, write(tmp_path, "part.py", BRACKET), entry="foo")
    assert error.kind == "entry"
    assert error.message == "no entry point 'foo' in part.py; available: bracket, knob"


def test_several_entry_points_and_none_chosen(runner: CadRunner, tmp_path: Path) -> None:
    error = fails(runner, write(tmp_path, "part.py", BRACKET))
    assert error.kind == "entry"
    assert (
        error.message
        == "part.py defines several entry points: bracket, knob; choose one with --artifact NAME"
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"length": "long"}, "parameter 'length' expects a number, got 'long'"),
        ({"hole": "maybe"}, "parameter 'hole' expects true or false, got 'maybe'"),
        ({"lenght": "60"}, "unknown parameter 'lenght' for bracket(); available: length, width, hole"),
    ],
)
def test_bad_params_name_the_field(
    runner: CadRunner, tmp_path: Path, params: dict[str, str], expected: str
) -> None:
    error = fails(runner, write(tmp_path, "part.py", BRACKET), entry="bracket", params=params)
    assert error.kind == "params"
    assert error.message == expected


def test_empty_result(runner: CadRunner, tmp_path: Path) -> None:
    error = fails(runner, write(tmp_path, "part.py", "result = None\n"))
    assert error.kind == "empty"
    assert "part.py produced no shape" in error.message


# --------------------------------------------------------------------------------------------------
# Limits and crashes: the child dies, the runner does not


def test_wall_clock_limit_kills_the_whole_process_group(runner: CadRunner, tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        import subprocess, time
        sleeper = subprocess.Popen(["sleep", "300.5"])
        while True:
            time.sleep(0.01)
        """,
    )
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fails, runner, source, CadLimits(wall_s=3))
        sleepers = _wait_for(lambda: [p for p in _descendants(os.getpid()) if _cmdline(p) == "sleep 300.5"])
        error = future.result()
    assert time.monotonic() - started < 8
    assert error.kind == "limit"
    assert error.message.startswith("the build ran longer than the 3 s wall-clock limit and was stopped")
    assert "part.py, line 4" in error.message  # where it was stuck
    assert all(_gone(pid) for pid in sleepers), "a process the build started outlived it"
    assert_still_builds(runner, tmp_path)


def test_cpu_limit(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "n = 0\nwhile True:\n    n += 1\n")
    error = fails(runner, source, limits=CadLimits(cpu_s=1, wall_s=30))
    assert error.kind == "limit"
    assert error.message.startswith("the build used more than 1 s of CPU time")
    assert_still_builds(runner, tmp_path)


def test_segfault_is_reported_as_a_crash(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "import ctypes\n\nctypes.string_at(0)\n")
    error = fails(runner, source)
    assert error.kind == "crash"
    assert (
        error.message == "the build crashed (signal 11, segmentation fault) (at part.py, line 3, in <module>)"
    )
    assert_still_builds(runner, tmp_path)


def test_huge_allocation_hits_the_memory_limit(runner: CadRunner, tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "blob = bytearray(20 * 1024**3)\n")
    error = fails(runner, source)
    assert error.kind == "limit"
    assert error.message == "the build used more than 4096 MB of memory (at part.py, line 1, in <module>)"
    assert_still_builds(runner, tmp_path)


def test_output_file_size_limit(runner: CadRunner, tmp_path: Path) -> None:
    big = "import tempfile\nopen(tempfile.gettempdir() + '/big.bin', 'wb').write(bytes(3 * 1024 * 1024))\n"
    source = write(tmp_path, "part.py", big)
    error = fails(runner, source, limits=CadLimits(output_mb=1))
    assert error.kind == "limit"
    assert "larger than the 1 MB limit" in error.message
    assert_still_builds(runner, tmp_path)


SPY = """\
import ast
import os
ppid = os.getppid()
try:
    forkserver_env = open(f"/proc/{ppid}/environ", "rb").read()
except OSError:
    forkserver_env = b""
raise RuntimeError(
    f"ppid={ppid} env={sorted(os.environ)} token_in_env={'FARM_TOKEN' in os.environ} "
    f"token_in_parent={b'FARM_TOKEN' in forkserver_env or TOKEN.encode() in forkserver_env} "
)
"""


def test_child_cannot_see_the_worker_token(runner: CadRunner, tmp_path: Path) -> None:
    assert os.environ["FARM_TOKEN"] == TOKEN
    source = write(tmp_path, "spy.py", f"TOKEN = {TOKEN!r}\n" + SPY)
    report = fails(runner, source).message
    assert "token_in_env=False" in report
    assert "token_in_parent=False" in report
    assert f"ppid={os.getpid()} " not in report
    kept = report.split("env=")[1].split("]")[0]
    assert set(ast.literal_eval(kept + "]")) <= {"PATH", "HOME", "LANG", "TMPDIR"}


def test_a_build_cannot_kill_the_fork_server_and_a_dead_one_is_restarted_clean(
    runner: CadRunner, tmp_path: Path
) -> None:
    from multiprocessing import forkserver

    server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    killer = f"import os, signal\nfor pid in (os.getppid(), {server}):\n    os.kill(pid, signal.SIGKILL)\n"
    error = fails(runner, write(tmp_path, "part.py", killer))
    assert error.kind in ("exception", "crash"), error.message
    assert not _gone(server, wait_s=0.5), "a build killed the fork server"
    os.kill(server, 9)  # a fork server can still die (the OOM killer): the next build gets a new one
    assert _gone(server)
    assert_still_builds(runner, tmp_path)
    spy = write(tmp_path, "spy.py", f"TOKEN = {TOKEN!r}\n" + SPY)
    report = fails(runner, spy).message
    assert "token_in_env=False" in report and "token_in_parent=False" in report


WORKER = """\
import sys
from pathlib import Path
from workers.cad_runner import CadRunner
from workers.cad_types import CadRequest

script = Path(sys.argv[1])
CadRunner().build(CadRequest(script, script.parent / "out"))
"""


def test_a_hung_build_dies_with_its_worker(tmp_path: Path) -> None:
    source = write(tmp_path, "part.py", "import time\ntime.sleep(600)\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed worker cannot remove its build folder
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(source)], cwd=repo, env=env)
    try:
        # The build runs in a PID namespace of its own, under the fork server.
        ours = os.readlink("/proc/self/ns/pid")
        builds = _wait_for(
            lambda: [
                p
                for p in _descendants(worker.pid)
                if _pid_ns(p) not in (None, ours) and "forkserver" in _cmdline(p)  # not the sandbox probe
            ],
            60,
        )
        family = _descendants(worker.pid)
        assert builds and not any(_gone(pid, wait_s=0) for pid in builds)
    finally:
        worker.kill()
        worker.wait()
    alive = [(pid, _cmdline(pid)[:80]) for pid in family if not _gone(pid)]
    left = list(tmp_path.glob("cad-build-*"))
    sweep_stale_build_folders(tmp_path)  # what the next worker to start does
    assert left and not list(tmp_path.glob("cad-build-*"))
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert not alive, f"the build or the fork server outlived the worker: {alive}"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat_file.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _wait_for(found, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return result


def _gone(pid: int, wait_s: float = 5) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Static listing (no build123d, no execution)


def test_list_entry_points_reads_functions_and_defaults(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "part.py",
        """\
        from build123d import Align, Box

        def bracket(length: float = 40.0, *, hole=True, align=Align.MIN, tags={"a"}):
            return Box(length, 10, 10)

        def _helper(x):
            return x

        raise SystemExit("never executed")
        show(bracket())
        result = bracket()
        """,
    )
    entries = list_entry_points(source)
    assert [e["kind"] for e in entries] == ["function", "show", "result"]
    params = {p["name"]: p for p in entries[0]["params"]}
    assert entries[0]["name"] == "bracket"
    assert params["length"]["default"] == 40.0 and params["length"]["annotation"] == "float"
    assert params["hole"]["default"] is True
    assert params["align"]["default"] is None and params["align"]["default_source"] == "Align.MIN"
    assert params["tags"]["default_source"] == "{'a'}"
