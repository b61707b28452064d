"""A part's revisions, and what changed between two builds: the JSON `farm revisions` and `farm diff`
print and the API returns (farm/coordinator/api/revisions.py). Plain data in, plain dicts out."""

from __future__ import annotations

import json
from typing import Any

from farm.coordinator.models import Build, Slice
from farm.core.states import SliceState

AXES = ("x", "y", "z")


def size_mm(build: Build) -> list[float] | None:
    """The bounding box's size along x, y and z, in mm (None: no mesh yet, or a G-code build)."""
    if not build.bbox_json:
        return None
    low, high = json.loads(build.bbox_json)
    return [float(h) - float(lo) for lo, h in zip(low, high, strict=True)]


def estimates(slices: list[Slice]) -> dict[str, dict[str, Any]]:
    """The slicer's print time and filament per printer model, from the build's finished slices;
    a model sliced several times (plates of different sizes) is read from its fewest copies."""
    out: dict[str, dict[str, Any]] = {}
    for sl in sorted(slices, key=lambda s: (s.copies, s.id or 0)):
        if sl.state != SliceState.DONE or sl.printer_model in out:
            continue
        out[sl.printer_model] = {
            "print_time_s": sl.print_time_s,
            "filament_g": sl.filament_g,
            "filament_mm": sl.filament_mm,
            "copies": sl.copies,
        }
    return out


def revision_view(build: Build, slices: list[Slice]) -> dict[str, Any]:
    """One build as a revision of its part: where it came from, what it was asked for, what it made."""
    return {
        "id": build.id,
        "created_at": build.created_at.isoformat() if build.created_at else None,
        "project": build.project_name,
        "part": build.part_name,
        "source": build.source_name,
        "entry": build.entry,
        "owner": build.owner,
        "git": {"url": build.git_url, "ref": build.git_ref, "commit": build.git_commit, "tag": build.git_tag},
        "params": json.loads(build.params_json or "{}"),
        "stage": build.stage,
        "error": build.error,
        "volume_mm3": build.volume_mm3,
        "size_mm": size_mm(build),
        "bbox": json.loads(build.bbox_json) if build.bbox_json else None,
        "stl": build.stl_sha256,
        "preview": build.preview_sha256,
        "estimates": estimates(slices),
    }


def _change(a: float | None, b: float | None) -> dict[str, float | None]:
    """a, b, their difference and the difference as a % of a (None where it cannot be told)."""
    change = b - a if a is not None and b is not None else None
    percent = 100.0 * change / a if change is not None and a else None
    return {"a": a, "b": b, "change": change, "percent": percent}


def params_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Parameters as each build recorded them. One left at its default is absent from that build's
    record, so it shows as added or removed rather than changed."""
    return {
        "added": {k: b[k] for k in sorted(b.keys() - a.keys())},
        "removed": {k: a[k] for k in sorted(a.keys() - b.keys())},
        "changed": {k: {"a": a[k], "b": b[k]} for k in sorted(a.keys() & b.keys()) if a[k] != b[k]},
    }


def build_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from revision `a` to revision `b` (two revision_view dicts)."""
    size_a, size_b = a["size_mm"], b["size_mm"]
    models = sorted(a["estimates"].keys() & b["estimates"].keys())
    est: dict[str, dict[str, Any]] = {}
    for model in models:
        ea, eb = a["estimates"][model], b["estimates"][model]
        est[model] = {key: _change(ea[key], eb[key]) for key in ("print_time_s", "filament_g", "filament_mm")}
        est[model]["copies"] = {"a": ea["copies"], "b": eb["copies"]}
    git_a, git_b = a["git"], b["git"]
    return {
        "a": a,
        "b": b,
        "same_part": (a["project"], a["part"]) == (b["project"], b["part"]),
        "same_mesh": a["stl"] is not None and a["stl"] == b["stl"],
        "params": params_diff(a["params"], b["params"]),
        "volume_mm3": _change(a["volume_mm3"], b["volume_mm3"]),
        "size_mm": {
            axis: _change(size_a[i] if size_a else None, size_b[i] if size_b else None)
            for i, axis in enumerate(AXES)
        },
        "estimates": est,
        "models_only_in_a": sorted(a["estimates"].keys() - b["estimates"].keys()),
        "models_only_in_b": sorted(b["estimates"].keys() - a["estimates"].keys()),
        "commit": {"a": git_a["commit"], "b": git_b["commit"], "changed": git_a["commit"] != git_b["commit"]},
        "tag": {"a": git_a["tag"], "b": git_b["tag"], "changed": git_a["tag"] != git_b["tag"]},
    }
