"""Slicer profiles: a flat PrusaSlicer config per printer model, material and quality.

PrusaSlicer 2.5 (Debian bookworm) cannot select a named preset on the command line, and
`--load`ing a vendor bundle silently falls back to the defaults. So each slice flattens the
printer, print and filament presets of the model's bundle into one .ini, the way PrusaSlicer's
own `flatten_configbundle_hierarchy()` does, and `--load`s that. A job's overrides (checked here,
and built from the everyday choices by `print_options`) win over the presets.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from farm.core.print_options import check_overrides
from farm.core.printer_models import DEFAULT_MATERIAL, DEFAULT_QUALITY, PrinterModel
from farm.core.slice_error import SliceError

# Project-shipped bundles (models the vendor bundle lacks) win over the slicer's own.
PROJECT_PROFILE_DIR = Path(__file__).with_name("profiles")
SYSTEM_PROFILE_DIR = Path("/usr/share/PrusaSlicer/profiles")
BUNDLE_DIRS: tuple[Path, ...] = (PROJECT_PROFILE_DIR, SYSTEM_PROFILE_DIR)

# Bundle keys that describe the preset, not the print; PrusaSlicer drops them when flattening.
NON_CONFIG_KEYS = frozenset(
    {
        "inherits",
        "renamed_from",
        "alias",
        "compatible_printers",
        "compatible_printers_condition",
        "compatible_prints",
        "compatible_prints_condition",
    }
)


def find_bundle(name: str, dirs: Sequence[Path] | None = None) -> Path:
    """Resolve a bundle name from a PrinterModel: an absolute path, or the first match in `dirs`."""
    if Path(name).is_absolute():
        candidates = [Path(name)]
    else:
        candidates = [Path(d) / name for d in (BUNDLE_DIRS if dirs is None else dirs)]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c.parent) for c in candidates)
    raise SliceError(f"the slicer profile bundle {name} was not found (looked in {where})")


def read_bundle(path: Path) -> dict[str, dict[str, str]]:
    """Sections of a bundle, `"printer:Name" -> {key: value}`; cached until the file changes,
    so treat the result as read-only."""
    st = path.stat()
    return _read_bundle_cached(path.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_bundle_cached(path: Path, _mtime_ns: int, _size: int) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            if s[0] == "[" and s[-1] == "]":
                current = sections.setdefault(s[1:-1], {})
            elif current is not None and "=" in s:
                key, value = s.split("=", 1)
                current[key.strip()] = value.strip()
    return sections


def _flatten_preset(
    sections: Mapping[str, Mapping[str, str]], kind: str, name: str, bundle: Path, _seen: tuple[str, ...] = ()
) -> dict[str, str]:
    """One preset with its `inherits` chain resolved: own keys win, then the last parent, ..."""
    key = f"{kind}:{name}"
    own = sections.get(key)
    if own is None:
        raise SliceError(f"the profile bundle {bundle.name} has no [{key}] preset")
    if key in _seen:
        raise SliceError(f"the profile bundle {bundle.name} has an inheritance loop at [{key}]")
    out = dict(own)
    parents = [p.strip().strip('"') for p in own.get("inherits", "").split(";") if p.strip()]
    for parent in reversed(parents):
        for k, v in _flatten_preset(sections, kind, parent, bundle, (*_seen, key)).items():
            out.setdefault(k, v)
    return out


def bundle_sections(bundle: Path) -> dict[str, dict[str, str]]:
    """The bundle's sections over those of its `[printfarm] base_bundle`, if it names one.

    A project bundle thus inherits vendor presets by name ("Original Prusa i3 MK3S & MK3S+")
    instead of copying hundreds of keys that then drift from the slicer's own.
    """
    own = read_bundle(bundle)
    base = own.get("printfarm", {}).get("base_bundle", "").strip()
    if not base:
        return own
    dirs = [d for d in (bundle.parent, *BUNDLE_DIRS) if (d / base).resolve() != bundle.resolve()]
    return {**bundle_sections(find_bundle(base, dirs)), **own}


def load_preset(bundle: Path, kind: str, name: str) -> dict[str, str]:
    """A preset ("printer", "print" or "filament") with its inheritance resolved, including the
    `compatible_*` conditions (useful to check a catalogue entry), minus `inherits`."""
    flat = _flatten_preset(bundle_sections(bundle), kind, name, bundle)
    flat.pop("inherits", None)
    return flat


def _choose(kind: str, wanted: str, presets: Mapping[str, str], model: PrinterModel) -> str:
    # Materials are upper case (PLA), qualities lower case (fine): accept either spelling.
    for choice, preset in presets.items():
        if choice.casefold() == wanted.strip().casefold():
            return preset
    raise SliceError(f"unknown {kind} '{wanted}' for the {model.name}; choose one of: {', '.join(presets)}")


def flatten_profile(
    model: PrinterModel,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    *,
    bundle_dirs: Sequence[Path] | None = None,
) -> dict[str, str]:
    """The complete flat config for a model, material and quality; `overrides` win over presets."""
    print_preset = _choose("quality", quality, model.print_presets, model)
    filament_preset = _choose("material", material, model.filament_presets, model)
    extra = check_overrides(overrides or {})
    bundle = find_bundle(model.bundle, bundle_dirs)
    cfg: dict[str, str] = {}
    for kind, name in (
        ("printer", model.printer_preset),
        ("print", print_preset),
        ("filament", filament_preset),
    ):
        flat = load_preset(bundle, kind, name)
        cfg.update((k, v) for k, v in flat.items() if k not in NON_CONFIG_KEYS)
    # Recorded in the G-code's config block, so a file says which presets made it.
    cfg["printer_settings_id"] = model.printer_preset
    cfg["print_settings_id"] = print_preset
    cfg["filament_settings_id"] = f'"{filament_preset}"'
    cfg.update(extra)
    return cfg


def profile_text(cfg: Mapping[str, str]) -> str:
    """A flat config as PrusaSlicer's `key = value` .ini text (sorted, so it diffs and hashes)."""
    return "".join(f"{k} = {cfg[k]}\n" for k in sorted(cfg))


def write_profile(cfg: Mapping[str, str], path: Path) -> Path:
    """Write a flat config as an .ini that `prusa-slicer --load` reads."""
    path = Path(path)
    path.write_text(profile_text(cfg), encoding="utf-8")
    return path


def config_numbers(text: str) -> list[float]:
    """The numbers of a config value: `1.5`, or the per-extruder `1.5, 2.0` / `0.4,0.4`."""
    out = []
    for part in re.split(r"[,;]", text):
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out
