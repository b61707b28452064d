"""build123d's example gallery, run by a plain viewer harness and by the farm's build (issue #21).

Usage: python bench/gallery.py EXAMPLES_DIR [--only NAME ...] [--json OUT]

The plain harness does what CQ-editor and ocp_vscode users rely on, and no more: `show_object`,
`show`, `show_all` in the script's globals and an `ocp_vscode` module of them, the script run from
its folder in a fresh interpreter; the solids of whatever is shown (shapes, builders, raw OCP
shapes, lists) are summed by volume. It shares no code with the farm's build.

The farm's build is `farm build`'s path: the script packed with its folder (it has no project
marker), built by CadRunner in the worker's sandbox with the worker's limits, no cache. An example
the plain harness turns into solids must build on the farm with the same total volume within 1 %.
Prints one line per example, then a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLAIN_TIMEOUT_S = 600
TOLERANCE = 0.01

# Runs in a fresh interpreter, in the example's folder: argv[1] the script, prints JSON last.
PLAIN = r"""
import json, sys, time, types, runpy
started = time.perf_counter()
import build123d as bd
shown = []
def show(*objs, **kw): shown.extend(objs)
def show_object(obj, *a, **kw): shown.append(obj)
def show_all(*a, **kw):
    frame = sys._getframe(1)
    shown.extend(v for k, v in frame.f_locals.items() if not k.startswith("_"))
viewer = types.ModuleType("ocp_vscode")
viewer.show, viewer.show_object, viewer.show_all = show, show_object, show_all
def noop_attribute(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return lambda *a, **k: None
viewer.__getattr__ = noop_attribute
sys.modules["ocp_vscode"] = viewer
def solids(obj, seen):
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return [s for o in obj for s in solids(o, seen)]
    if isinstance(obj, dict):
        return [s for o in obj.values() for s in solids(o, seen)]
    if isinstance(obj, bd.BuildPart):
        obj = obj.part
    if not isinstance(obj, bd.Shape) and type(getattr(obj, "wrapped", obj)).__name__.startswith("TopoDS_"):
        obj = bd.Shape.cast(getattr(obj, "wrapped", obj))
    return list(obj.solids()) if isinstance(obj, bd.Shape) and obj.wrapped is not None else []
error = None
try:
    runpy.run_path(sys.argv[1], init_globals={"show": show, "show_object": show_object,
                   "show_all": show_all}, run_name="__main__")
except BaseException as exc:
    error = f"{type(exc).__name__}: {exc}"[:300]
found = solids(shown, set()) if error is None else []
print(json.dumps({"solids": len(found), "volume": sum(s.volume for s in found), "error": error,
                  "seconds": time.perf_counter() - started}))
"""


def plain(script: Path) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", PLAIN, script.name],
            cwd=script.parent,
            capture_output=True,
            text=True,
            timeout=PLAIN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"solids": 0, "volume": 0.0, "error": "timeout", "seconds": PLAIN_TIMEOUT_S}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"solids": 0, "volume": 0.0, "error": tail[0][:300], "seconds": time.perf_counter() - started}


def farm(runner: Any, script: Path) -> dict[str, Any]:
    from farm.core.project import pack_file
    from workers.cad_types import CadError, CadRequest

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gallery-") as tmp:
        packed = pack_file(script, Path(tmp))
        request = CadRequest(Path(packed.entry), Path(tmp) / "out", project=packed.archive)
        try:
            result = runner.build(request)
        except CadError as exc:
            return {
                "ok": False,
                "error": f"{exc.kind}: {exc.message}"[:300],
                "seconds": time.perf_counter() - started,
            }
    return {
        "ok": True,
        "objects": result.objects,
        "volume": result.volume,
        "skipped": result.skipped,
        "triangles": result.mesh.get("triangles"),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=Path)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--json", type=Path, help="write every example's figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from workers.cad_runner import CadRunner

    scripts = sorted(p for p in args.examples.glob("*.py") if not args.only or p.stem in args.only)
    runner = CadRunner()
    runner.start()
    rows = []
    try:
        for script in scripts:
            row = {"example": script.stem, "plain": plain(script)}
            row["farm"] = farm(runner, script) if row["plain"]["solids"] else None
            rows.append(row)
            print(_line(row), flush=True)
    finally:
        runner.close()
    solid = [r for r in rows if r["plain"]["solids"]]
    built = [r for r in solid if r["farm"]["ok"]]
    same = [r for r in built if _close(r["plain"]["volume"], r["farm"]["volume"])]
    summary = {
        "examples": len(rows),
        "plain_solids": len(solid),
        "farm_built": len(built),
        "volume_within_1pct": len(same),
        "plain_seconds": round(sum(r["plain"]["seconds"] for r in solid), 1),
        "farm_seconds": round(sum(r["farm"]["seconds"] for r in solid), 1),
        "failed": [r["example"] for r in solid if r not in same],
    }
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print(json.dumps(summary))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b), 1e-9)


def _line(row: dict[str, Any]) -> str:
    p, f = row["plain"], row["farm"]
    left = f"{row['example']:<40} plain: " + (
        f"{p['solids']} solids, {p['volume']:.6g} mm3, {p['seconds']:.1f} s"
        if p["solids"]
        else f"no solids ({p['error']})"
    )
    if f is None:
        return left
    if not f["ok"]:
        return f"{left} | farm: FAILED {f['error']}"
    verdict = "same volume" if _close(p["volume"], f["volume"]) else "VOLUME DIFFERS"
    skipped = f", skipped {len(f['skipped'])}" if f["skipped"] else ""
    farm = f"{f['objects']} objects, {f['volume']:.6g} mm3, {f['seconds']:.1f} s{skipped}"
    return f"{left} | farm: {farm}, {verdict}"


if __name__ == "__main__":
    main()
