"""Two builds' parts side by side, the regions where they differ marked (`farm diff --image`).

Each build's preview is scaled to fit its own part, so two previews differ in zoom as much as in
shape. Here both meshes are drawn from one camera in one frame (farm.core.mesh.view_frame of both):
a pixel that differs is geometry that differs. Changed pixels are grouped into regions, each
boxed in MARK red on both sides.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from farm.core.mesh import render, view_frame

PANEL = 256  # px a side, as the previews
CAPTION = 22  # px above the panels
GAP = 8
MARK = (255, 0, 0)  # nothing else in the picture is this colour: the part is orange, text black
TINT = (255, 0, 255, 110)  # over the part where it changed; the background stays plain
BACKGROUND = (245, 245, 245)
ALPHA_DIFF = 96  # coverage that differs this much (of 255): part on one side, not the other
SHADE_DIFF = 24  # both covered, the light differs this much: a face turned or moved
CELL = 8  # changed pixels are grouped on a grid of CELL x CELL px cells
MIN_PIXELS = 3  # a region of fewer changed pixels is edge noise (two tessellations of one curve)
PAD = 3  # px around a region's box


@dataclass(frozen=True)
class DiffImage:
    png: bytes
    regions: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) within a panel, inclusive


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where two RGBA renders of one frame differ: (h, w) bool."""
    alpha_a, alpha_b = a[..., 3].astype(np.int16), b[..., 3].astype(np.int16)
    coverage = np.abs(alpha_a - alpha_b) > ALPHA_DIFF
    both = (alpha_a > 128) & (alpha_b > 128)
    light = np.abs(a[..., :3].astype(np.int16) - b[..., :3].astype(np.int16)).max(axis=2) > SHADE_DIFF
    return coverage | (both & light)


def regions(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes around the groups of changed pixels: cells holding any are joined to their neighbours
    (diagonals too), and each group's box is the changed pixels' own, padded."""
    h, w = mask.shape
    rows, cols = -(-h // CELL), -(-w // CELL)
    padded = np.zeros((rows * CELL, cols * CELL), dtype=bool)
    padded[:h, :w] = mask
    counts = padded.reshape(rows, CELL, cols, CELL).sum(axis=(1, 3))
    seen = np.zeros_like(counts, dtype=bool)
    boxes = []
    for start in zip(*np.nonzero(counts), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        group, todo = [], deque([start])
        while todo:
            r, c = todo.popleft()
            group.append((r, c))
            for nr in range(max(r - 1, 0), min(r + 2, rows)):
                for nc in range(max(c - 1, 0), min(c + 2, cols)):
                    if counts[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        todo.append((nr, nc))
        if sum(int(counts[cell]) for cell in group) < MIN_PIXELS:
            continue
        ys, xs = [], []
        for r, c in group:
            yy, xx = np.nonzero(padded[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL])
            ys.append(yy + r * CELL)
            xs.append(xx + c * CELL)
        y, x = np.concatenate(ys), np.concatenate(xs)
        boxes.append(
            (
                max(int(x.min()) - PAD, 0),
                max(int(y.min()) - PAD, 0),
                min(int(x.max()) + PAD, w - 1),
                min(int(y.max()) + PAD, h - 1),
            )
        )
    return sorted(boxes)


def _panel(rgba: np.ndarray, mask: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    panel = Image.new("RGBA", (PANEL, PANEL), (*BACKGROUND, 255))
    panel.alpha_composite(Image.fromarray(rgba, "RGBA"))
    tint = np.zeros((PANEL, PANEL, 4), dtype=np.uint8)
    tint[mask & (rgba[..., 3] > 128)] = TINT  # this side's material that the other lacks or turns
    panel.alpha_composite(Image.fromarray(tint, "RGBA"))
    draw = ImageDraw.Draw(panel)
    for box in boxes:
        draw.rectangle(box, outline=MARK, width=2)
    return panel.convert("RGB")


def diff_image(tris_a: np.ndarray, tris_b: np.ndarray, captions: tuple[str, str]) -> DiffImage:
    """Both parts from one camera at one scale, side by side, their differences boxed."""
    # A submitted mesh was never checked: a NaN corner would make the shared frame NaN.
    tris_a, tris_b = (t[np.isfinite(t).all(axis=(1, 2))] for t in (tris_a, tris_b))
    frame = view_frame(tris_a, tris_b)
    a = render(tris_a, PANEL, frame=frame)
    b = render(tris_b, PANEL, frame=frame)
    mask = changed_mask(a, b)
    boxes = regions(mask)
    inside = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
    mask &= inside  # edge noise outside every region is not marked
    out = Image.new("RGB", (2 * PANEL + 3 * GAP, PANEL + CAPTION + GAP), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for i, (rgba, caption) in enumerate(((a, captions[0]), (b, captions[1]))):
        left = GAP + i * (PANEL + GAP)
        draw.text((left, 5), caption[:48], fill=(0, 0, 0))
        out.paste(_panel(rgba, mask, boxes), (left, CAPTION))
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=True)
    return DiffImage(buf.getvalue(), boxes)
