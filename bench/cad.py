"""CAD stage latency: the warm, cached worker path against a cold `python script.py`, side by side.

    .venv/bin/python bench/cad.py [--small-runs 5] [--heavy-runs 3] [--hit-runs 20]

(a) small part and (b) heavy part (seconds of B-rep booleans), each also with the sandbox off, side
by side, for its cost: from calling `cached_build` on a warm
CadRunner (cache bypassed, so the build runs) until the STL and 3MF are stored in the cache, against a
fresh interpreter that imports build123d, builds the same part and exports both files with the same
tolerances. (c) a cache hit against that cold path for the small part. Runs are interleaved so that
drift on the machine hits both sides alike; medians are compared. (d) what the mesh checks and the
two PNG previews cost inside each warm build (the child times them; the cold script does neither),
as milliseconds and as a share of the warm build. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.cad_cache import CadCache
    from workers.cad_runner import CadRunner
    from workers.cad_types import CadResult

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"small_ratio": 0.3, "heavy_ratio": 1.05, "cache_speedup": 50.0}

SMALL = '''\
from build123d import Axis, Box, BuildPart, Hole, fillet


def part(length: float = 40.0, width: float = 20.0, height: float = 10.0, hole_d: float = 5.0):
    """The toolchain trial's bracket: a box, two fillets and a through-hole."""
    with BuildPart() as p:
        Box(length, width, height)
        fillet(p.edges().filter_by(Axis.Z), radius=3.0)
        fillet(p.edges().group_by(Axis.Z)[-1], radius=1.0)
        Hole(radius=hole_d / 2)
    return p.part
'''

HEAVY = '''\
from build123d import Axis, Box, BuildPart, Locations, Mode, chamfer, fillet


def part(n: int = 8, pitch: float = 10.0, thick: float = 4.0):
    """A grid plate: one boolean per pocket, so seconds of B-rep work but a small, flat-faced mesh."""
    size = n * pitch + pitch
    with BuildPart() as plate:
        Box(size, size, thick)
        fillet(plate.edges().filter_by(Axis.Z), radius=3)
        for i in range(n):
            for j in range(n):
                with Locations(((i - (n - 1) / 2) * pitch, (j - (n - 1) / 2) * pitch, thick / 2)):
                    Box(pitch * 0.6, pitch * 0.6, thick / 2, mode=Mode.SUBTRACT)
        chamfer(plate.edges().group_by(Axis.Z)[-1], length=0.4)
    return plate.part
'''

# What a user would run by hand: the same part, exported the way workers/cad_child.py exports it.
COLD_FOOTER = """

if __name__ == "__main__":
    import sys

    from build123d import Mesher, Unit, export_stl

    shape = part()
    export_stl(shape, sys.argv[1], tolerance={tol}, angular_tolerance={ang})
    mesher = Mesher(unit=Unit.MM)
    mesher.add_shape(shape, linear_deflection={tol}, angular_deflection={ang}, part_number="part")
    mesher.write(sys.argv[2])
"""


def exporter_tolerances() -> tuple[float, float]:
    """STL_TOLERANCE and ANGULAR_TOLERANCE from cad_child.py, read without importing build123d."""
    tree = ast.parse((REPO / "workers" / "cad_child.py").read_text())
    wanted = {"STL_TOLERANCE", "ANGULAR_TOLERANCE"}
    found = {
        target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in wanted
    }
    return float(found["STL_TOLERANCE"]), float(found["ANGULAR_TOLERANCE"])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cold_run(script: Path, outdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), str(outdir / "cold.stl"), str(outdir / "cold.3mf")],
        cwd=outdir,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the cold script {script.name} failed:\n{done.stderr}")


class Case:
    """One part, written twice: as a worker gets it, and as a standalone script."""

    def __init__(self, name: str, source: str, folder: Path, tolerances: tuple[float, float]) -> None:
        self.name = name
        self.folder = folder / name
        self.folder.mkdir()
        self.source = self.folder / f"{name}.py"
        self.source.write_text(source)
        self.cold_script = self.folder / f"cold_{name}.py"
        footer = COLD_FOOTER.format(tol=tolerances[0], ang=tolerances[1])
        self.cold_script.write_text(source + footer)
        self.warm: list[float] = []
        self.cold: list[float] = []
        self.hit: list[float] = []
        self.check_ms: list[float] = []
        self.preview_ms: list[float] = []
        self.unsandboxed: list[float] = []  # the same warm build with FARM_CAD_SANDBOX=off
        self.triangles = 0
        self.stl_bytes: dict[str, int] = {}


def measure(
    case: Case, runs: int, hit_runs: int, runner: CadRunner, cache: CadCache, unsandboxed: CadRunner
) -> None:
    from workers.cad_cache import cached_build
    from workers.cad_types import CadRequest

    request = CadRequest(source=case.source, outdir=case.folder / "warm-out", entry="part")
    built: list[CadResult] = []

    def warm() -> None:
        built.append(cached_build(runner, cache, request, use_cache=False)[0])

    def open_build() -> None:
        cached_build(unsandboxed, cache, request, use_cache=False)

    for _ in range(runs):
        case.cold.append(timed(lambda: cold_run(case.cold_script, case.folder)))
        case.warm.append(timed(warm))
        case.unsandboxed.append(timed(open_build))
    case.check_ms = [float(result.mesh["check_ms"]) for result in built]
    case.preview_ms = [float(result.mesh["preview_ms"]) for result in built]
    case.triangles = int(built[0].mesh["triangles"])
    for _ in range(hit_runs):
        case.hit.append(timed(lambda: _expect_hit(cached_build(runner, cache, request))))
    warm_result, _ = cached_build(runner, cache, request)
    case.stl_bytes = {
        "warm": warm_result.stl.stat().st_size,
        "cold": (case.folder / "cold.stl").stat().st_size,
    }


def _expect_hit(outcome: tuple[CadResult, bool]) -> None:
    if not outcome[1]:
        raise SystemExit("expected a cache hit and got a build")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def print_table(cases: list[Case], start_s: float) -> None:
    print(f"\nfork server start (once per worker, not per build): {start_s:.2f} s")
    print(f"{'part':<7}{'path':<34}{'runs':>5}{'median':>11}{'min':>11}{'max':>11}")
    for case in cases:
        rows = [
            ("cold `python script.py`", case.cold),
            ("warm worker (build + store)", case.warm),
            ("  the same, sandbox off", case.unsandboxed),
            ("cache hit", case.hit),
        ]
        for label, values in rows:
            print(
                f"{case.name:<7}{label:<34}{len(values):>5}{median_ms(values):>9.1f}ms"
                f"{min(values) * 1000:>9.1f}ms{max(values) * 1000:>9.1f}ms"
            )
        cost = median_ms(case.warm) - median_ms(case.unsandboxed)
        share = cost / median_ms(case.cold)
        print(f"{'':<7}the sandbox's cost: {cost:+.1f} ms a build ({share:+.1%} of cold)")
        same = "same" if case.stl_bytes["warm"] == case.stl_bytes["cold"] else "DIFFERENT"
        print(f"{'':<7}STL bytes warm {case.stl_bytes['warm']}, cold {case.stl_bytes['cold']} ({same})")
        check, preview = statistics.median(case.check_ms), statistics.median(case.preview_ms)
        share = (check + preview) / median_ms(case.warm)
        print(
            f"{'':<7}inside the warm build: mesh checks {check:.1f} ms, previews (256 + 96 px) "
            f"{preview:.1f} ms for {case.triangles} triangles, {share:.1%} of the build"
        )


def figures(small: Case, heavy: Case) -> dict[str, object]:
    ratios = {
        "small_ratio": round(statistics.median(small.warm) / statistics.median(small.cold), 4),
        "heavy_ratio": round(statistics.median(heavy.warm) / statistics.median(heavy.cold), 4),
        "cache_speedup": round(statistics.median(small.cold) / statistics.median(small.hit), 1),
    }
    ok = (
        ratios["small_ratio"] <= TARGETS["small_ratio"]
        and ratios["heavy_ratio"] <= TARGETS["heavy_ratio"]
        and ratios["cache_speedup"] >= TARGETS["cache_speedup"]
    )
    medians = {
        f"{case.name}_{path}_ms": round(median_ms(getattr(case, path)), 1)
        for case in (small, heavy)
        for path in ("cold", "warm", "hit", "unsandboxed")
    }
    costs = {
        f"{case.name}_sandbox_cost_ms": round(median_ms(case.warm) - median_ms(case.unsandboxed), 1)
        for case in (small, heavy)
    }
    outputs = {
        f"{case.name}_{what}_ms": round(statistics.median(getattr(case, f"{what}_ms")), 1)
        for case in (small, heavy)
        for what in ("check", "preview")
    }
    return {**ratios, "targets_met": ok, **medians, **costs, **outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-runs", type=int, default=5)
    parser.add_argument("--heavy-runs", type=int, default=3)
    parser.add_argument("--hit-runs", type=int, default=20)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))  # run as a script from anywhere: `workers` lives at the repo root
    from workers.cad_cache import CadCache
    from workers.cad_runner import CadRunner
    from workers.sandbox import Policy

    tolerances = exporter_tolerances()
    with tempfile.TemporaryDirectory(prefix="bench-cad-") as tmp:
        folder = Path(tmp)
        small = Case("small", SMALL, folder, tolerances)
        heavy = Case("heavy", HEAVY, folder, tolerances)
        cache = CadCache(folder / "cache")
        runner = CadRunner()
        unsandboxed = CadRunner(policy=Policy(enabled=False))  # shares the one fork server
        try:
            start_s = timed(runner.start)
            unsandboxed.start()
            assert runner.sandbox is not None
            print(f"sandbox: {', '.join(layer.name for layer in runner.sandbox.layers if layer.active)}")
            measure(small, args.small_runs, args.hit_runs, runner, cache, unsandboxed)
            measure(heavy, args.heavy_runs, args.hit_runs, runner, cache, unsandboxed)
        finally:
            unsandboxed.close()
            runner.close()
        print_table([small, heavy], start_s)
    result = figures(small, heavy)
    wanted = ", ".join(f"{k} {'>=' if k == 'cache_speedup' else '<='} {v:g}" for k, v in TARGETS.items())
    print(f"targets: {wanted}; met: {result['targets_met']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
