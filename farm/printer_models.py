"""The printer models the farm knows: bed size, nozzle, protocol and the slicer presets for each.

Pure stdlib on purpose: the coordinator and the CLI import this without build123d or a slicer.

A model's presets live in a PrusaSlicer-style bundle (`[printer:…]`, `[print:…]`, `[filament:…]`
sections with `inherits`). For MINI and MK3S that is the vendor bundle shipped with PrusaSlicer 2.5
(`PrusaResearch.ini`). Models that bundle lacks (MK4, XL, Core One, Bambu) get a project-shipped
bundle in the same format (sections without `inherits`, e.g. exported from a newer PrusaSlicer,
are fine), named in `bundle` and kept in `workers/profiles/`, which `workers.slicer` searches
before the slicer's own profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MATERIALS: tuple[str, ...] = ("PLA", "PETG", "ASA", "TPU")
QUALITIES: tuple[str, ...] = ("draft", "standard", "fine")
DEFAULT_MODEL = "MINI"
DEFAULT_MATERIAL = "PLA"
DEFAULT_QUALITY = "standard"


@dataclass(frozen=True)
class PrinterModel:
    name: str  # the farm's id, the same string as the firmware check `M862.3 P "MINI"`
    title: str
    bed: tuple[float, float, float]  # printable x, y, z in mm
    nozzle: float  # mm
    protocol: str  # the driver a printer of this model uses unless configured otherwise
    bundle: str  # bundle file name (vendor or project-shipped) holding the presets below
    printer_preset: str
    # Dicts are excluded from the hash so a model can still key a cache.
    print_presets: dict[str, str] = field(hash=False)  # quality -> print preset
    filament_presets: dict[str, str] = field(hash=False)  # material -> filament preset

    @property
    def materials(self) -> tuple[str, ...]:
        return tuple(self.filament_presets)

    @property
    def qualities(self) -> tuple[str, ...]:
        return tuple(self.print_presets)


# Preset names are those of PrusaResearch.ini 1.5.1 (PrusaSlicer 2.5.0). The MINI needs the
# "@MINI" filament variants: the generic PETG/ASA/FLEX presets exclude printer_model "MINI".
_MINI = PrinterModel(
    name="MINI",
    title="Original Prusa MINI & MINI+",
    bed=(180.0, 180.0, 180.0),
    nozzle=0.4,
    protocol="prusalink",
    bundle="PrusaResearch.ini",
    printer_preset="Original Prusa MINI & MINI+",
    print_presets={
        "draft": "0.25mm DRAFT @MINI",
        "standard": "0.20mm QUALITY @MINI",
        "fine": "0.15mm QUALITY @MINI",
    },
    filament_presets={
        "PLA": "Prusament PLA",
        "PETG": "Prusament PETG @MINI",
        "ASA": "Prusament ASA @MINI",
        "TPU": "Generic FLEX @MINI",
    },
)

_MK3S = PrinterModel(
    name="MK3S",
    title="Original Prusa i3 MK3S & MK3S+",
    bed=(250.0, 210.0, 210.0),
    nozzle=0.4,
    protocol="prusalink",
    bundle="PrusaResearch.ini",
    printer_preset="Original Prusa i3 MK3S & MK3S+",
    print_presets={
        "draft": "0.30mm DRAFT @MK3",
        "standard": "0.20mm QUALITY @MK3",
        "fine": "0.15mm QUALITY @MK3",
    },
    filament_presets={
        "PLA": "Prusament PLA",
        "PETG": "Prusament PETG",
        "ASA": "Prusament ASA",
        "TPU": "Generic FLEX",
    },
)

MODELS: dict[str, PrinterModel] = {m.name: m for m in (_MINI, _MK3S)}


def get_model(name: str) -> PrinterModel | None:
    """The model called `name` (case-insensitive: users type "mini"), or None."""
    wanted = name.strip().casefold()
    return next((m for key, m in MODELS.items() if key.casefold() == wanted), None)
