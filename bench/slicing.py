"""Slicing overhead and cache benefit, side by side in one run.

Compares, on the same mesh and the same flattened profile: a slicing job through
`workers.slicer.slice_mesh` (bbox check, flattening, slicer, metadata parse) against a raw
`prusa-slicer --load profile.ini --export-gcode` run, alternating to share machine noise, then a
cache hit of the same job. Last line: one JSON object with `slice_ratio` and `cache_speedup`.
The ratios use each side's fastest run: on a shared machine the slower runs measure the other
processes, not the wrapper (the medians are printed too).
"""

from __future__ import annotations

import json
import math
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.core.printer_models import MODELS
from workers.prusaslicer import find_slicer
from workers.slice_cache import SliceCache
from workers.slicer import slice_mesh
from workers.slicer_profiles import flatten_profile, write_profile

MODEL = "MK4S"
RUNS = 5


def write_sphere(path: Path, radius: float = 20.0, rings: int = 90, segments: int = 180) -> Path:
    """A UV sphere as a binary STL: enough triangles and layers for a slice of a few seconds."""

    def point(i: int, j: int) -> tuple[float, float, float]:
        theta, phi = math.pi * i / rings, 2 * math.pi * j / segments
        return (
            radius * math.sin(theta) * math.cos(phi),
            radius * math.sin(theta) * math.sin(phi),
            radius + radius * math.cos(theta),
        )

    tris = []
    for i in range(rings):
        for j in range(segments):
            a, b, c, d = point(i, j), point(i + 1, j), point(i + 1, j + 1), point(i, j + 1)
            if i:
                tris.append((a, c, d))
            if i < rings - 1:
                tris.append((a, b, c))
    data = [b"bench sphere".ljust(80), struct.pack("<I", len(tris))]
    data += [struct.pack("<12fH", 0, 0, 0, *p, *q, *r, 0) for p, q, r in tris]
    path.write_bytes(b"".join(data))
    return path


def main() -> None:
    slicer = find_slicer()
    model = MODELS[MODEL]
    with tempfile.TemporaryDirectory(prefix="bench-slicing-") as tmp_name:
        tmp = Path(tmp_name)
        mesh = write_sphere(tmp / "sphere.stl")
        profile = write_profile(flatten_profile(model), tmp / "profile.ini")
        raw_cmd = [str(slicer), "--loglevel", "1", "--load", str(profile), "--export-gcode"]
        slice_mesh(mesh, model, tmp / "warm.gcode", slicer=slicer)  # warm caches and the page cache
        raw, job = [], []
        for i in range(RUNS):
            t0 = time.perf_counter()
            subprocess.run(
                [*raw_cmd, "-o", str(tmp / f"raw{i}.gcode"), str(mesh)], check=True, capture_output=True
            )
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = slice_mesh(mesh, model, tmp / f"job{i}.gcode", slicer=slicer)
            job.append(time.perf_counter() - t0)
        cache = SliceCache(tmp / "cache")
        slice_mesh(mesh, model, tmp / "fill.gcode", slicer=slicer, cache=cache)
        hits = []
        for i in range(RUNS):
            t0 = time.perf_counter()
            hit = slice_mesh(mesh, model, tmp / f"hit{i}.gcode", slicer=slicer, cache=cache)
            hits.append(time.perf_counter() - t0)
            assert hit.cached
    raw_s, job_s, hit_s = min(raw), min(job), min(hits)
    print(f"mesh: sphere r=20 mm, {MODEL}, {result.meta.layers} layers, {RUNS} runs each")
    medians = [statistics.median(x) for x in (raw, job, hits)]
    for label, (r, j, h) in (("fastest", (raw_s, job_s, hit_s)), ("median", medians)):
        print(f"{label}: raw prusa-slicer {r:.3f} s | slice_mesh {j:.3f} s | cache hit {h * 1000:.1f} ms")
    summary = {
        "model": MODEL,
        "raw_s": round(raw_s, 4),
        "job_s": round(job_s, 4),
        "cache_hit_s": round(hit_s, 5),
        "slice_ratio": round(job_s / raw_s, 3),
        "cache_speedup": round(job_s / hit_s, 1),
        "slice_ratio_median": round(medians[1] / medians[0], 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
