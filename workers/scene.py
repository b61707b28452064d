"""What a design showed, sorted into what prints and what does not.

A viewer draws anything: parts, builders, sketches, curves, raw OCP shapes, lists and dicts of
them, assemblies. A printer prints solids. `sort_scene` turns each shown object into its solids
(each one object on the plate, with the name and colour it was shown with) and lists everything
else as skipped, with what it was ("outline (a sketch)"), so the build can say what it left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import build123d as bd

from workers.viewer import RGBA, Showing, to_rgba


@dataclass
class Printed:
    solid: bd.Solid
    name: str | None
    color: RGBA | None


@dataclass
class Scene:
    printed: list[Printed] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, what it is)
    # Each shown object's name, kind and how many solids of it print: for `farm inspect`.
    listing: list[dict[str, Any]] = field(default_factory=list)

    def describe_skipped(self) -> str:
        return ", ".join(f"{name} ({kind})" for name, kind in self.skipped)


def sort_scene(shown: Iterable[Showing], default_name: str) -> Scene:
    scene, items = Scene(), list(shown)
    names = [
        item.name or (default_name if len(items) == 1 else f"{default_name}-{i}")
        for i, item in enumerate(items, start=1)
    ]
    for i, (item, name) in enumerate(zip(items, names, strict=True)):
        if item.debug:
            _skip(scene, name, item.obj, "shown with debug()")
            continue
        # Shown again later (`show(part)` while drawing it, `show(part, lid)` at the end): the same
        # thing prints once, under the name and colour it was last shown with.
        again = max((k for k in range(i + 1, len(items)) if _same(item, items[k])), default=None)
        if again is not None:
            later = names[again]
            _skip(scene, name, item.obj, "shown again" + (f" as {later}" if later != name else ""))
            continue
        _add(scene, item.obj, name, item.color)
    return scene


def _same(earlier: Showing, later: Showing) -> bool:
    """Whether `later` shows the very object `earlier` did: the same Python object, or the same
    OCP shape in the same place (a builder's part, a shape's `wrapped`)."""
    if later.debug or earlier.obj is None:
        return False
    if earlier.obj is later.obj:
        return True
    a, b = as_shape(earlier.obj), as_shape(later.obj)
    if a is None or b is None or a.wrapped is None or b.wrapped is None:
        return False
    return bool(a.wrapped.IsEqual(b.wrapped))


# --------------------------------------------------------------------------------------------------


def _skip(scene: Scene, name: str, obj: Any, kind: str | None = None) -> None:
    kind = kind or kind_of(obj)
    scene.skipped.append((name, kind))
    scene.listing.append({"name": name, "kind": kind, "solids": 0, "prints": False})


def _add(scene: Scene, obj: Any, name: str, color: RGBA | None) -> None:
    if obj is None:  # nothing there: not even worth listing
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            _add(scene, value, f"{name}.{key}" if not isinstance(key, str) else key, color)
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj, start=1):
            _add(scene, value, _label(value) or f"{name}-{i}", color)
        return
    shape = as_shape(obj)
    if shape is None:
        _skip(scene, name, obj)
        return
    color = color or _color_of(shape)
    solids = _named_solids(shape, name, color)
    if not solids:
        _skip(scene, name, shape)
        return
    scene.printed += solids
    entry: dict[str, Any] = {"name": name, "kind": kind_of(shape), "solids": len(solids), "prints": True}
    if color is not None:
        entry["color"] = list(color)
    scene.listing.append(entry)
    loose = _loose_parts(shape)
    if loose:
        scene.skipped.append((name, f"its {loose}, outside any solid"))


def as_shape(obj: Any) -> bd.Shape | None:
    """A build123d shape for anything that is one or holds one, else None."""
    if isinstance(obj, bd.Shape):
        return obj
    if isinstance(obj, bd.BuildPart):
        return obj.part
    if isinstance(obj, bd.BuildSketch):
        return obj.sketch
    if isinstance(obj, bd.BuildLine):
        return obj.line
    if type(obj).__module__.startswith("mr.") and hasattr(obj, "model"):  # MakerRepo's Result
        return as_shape(obj.model)
    wrapped = obj if _is_topods(obj) else getattr(obj, "wrapped", None)
    if wrapped is not None and _is_topods(wrapped):  # a raw OCP shape, or something wrapping one
        try:
            return bd.Shape.cast(wrapped)
        except Exception:  # a null or unknown TopoDS shape
            return None
    return None


def _is_topods(obj: Any) -> bool:
    return type(obj).__module__.startswith("OCP.") and type(obj).__name__.startswith("TopoDS_")


def kind_of(obj: Any) -> str:
    """What a viewer shows it as: "a part", "a sketch", "a curve", "a Location", ..."""
    if isinstance(obj, bd.BuildSketch):
        return "a sketch"
    if isinstance(obj, bd.BuildLine):
        return "a curve"
    if isinstance(obj, bd.BuildPart):
        return "a part" if obj.part is not None else "an empty part"
    if not isinstance(obj, bd.Shape):
        return "None" if obj is None else f"a {type(obj).__name__}"
    if obj.wrapped is None or obj.wrapped.IsNull():
        return "an empty shape"
    if isinstance(obj, bd.Solid):
        return "a solid"
    if isinstance(obj, bd.Sketch):
        return "a sketch"
    if isinstance(obj, bd.Curve | bd.Wire | bd.Edge):
        return "a curve"
    if isinstance(obj, bd.Shell):
        return "a surface"
    if isinstance(obj, bd.Face):
        return "a face"
    if isinstance(obj, bd.Vertex):
        return "a point"
    if isinstance(obj, bd.Compound):
        if obj.solids():
            return "an assembly" if obj.children else "a part"
        if obj.faces():
            return "a sketch" if _flat(obj) else "a surface"
        if obj.edges():
            return "a curve"
        return "points" if obj.vertices() else "an empty shape"
    return f"a {type(obj).__name__}"


def _flat(shape: bd.Shape) -> bool:
    try:
        box = shape.bounding_box()
    except Exception:
        return False
    return min(box.size.X, box.size.Y, box.size.Z) < 1e-6


def _color_of(shape: bd.Shape) -> RGBA | None:
    return to_rgba(getattr(shape, "color", None))


def _label(obj: Any) -> str | None:
    return getattr(obj, "label", None) or None if isinstance(obj, bd.Shape) else None


def _named_solids(shape: bd.Shape, name: str, color: RGBA | None) -> list[Printed]:
    """The shape's solids, each named: an assembly's from its children's labels and colours, in
    the order the compound holds them; otherwise NAME, or NAME-1, NAME-2 ... for several."""
    if shape.wrapped is None or shape.wrapped.IsNull():
        return []
    solids = list(shape.solids())
    if isinstance(shape, bd.Compound) and shape.children:
        leaves = list(_leaves(shape, name, color))
        if sum(n for _, _, n in leaves) == len(solids):
            out, at = [], 0
            for leaf_name, leaf_color, count in leaves:
                for k in range(count):
                    label = leaf_name if count == 1 else f"{leaf_name}-{k + 1}"
                    out.append(Printed(solids[at], label, leaf_color))
                    at += 1
            return out
    if len(solids) == 1:
        return [Printed(solids[0], name, color)]
    return [Printed(s, s.label or f"{name}-{i}", color) for i, s in enumerate(solids, start=1)]


def _leaves(shape: bd.Shape, name: str, color: RGBA | None) -> Iterable[tuple[str, RGBA | None, int]]:
    """(name, colour, solids) of each leaf of an assembly tree, depth first."""
    for i, child in enumerate(shape.children, start=1):
        child_name = child.label or f"{name}-{i}"
        child_color = _color_of(child) or color
        if isinstance(child, bd.Compound) and child.children:
            yield from _leaves(child, child_name, child_color)
        else:
            yield child_name, child_color, len(child.solids())


def _loose_parts(shape: bd.Shape) -> str:
    """How many faces (or else edges) a compound holds outside its solids: "2 faces", or ""."""
    if not isinstance(shape, bd.Compound):
        return ""
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_SOLID
    from OCP.TopExp import TopExp_Explorer

    def count(find: Any, avoid: Any) -> int:
        explorer, n = TopExp_Explorer(shape.wrapped, find, avoid), 0
        while explorer.More():
            n += 1
            explorer.Next()
        return n

    faces = count(TopAbs_FACE, TopAbs_SOLID)
    if faces:
        return f"{faces} face{'s' * (faces > 1)}"
    edges = count(TopAbs_EDGE, TopAbs_FACE)
    return f"{edges} edge{'s' * (edges > 1)}" if edges else ""
