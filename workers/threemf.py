"""The build's 3MF package, written from the meshes the build already has (the STL's triangles).

build123d's Mesher (lib3mf) meshes every object a second time, holds the whole model in memory
(a large part ran it out of memory: std::bad_alloc), and refuses a mesh whose edges are not each
shared by exactly two triangles ("3mf mesh is invalid"), as is a solid that touches itself along an
edge (two blocks drawn as one outline, meeting at a corner, then extruded), which PrusaSlicer
prints. This module writes the 3MF itself, streaming, following the 3MF core specification: an OPC zip with
[Content_Types].xml, _rels/.rels and 3D/3dmodel.model, one <object> per printed object, each a
<mesh> of vertices and triangles in millimetres, and a <build> with one <item> per object.

The triangles come from the STL the build wrote (see `split_by_object`): the same tessellation,
welded into indexed meshes. Where lumps of one object meet along an edge or at a point, each lump
gets its own copies of the vertices there, so that every edge of the written mesh has exactly two
triangles, as the specification asks of a model object.
"""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

CORE_NS = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
MODEL_PATH = "3D/3dmodel.model"
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>'
    "</Types>\n"
)
RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    f'<Relationship Target="/{MODEL_PATH}" Id="rel0" '
    'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>'
    "</Relationships>\n"
)


@dataclass
class MeshObject:
    """One object of the package: (n, 3, 3) triangles as the STL has them, wound outward."""

    triangles: np.ndarray
    part_number: str | None = None
    name: str | None = None
    color: tuple[float, float, float, float] | None = None  # RGBA, 0..1


# --------------------------------------------------------------------------------------------------
# The STL's triangles, object by object


def face_triangle_counts(shape: Any) -> list[int]:
    """Triangles of each face of `shape` in the order OCCT's STL writer visits them (0 where a face
    has no triangulation). The shape must have been meshed, as export_stl does."""
    from OCP.BRep import BRep_Tool
    from OCP.TopAbs import TopAbs_FACE
    from OCP.TopExp import TopExp_Explorer
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS

    as_face = getattr(TopoDS, "Face_s", None) or TopoDS.Face  # OCP renamed static methods once
    counts = []
    explorer = TopExp_Explorer(shape.wrapped, TopAbs_FACE)
    while explorer.More():
        poly = BRep_Tool.Triangulation_s(as_face(explorer.Current()), TopLoc_Location())
        counts.append(0 if poly is None else poly.NbTriangles())
        explorer.Next()
    return counts


def split_by_object(stl_triangles: np.ndarray, objects: Sequence[Any]) -> list[np.ndarray] | None:
    """The STL's triangles cut into one block per object, or None when they do not add up.

    The STL of a compound holds its faces in explorer order, which is each object's faces in turn
    when the compound was made of the objects in order (see cad_child.export)."""
    counts = [sum(face_triangle_counts(shape)) for shape in objects]
    if sum(counts) != len(stl_triangles):
        return None
    edges = np.cumsum([0, *counts])
    return [stl_triangles[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------------------------------
# Indexed meshes


def weld(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (k, 3) float32, faces (m, 3) int64): bit-equal corners merged, triangles that lose
    their area in the merge dropped. Faces keep the triangles' winding."""
    tris = np.ascontiguousarray(np.asarray(triangles, dtype=np.float32).reshape(-1, 3, 3)) + np.float32(0)
    if len(tris) == 0:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
    flat = tris.reshape(-1, 3)
    keys = flat.view(np.dtype((np.void, 12))).ravel()
    _, first, index = np.unique(keys, return_index=True, return_inverse=True)
    faces = index.reshape(-1, 3).astype(np.int64)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    return flat[first], faces[keep]


def _pair_around_edges(
    vertices: np.ndarray, faces: np.ndarray, order: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """(p, 2) half-edges (face * 3 + corner) that face each other across the same solid material.

    `order` sorts the half-edges by edge; `starts` are where each edge's run begins. An edge of two
    triangles pairs them. Around an edge of more (solids or lumps meeting there), the triangles are
    taken in turn about the edge: the material lies between a triangle running against the edge's
    direction and the next one counter-clockwise, running with it, so those two are paired.
    """
    counts = np.diff(np.append(starts, len(order)))
    twos = starts[counts == 2]
    pairs = [np.stack([order[twos], order[twos + 1]], axis=1)]
    for start, count in zip(starts[counts > 2], counts[counts > 2], strict=True):
        half = order[start : start + count]
        f, k = half // 3, half % 3
        u, w, o = faces[f, k], faces[f, (k + 1) % 3], faces[f, (k + 2) % 3]
        a, b = int(min(u[0], w[0])), int(max(u[0], w[0]))
        axis = vertices[b].astype(np.float64) - vertices[a]
        axis /= np.linalg.norm(axis)
        out = vertices[o].astype(np.float64) - vertices[a]
        out -= np.outer(out @ axis, axis)
        x = out[0] / (np.linalg.norm(out[0]) or 1.0)
        y = np.cross(axis, x)
        turn = np.argsort(np.arctan2(out @ y, out @ x), kind="stable")
        half, along = half[turn], (u == a)[turn]
        against = np.flatnonzero(~along)
        shift = int(against[0]) if len(against) else 0
        half, along = np.roll(half, -shift), np.roll(along, -shift)
        # Closed, outward-wound solids alternate against/along about the edge; anything else (a
        # surface turned inside out) is paired in turn, which still leaves the edges two by two.
        pairs.append(half[: count - count % 2].reshape(-1, 2))
    return np.concatenate(pairs)


def separate_lumps(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give each lump its own vertices where solid material meets itself at an edge or a point.

    Triangles are paired across each edge (see `_pair_around_edges`); the corners of triangles so
    paired share a vertex, and every other corner at the same point gets a copy of its own. After
    that each edge has exactly two triangles, as the 3MF core specification asks of a mesh object,
    and every triangle is where it was.
    """
    if len(faces) == 0:
        return vertices, faces
    a, b = faces, faces[:, [1, 2, 0]]
    keys = (np.minimum(a, b) * len(vertices) + np.maximum(a, b)).ravel()
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    pairs = _pair_around_edges(vertices, faces, order, starts)
    # Half-edge f*3+k runs from corner f*3+k to corner f*3+(k+1)%3: join the corners of a pair
    # that sit at the same vertex (start with end when the two run opposite ways, as they should).
    ends = (pairs // 3) * 3 + (pairs % 3 + 1) % 3
    corner_vertex = faces.ravel()
    opposite = corner_vertex[pairs[:, 0]] == corner_vertex[ends[:, 1]]
    join = np.concatenate(
        [
            np.stack([pairs[:, 0], np.where(opposite, ends[:, 1], pairs[:, 1])], axis=1),
            np.stack([ends[:, 0], np.where(opposite, pairs[:, 1], ends[:, 1])], axis=1),
        ]
    )
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(corner_vertex)
    graph = coo_matrix((np.ones(len(join)), (join[:, 0], join[:, 1])), shape=(n, n))
    count, group = connected_components(graph, directed=False)
    if count == len(vertices):
        return vertices, faces
    new_vertices = np.zeros((count, 3), dtype=vertices.dtype)
    new_vertices[group] = vertices[corner_vertex]
    return new_vertices, group.reshape(-1, 3).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# The package


def _color_hex(rgba: tuple[float, float, float, float]) -> str:
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02X}" for c in rgba)


CHUNK_ROWS = 65536  # vertices or triangles formatted at a time: bounds the writer's memory


def _mesh_xml(vertices: np.ndarray, faces: np.ndarray) -> Iterator[str]:
    # The STL's float32 coordinates; 9 significant digits give each one back exactly.
    yield "<mesh><vertices>\n"
    for at in range(0, len(vertices), CHUNK_ROWS):
        block = vertices[at : at + CHUNK_ROWS]
        yield ('<vertex x="%.9g" y="%.9g" z="%.9g"/>\n' * len(block)) % tuple(
            block.astype(np.float64).ravel().tolist()
        )
    yield "</vertices><triangles>\n"
    for at in range(0, len(faces), CHUNK_ROWS):
        block = faces[at : at + CHUNK_ROWS]
        yield ('<triangle v1="%d" v2="%d" v3="%d"/>\n' * len(block)) % tuple(block.ravel().tolist())
    yield "</triangles></mesh>"


def model_xml(objects: Sequence[MeshObject]) -> str:
    """3D/3dmodel.model as one string (see `model_chunks`)."""
    return "".join(model_chunks(objects))


def model_chunks(objects: Sequence[MeshObject]) -> Iterator[str]:
    """3D/3dmodel.model, piece by piece: one mesh object per MeshObject, each placed once by a build
    item. An object with no triangles left after welding is left out, as lib3mf's writer leaves it.
    Each object is welded only when its turn comes, so one object's indexed mesh is held at a time."""
    kept = [obj for obj in objects if len(obj.triangles)]
    colors = list(dict.fromkeys(_color_hex(obj.color) for obj in kept if obj.color is not None))
    yield from [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<model unit="millimeter" xml:lang="en-US" xmlns="{CORE_NS}">\n',
        '<metadata name="Application">printfarm</metadata>\n<resources>\n',
    ]
    if colors:  # resource 1; the objects follow
        bases = "".join(f"<base name={quoteattr(c)} displaycolor={quoteattr(c)}/>" for c in colors)
        yield f'<basematerials id="1">{bases}</basematerials>\n'
    ids: list[int] = []
    for obj in kept:
        vertices, faces = separate_lumps(*weld(obj.triangles))
        if not len(faces):
            continue
        ids.append(len(ids) + 1 + bool(colors))
        attrs = f'id="{ids[-1]}" type="model"'
        if obj.name:
            attrs += f" name={quoteattr(obj.name)}"
        if obj.part_number:
            attrs += f" partnumber={quoteattr(obj.part_number)}"
        if obj.color is not None:
            attrs += f' pid="1" pindex="{colors.index(_color_hex(obj.color))}"'
        yield f"<object {attrs}>\n"
        yield from _mesh_xml(vertices, faces)
        yield "\n</object>\n"
    yield "</resources>\n<build>\n"
    yield from (f'<item objectid="{i}"/>\n' for i in ids)
    yield "</build>\n</model>\n"


def write_3mf(path: Path, objects: Sequence[MeshObject]) -> None:
    """Write a 3MF package holding `objects` to `path`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", RELS)
        with zf.open(MODEL_PATH, "w", force_zip64=True) as model:  # streamed: no whole-file string
            for chunk in model_chunks(objects):
                model.write(chunk.encode())
