"""What `GET /api/builds/{a}/diff/{b}/image` costs the coordinator: both meshes drawn from one
camera (farm/core/mesh.py), compared, boxed and written as a PNG (farm/coordinator/diffimage.py).

Meshes of growing size: the bracket (examples/bracket.py, exported by build123d) and UV spheres
made with numpy up to the route's limit (a million triangles each), the second of each pair a little
larger so that there is a difference to find. Ends with one JSON line.

    .venv/bin/python bench/diff_image.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from farm.coordinator.diffimage import diff_image  # noqa: E402
from farm.core.mesh import read_stl  # noqa: E402


def sphere(triangles: int, radius: float) -> np.ndarray:
    """A closed UV sphere of about `triangles` triangles, (n, 3, 3) float32."""
    rings = max(4, int((triangles / 4) ** 0.5))
    segments = 2 * rings
    theta = np.linspace(0, np.pi, rings + 1)
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    pts = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1) * radius
    a, b = pts[:-1, :-1], pts[:-1, 1:]
    c, d = pts[1:, :-1], pts[1:, 1:]
    tris = np.concatenate(
        [np.stack([a, c, d], -2).reshape(-1, 3, 3), np.stack([a, d, b], -2).reshape(-1, 3, 3)]
    )
    return tris.astype(np.float32)


def bracket_pair() -> tuple[np.ndarray, np.ndarray]:
    import build123d as bd

    sys.path.insert(0, str(REPO / "examples"))
    from bracket import bracket

    with tempfile.TemporaryDirectory() as tmp:
        meshes = []
        for length in (40, 60):
            path = Path(tmp) / f"b{length}.stl"
            bd.export_stl(bracket(length=length), path)
            meshes.append(read_stl(path))
    return meshes[0], meshes[1]


def timed(a: np.ndarray, b: np.ndarray, runs: int) -> tuple[float, int]:
    times, regions = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        regions = len(diff_image(a, b, ("a", "b")).regions)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, regions


def main() -> None:
    cases = {"bracket": bracket_pair()}
    for n in (20_000, 200_000, 1_000_000):
        cases[f"sphere {n:,}"] = (sphere(n, 20), sphere(n, 21))
    results = {}
    for name, (a, b) in cases.items():
        runs = 5 if len(a) < 500_000 else 2
        ms, regions = timed(a, b, runs)
        results[name] = {"triangles": len(a) + len(b), "median_ms": round(ms, 1), "regions": regions}
        print(f"{name:18} {len(a) + len(b):>10,} triangles  {ms:8.1f} ms  {regions} regions", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
