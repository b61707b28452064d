"""Checks and a preview image for an exported mesh, with numpy only.

The CAD child runs both right after writing the STL (numpy is already loaded with build123d), so a
shape that would not print fails the build with a message that says what is wrong, and every build
gets a small isometric picture of itself. No build123d and no image library: the preview is a tiny
software renderer (orthographic projection, flat shading, a z-buffer) and a PNG written with zlib.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import SupportsFloat

import numpy as np

MIN_THICKNESS_MM = 0.01  # thinner than any nozzle by far: a flat sheet, not a solid
NEAR_ZERO_MM = 1e-6  # a coordinate this close to zero is zero (see snap_near_zero)
PREVIEW_SIZES = (256, 96)
PART_RGB = (236, 118, 44)  # a filament orange; the background stays transparent
# Rendered this many times larger, then averaged down: smooth edges without a rasterizer's AA.
SUPERSAMPLE = {96: 3}  # small images need more; others get 2
MARGIN = 0.06  # of the image, on each side
CHUNK_CANDIDATES = 1 << 21  # pixel tests per numpy batch: bounds the renderer's memory (~100 MB)
_FLOAT_RE = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ASCII_VERTEX = re.compile(rb"vertex\s+(" + _FLOAT_RE + rb")\s+(" + _FLOAT_RE + rb")\s+(" + _FLOAT_RE + rb")")


class MeshProblem(Exception):
    """The mesh would not print; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class MeshReport:
    triangles: int
    open_edges: int  # edges with an odd number of triangles: holes in the surface
    nonmanifold_edges: int  # edges of more than two triangles: solids touching along an edge
    bbox: tuple[tuple[float, float, float], tuple[float, float, float]]

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["bbox"] = [list(self.bbox[0]), list(self.bbox[1])]
        return data


# --------------------------------------------------------------------------------------------------
# Reading


def point(values: Iterable[SupportsFloat]) -> tuple[float, float, float]:
    """Three coordinates (a numpy row, say) as plain floats."""
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def read_stl(path: Path) -> np.ndarray:
    """The triangles of a binary or ASCII STL as an (n, 3, 3) float32 array, in file order."""
    data = Path(path).read_bytes()
    if len(data) >= 84:
        (count,) = struct.unpack_from("<I", data, 80)
        if len(data) == 84 + 50 * count:
            facet = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
            return np.frombuffer(data, facet, count, 84)["v"].copy()
    numbers = np.array(_ASCII_VERTEX.findall(data), dtype=np.float32)
    return numbers.reshape(-1, 3, 3)


def snap_near_zero(tris: np.ndarray) -> np.ndarray:
    """`tris` with coordinates within NEAR_ZERO_MM of zero set to zero, in place.

    A rotated solid's vertex on an axis comes out of one face's transform as 0.0 and out of its
    neighbour's as -4e-15 (cos 90 is not 0 in floating point): two points in float32, so the edges
    there would not pair up when vertices are welded bit for bit, and a closed solid would look open.
    """
    tris[np.abs(tris) < NEAR_ZERO_MM] = 0
    return tris


# --------------------------------------------------------------------------------------------------
# Checks


def inspect_mesh(tris: np.ndarray) -> MeshReport:
    """Triangle and edge counts and the bounding box; raises MeshProblem only for NaN/inf."""
    tris = np.asarray(tris, dtype=np.float32).reshape(-1, 3, 3)
    if len(tris) == 0:
        return MeshReport(0, 0, 0, ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)))
    if not np.isfinite(tris).all():
        raise MeshProblem(
            "the mesh has coordinates that are not finite numbers (NaN or infinity): a scale, "
            "location or parameter in the script produced them; check those values"
        )
    low, high = tris.min(axis=(0, 1)), tris.max(axis=(0, 1))
    open_edges, nonmanifold = _edge_counts(tris)
    return MeshReport(len(tris), open_edges, nonmanifold, (point(low), point(high)))


def _edge_counts(tris: np.ndarray) -> tuple[int, int]:
    """(open, non-manifold) edges after welding vertices that are bit-for-bit equal.

    OCCT meshes the faces of one solid with a shared discretisation of their common edges, so a
    closed solid's STL has every edge in exactly two triangles once equal vertices are merged.
    """
    verts = np.ascontiguousarray(tris.reshape(-1, 3)) + np.float32(0)  # -0.0 -> 0.0: one key per point
    keys = verts.view(np.dtype((np.void, 12))).ravel()
    _, index = np.unique(keys, return_inverse=True)
    faces = index.reshape(-1, 3).astype(np.int64)
    # Degenerate triangles (two corners welded together) have no area and bound nothing.
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    edge_keys = np.minimum(a, b) * (int(index.max()) + 1) + np.maximum(a, b)
    _, counts = np.unique(edge_keys, return_counts=True)
    return int(np.count_nonzero(counts % 2)), int(np.count_nonzero(counts > 2))


def check_mesh(tris: np.ndarray) -> MeshReport:
    """The report of a printable mesh, or MeshProblem: empty, not finite, flat, or not closed."""
    report = inspect_mesh(tris)
    if report.triangles == 0:
        raise MeshProblem(
            "the mesh is empty: the shape has no faces to print; check that the part is a solid with volume"
        )
    low, high = report.bbox
    size = [h - lo for lo, h in zip(low, high, strict=True)]
    thinnest = min(range(3), key=lambda i: size[i])
    if size[thinnest] < MIN_THICKNESS_MM:
        dims = " x ".join(f"{s:.4g}" for s in size)
        raise MeshProblem(
            f"the part is {size[thinnest]:.3g} mm thick along {'XYZ'[thinnest]} (size {dims} mm): it is "
            "flat, a face or sheet rather than a solid; extrude or thicken it"
        )
    if report.open_edges:
        raise MeshProblem(
            f"the mesh has {report.open_edges} open edges: the shape is not a closed solid; check for "
            "faces that are not part of a solid (a Solid made from an open shell, a missing face, "
            "a failed boolean) and build the part from closed solids"
        )
    return report


# --------------------------------------------------------------------------------------------------
# Preview


def _view_axes() -> np.ndarray:
    """Rows: screen right, screen up, viewing direction, for an isometric view from front-right-top."""
    view = -np.array([1.0, -1.0, 1.0]) / np.sqrt(3)
    right = np.cross(view, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, view)
    return np.stack([right, up, view])


Frame = tuple[tuple[float, float], float]  # the view's centre (screen x, y) and the span it fits


def view_frame(*meshes: np.ndarray) -> Frame | None:
    """The frame that fits every one of `meshes` in the isometric view (None: all empty). Rendered
    in one frame, two parts are drawn at one scale and place, so what differs is their geometry."""
    points = [np.asarray(m, dtype=np.float64).reshape(-1, 3) for m in meshes]
    points = [p for p in points if len(p)]
    if not points:
        return None
    xy = np.concatenate(points) @ _view_axes()[:2].T
    low, high = xy.min(axis=0), xy.max(axis=0)
    centre = (low + high) / 2
    return (float(centre[0]), float(centre[1])), float((high - low).max())


def render(
    tris: np.ndarray, size: int, supersample: int | None = None, frame: Frame | None = None
) -> np.ndarray:
    """An isometric, flat-shaded picture of the mesh: (size, size, 4) uint8 RGBA, transparent around.

    Triangles facing away are culled; the rest are rasterised at pixel centres with a z-buffer,
    in batches so that memory stays bounded whatever the triangle count. Without a `frame` the
    part fills the picture.
    """
    supersample = supersample or SUPERSAMPLE.get(size, 2)
    big = size * supersample
    shade = np.zeros((big, big), dtype=np.float32)  # light on the part's face at each sample, 0 off it
    tris = np.asarray(tris, dtype=np.float64).reshape(-1, 3, 3)
    if len(tris):
        axes = _view_axes()
        # (n, 3, 3): screen x, screen y, depth. One flat product: a stack of 3x3 ones is far slower.
        projected = (tris.reshape(-1, 3) @ axes.T).reshape(-1, 3, 3)
        normals = _cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        lengths = np.linalg.norm(normals, axis=1)
        facing = (normals @ axes[2] < 0) & (lengths > 0)
        xy = projected[..., :2]
        if frame is None:
            low, high = xy.reshape(-1, 2).min(axis=0), xy.reshape(-1, 2).max(axis=0)
            frame = (float(low[0] + high[0]) / 2, float(low[1] + high[1]) / 2), float((high - low).max())
        centre, span = frame
        scale = big * (1 - 2 * MARGIN) / max(span, 1e-9)
        px = (xy[..., 0] - centre[0]) * scale + big / 2
        py = big / 2 - (xy[..., 1] - centre[1]) * scale
        screen = np.stack([px, py, projected[..., 2]], axis=-1)[facing]
        unit = normals[facing] / lengths[facing, None]
        owner = _rasterise(screen, big)
        hit = owner >= 0
        shade[hit] = _shade(unit, axes)[owner[hit]]
    return _downsample(shade, supersample)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # np.cross is general and several times slower on (n, 3) arrays.
    return np.stack(
        [
            u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1],
            u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2],
            u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0],
        ],
        axis=1,
    )


def _shade(unit_normals: np.ndarray, axes: np.ndarray) -> np.ndarray:
    # Light from over the viewer's left shoulder: tops brightest, then the left, then the right side.
    right, up, view = axes
    light = -view * 0.55 + up * 0.7 - right * 0.35
    light /= np.linalg.norm(light)
    # Never 0: a sample with no light would read as no part in _downsample.
    return np.clip(0.34 + 0.66 * np.clip(unit_normals @ light, 0.0, 1.0), 0.01, 1.0).astype(np.float32)


def _rasterise(screen: np.ndarray, big: int) -> np.ndarray:
    """(big, big) index of the nearest triangle at each pixel centre, -1 where none is.

    Scanline spans, not bounding boxes: a long thin triangle across the part costs only the pixels
    it covers. Triangles go in batches so that memory stays bounded whatever their number.
    """
    zbuf = np.full(big * big, np.inf)
    owner = np.full(big * big, -1, dtype=np.int64)
    plane = _planes(screen)
    y = screen[..., 1]
    y0 = np.clip(np.ceil(y.min(axis=1) - 0.5), 0, big).astype(np.int64)
    y1 = np.clip(np.floor(y.max(axis=1) - 0.5), -1, big - 1).astype(np.int64)
    rows = np.maximum(y1 - y0 + 1, 0)
    # A row of a triangle can hold up to `big` pixels: batch by rows x big, an upper bound.
    ends = np.cumsum(rows) * big
    start = 0
    while start < len(screen):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + CHUNK_CANDIDATES, side="right")))
        batch = np.arange(start, stop)
        _rasterise_batch(screen, plane, batch[rows[batch] > 0], y0, rows, zbuf, owner, big)
        start = stop
    return owner.reshape(big, big)


def _rasterise_batch(
    screen: np.ndarray,
    plane: np.ndarray,
    tri: np.ndarray,
    y0: np.ndarray,
    rows: np.ndarray,
    zbuf: np.ndarray,
    owner: np.ndarray,
    big: int,
) -> None:
    if len(tri) == 0:
        return
    # One entry per (triangle, pixel row): where the row's centre line crosses the triangle.
    t = np.repeat(tri, rows[tri])
    row = y0[t] + np.arange(len(t)) - np.repeat(np.cumsum(rows[tri]) - rows[tri], rows[tri])
    yc = row + 0.5
    left = np.full(len(t), np.inf)
    right = np.full(len(t), -np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        xa, ya = screen[t, i, 0], screen[t, i, 1]
        xb, yb = screen[t, j, 0], screen[t, j, 1]
        spans = (np.minimum(ya, yb) <= yc) & (yc <= np.maximum(ya, yb)) & (ya != yb)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(spans, xa + (yc - ya) * (xb - xa) / (yb - ya), np.nan)
        left = np.where(spans, np.minimum(left, x), left)
        right = np.where(spans, np.maximum(right, x), right)
    x0 = np.clip(np.ceil(left - 0.5), 0, big).astype(np.int64, copy=False)
    x1 = np.clip(np.floor(right - 0.5), -1, big - 1).astype(np.int64, copy=False)
    width = np.where(np.isfinite(left) & np.isfinite(right), np.maximum(x1 - x0 + 1, 0), 0)
    total = int(width.sum())
    if total == 0:
        return
    span = np.repeat(np.arange(len(t)), width)
    px = x0[span] + np.arange(total) - np.repeat(np.cumsum(width) - width, width)
    py = row[span]
    t = t[span]
    p = plane[t]
    depth = p[:, 0] + p[:, 1] * (px + 0.5) + p[:, 2] * (py + 0.5)
    pixel = py * big + px
    # The nearest candidate per pixel in this batch, then against what earlier batches drew.
    order = np.lexsort((depth, pixel))
    pixel, depth, t = pixel[order], depth[order], t[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pixel, depth, t = pixel[first], depth[first], t[first]
    nearer = depth < zbuf[pixel]
    zbuf[pixel[nearer]] = depth[nearer]
    owner[pixel[nearer]] = t[nearer]


def _planes(screen: np.ndarray) -> np.ndarray:
    """(n, 3): depth = c0 + c1 * x + c2 * y on each triangle's plane (corners: screen x, y, depth)."""
    a, b, c = screen[:, 0], screen[:, 1], screen[:, 2]
    ab, ac = b - a, c - a
    det = ab[:, 0] * ac[:, 1] - ac[:, 0] * ab[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        dzdx = (ab[:, 2] * ac[:, 1] - ac[:, 2] * ab[:, 1]) / det
        dzdy = (ac[:, 2] * ab[:, 0] - ab[:, 2] * ac[:, 0]) / det
        out = np.stack([a[:, 2] - dzdx * a[:, 0] - dzdy * a[:, 1], dzdx, dzdy], axis=1)
    # An edge-on triangle (det 0) covers a line at most: a flat plane at its nearest corner.
    flat = ~np.isfinite(out).all(axis=1)
    out[flat] = np.stack([screen[flat, :, 2].min(axis=1), np.zeros(flat.sum()), np.zeros(flat.sum())], axis=1)
    return out


def _downsample(shade: np.ndarray, factor: int) -> np.ndarray:
    """RGBA from factor x factor blocks of samples: coverage is alpha, the mean light of the covered
    samples the colour's brightness (premultiplied averaging, so edges blend into transparency)."""
    size = shade.shape[0] // factor
    covered = (shade > 0).astype(np.float32).reshape(size, factor, size, factor).sum(axis=(1, 3))
    light = shade.reshape(size, factor, size, factor).sum(axis=(1, 3))
    out = np.zeros((size, size, 4), dtype=np.float32)
    some = covered > 0
    out[some, :3] = (light[some] / covered[some])[:, None] * np.array(PART_RGB, dtype=np.float32)
    out[..., 3] = covered * (255.0 / (factor * factor))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_bytes(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of an (h, w, 4) uint8 array; rows use the Sub filter (flat areas pack well)."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    height, width = rgba.shape[:2]
    rows = rgba.reshape(height, width * 4)
    filtered = rows.copy()
    filtered[:, 4:] = rows[:, 4:] - rows[:, :-4]  # uint8 arithmetic wraps modulo 256, as PNG wants
    raw = np.concatenate([np.ones((height, 1), dtype=np.uint8), filtered], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_previews(tris: np.ndarray, paths: dict[int, Path]) -> None:
    """Render the mesh at each size and write it as a PNG to paths[size]."""
    for size, path in paths.items():
        Path(path).write_bytes(png_bytes(render(tris, size)))
