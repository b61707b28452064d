"""The print options a job may carry (infill, supports, brim, raw slicer settings), checked where
they arrive: at submit on the coordinator, in `farm slice`, and again by the slicing worker."""

from __future__ import annotations

import re
from collections.abc import Mapping

from farm.core.slice_error import SliceError

# post_process runs an arbitrary program on the worker: never from a job's overrides.
FORBIDDEN_OVERRIDES = frozenset({"post_process"})

SUPPORTS: tuple[str, ...] = ("none", "buildplate", "everywhere")


def check_overrides(overrides: Mapping[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in overrides.items():
        if not re.fullmatch(r"[a-z0-9_]+", key):
            raise SliceError(f"'{key}' is not a slicer setting name (lower case, digits and _ only)")
        if key in FORBIDDEN_OVERRIDES:
            raise SliceError(f"the slicer setting '{key}' cannot be set from a job")
        text = str(value)
        # A newline would smuggle extra keys into the flat .ini.
        if "\n" in text or "\r" in text:
            raise SliceError(f"the value of '{key}' must be one line; write line breaks as \\n")
        clean[key] = text
    return clean


def print_options(
    *, infill: str | float | None = None, supports: str | None = None, brim: float | None = None
) -> dict[str, str]:
    """Slicer overrides for the everyday choices: infill density (`20` or `20%`), supports
    (none / buildplate / everywhere, generated where the overhangs need them) and a brim width in mm."""
    out: dict[str, str] = {}
    if infill is not None:
        text = str(infill).strip().removesuffix("%")
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 100:
            raise SliceError(f"infill must be a percentage from 0 to 100, like 20 or 20%, not '{infill}'")
        out["fill_density"] = f"{value:g}%"
    if supports is not None:
        choice = supports.strip().lower()
        if choice not in SUPPORTS:
            raise SliceError(f"supports must be one of {', '.join(SUPPORTS)}, not '{supports}'")
        out["support_material"] = "0" if choice == "none" else "1"
        out["support_material_auto"] = "1"
        out["support_material_buildplate_only"] = "1" if choice == "buildplate" else "0"
    if brim is not None:
        if not 0 <= brim <= 50:
            raise SliceError(f"the brim width is in mm, from 0 to 50, not {brim:g}")
        out["brim_width"] = f"{brim:g}"
        out["brim_type"] = "outer_only" if brim > 0 else "no_brim"
    return out
