"""The printer models the farm knows: bed size, nozzle, protocol and the slicer presets for each.

Pure stdlib on purpose: the coordinator and the CLI import this without build123d or a slicer.

A model's presets live in a PrusaSlicer-style bundle (`[printer:…]`, `[print:…]`, `[filament:…]`
sections with `inherits`). For MINI and MK3S that is the vendor bundle shipped with PrusaSlicer 2.5
(`PrusaResearch.ini`). Models that bundle lacks get a project-shipped bundle (`buddy.ini` for
MK4, MK4S, XL and CORE One, `printfarm.ini` for Bambu) in the same format (sections without
`inherits`, e.g. exported from a newer PrusaSlicer, are fine), named in `bundle` and kept in
`workers/profiles/`, which `workers.slicer` searches before the slicer's own profiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MATERIALS: tuple[str, ...] = ("PLA", "PETG", "ABS", "ASA", "TPU")
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
    # What the G-code itself calls the model (`; printer_model = …`) when that is not `name`:
    # Bambu Studio writes "Bambu Lab X1 Carbon", so our Bambu profiles do too.
    gcode_model: str = ""
    bambu_model_id: str = ""  # `printer_model_id` of a Bambu .gcode.3mf (protocols.md A.1)

    @property
    def printer_model(self) -> str:
        """The `printer_model` value of this model's profile and G-code."""
        return self.gcode_model or self.name

    @property
    def output_suffix(self) -> str:
        """Bambu printers start jobs from a plate-sliced 3MF; every other protocol takes G-code."""
        return ".gcode.3mf" if self.protocol == "bambu" else ".gcode"

    @property
    def materials(self) -> tuple[str, ...]:
        return tuple(self.filament_presets)

    @property
    def qualities(self) -> tuple[str, ...]:
        return tuple(self.print_presets)


# Preset names are those of PrusaResearch.ini 1.5.1 (PrusaSlicer 2.5.0). The MINI needs the
# "@MINI" filament variants: the generic PETG/ABS/ASA/FLEX presets exclude printer_model "MINI".
# Temperatures (nozzle first layer/other, bed first layer/other): PLA 215/215, 60/60; PETG
# 240/250, 85/90; ABS 255/255, 100/110 (MINI 100/100); ASA 260/260, 105/110 (MINI 100/100);
# TPU (Prusa's "FLEX") 240/240, 50/50, capped at 1.2-1.35 mm3/s (about 13 mm/s), so it prints slowly.
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
        "ABS": "Generic ABS @MINI",
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
        "ABS": "Generic ABS",
        "ASA": "Prusament ASA",
        "TPU": "Generic FLEX",
    },
)

# Prusa's Buddy-firmware printers, which PrusaSlicer 2.5's vendor bundle predates: printer and
# filament presets of their own (workers/profiles/buddy.ini, checked against Prusa's current
# profiles by tests/test_prusa_fidelity.py), named as Prusa names them; print presets are the MK3's.
_BUDDY_BUNDLE = "buddy.ini"
_MK3_PRINTS = {
    "draft": "0.30mm DRAFT @MK3",
    "standard": "0.20mm QUALITY @MK3",
    "fine": "0.15mm QUALITY @MK3",
}


def _buddy(
    name: str, title: str, bed: tuple[float, float, float], filaments: tuple[str, ...], gcode_model: str = ""
) -> PrinterModel:
    return PrinterModel(
        name=name,
        title=title,
        bed=bed,
        nozzle=0.4,
        protocol="prusalink",
        bundle=_BUDDY_BUNDLE,
        printer_preset=title,
        print_presets=dict(_MK3_PRINTS),
        filament_presets=dict(zip(MATERIALS, filaments, strict=True)),
        gcode_model=gcode_model,
    )


# Filaments in MATERIALS order: PLA, PETG, ABS, ASA, TPU (Prusa's "FLEX").
_BUDDY_MODELS = (
    _buddy(
        "MK4",
        "Original Prusa MK4",
        (250.0, 210.0, 220.0),
        (
            "Prusament PLA @PGIS",
            "Prusament PETG @PGIS",
            "Generic ABS @MK4",
            "Prusament ASA @MK4",
            "Generic FLEX @MK4",
        ),
        gcode_model="MK4IS",  # what Prusa's MK4 profile writes; its M862.3 says "MK4"
    ),
    _buddy(
        "MK4S",
        "Original Prusa MK4S",
        (250.0, 210.0, 220.0),
        (
            "Prusament PLA @MK4S",
            "Prusament PETG @MK4S",
            "Generic ABS @MK4S",
            "Prusament ASA @MK4S",
            "Generic FLEX @MK4S",
        ),
    ),
    _buddy(
        "XL",
        "Original Prusa XL",
        (360.0, 360.0, 360.0),
        (
            "Prusament PLA @XLIS",
            "Prusament PETG @XL",
            "Generic ABS @XL",
            "Prusament ASA @XL",
            "Generic FLEX @XL",
        ),
        gcode_model="XLIS",
    ),
    _buddy(
        "COREONE",
        "Prusa CORE One",
        (250.0, 220.0, 270.0),
        (
            "Prusament PLA @COREONE",
            "Prusament PETG @COREONE",
            "Generic ABS @COREONE",
            "Prusament ASA @COREONE",
            "Generic FLEX @COREONE",
        ),
    ),
)

_MK3_FILAMENTS = dict(_MK3S.filament_presets)
# Bambu printers: their own bundle (BambuStudio's start/end sequences, layer markers), and Prusa's
# filament presets minus the MK3 linear-advance line (workers/profiles/bambu.ini).
_BAMBU_BUNDLE = "bambu.ini"
_BAMBU_FILAMENTS = {material: f"{preset} @BBL" for material, preset in _MK3_FILAMENTS.items()}


def _project(
    name: str,
    title: str,
    bed: tuple[float, float, float],
    protocol: str,
    *,
    gcode_model: str = "",
    bambu_model_id: str = "",
) -> PrinterModel:
    return PrinterModel(
        name=name,
        title=title,
        bed=bed,
        nozzle=0.4,
        protocol=protocol,
        bundle=_BAMBU_BUNDLE,
        printer_preset=title,
        print_presets=dict(_MK3_PRINTS),
        filament_presets=dict(_BAMBU_FILAMENTS),
        gcode_model=gcode_model,
        bambu_model_id=bambu_model_id,
    )


_PROJECT_MODELS = (
    _project(
        "X1C",
        "Bambu Lab X1 Carbon",
        (256.0, 256.0, 250.0),
        "bambu",
        gcode_model="Bambu Lab X1 Carbon",
        bambu_model_id="BL-P001",
    ),
    _project(
        "P1S",
        "Bambu Lab P1S",
        (256.0, 256.0, 250.0),
        "bambu",
        gcode_model="Bambu Lab P1S",
        bambu_model_id="C12",
    ),
    _project(
        "A1", "Bambu Lab A1", (256.0, 256.0, 250.0), "bambu", gcode_model="Bambu Lab A1", bambu_model_id="N2S"
    ),
    _project(
        "A1MINI",
        "Bambu Lab A1 mini",
        (180.0, 180.0, 180.0),
        "bambu",
        gcode_model="Bambu Lab A1 mini",
        bambu_model_id="N1",
    ),
)

MODELS: dict[str, PrinterModel] = {m.name: m for m in (_MINI, _MK3S, *_BUDDY_MODELS, *_PROJECT_MODELS)}


def get_model(name: str) -> PrinterModel | None:
    """The model called `name` (case-insensitive: users type "mini"), or None. Strict: what a
    G-code or an agent says is checked with this; what people type goes through check_model."""
    wanted = name.strip().casefold()
    return next((m for key, m in MODELS.items() if key.casefold() == wanted), None)


def model_for_gcode(printer_model: str) -> PrinterModel | None:
    """The catalogue model whose G-code says `printer_model` ("MK4S", "Bambu Lab X1 Carbon").
    The farm's own name counts too: Prusa's MK4 profile writes "MK4IS" but checks `M862.3 P "MK4"`."""
    wanted = printer_model.strip().strip('"').casefold()
    return next((m for m in MODELS.values() if m.printer_model.casefold() == wanted), None) or next(
        (m for m in MODELS.values() if m.name.casefold() == wanted), None
    )


# Other names people type for a model: the marketing names with their "+", spaces and dashes.
# Spaces, dashes and underscores are ignored when matching, so "Core One" and "a1-mini" need no entry.
ALIASES: dict[str, str] = {
    "MINI+": "MINI",
    "MINIPLUS": "MINI",
    "MK3S+": "MK3S",
    "MK3SPLUS": "MK3S",
    "MK4+": "MK4",
    "CORE1": "COREONE",
    "X1CARBON": "X1C",
}
MAX_COLOR_CHARS = 40


class UnknownChoice(ValueError):
    """A model, material, quality or colour the farm cannot use; the message says what it can."""


def _key(text: str) -> str:
    return "".join(text.split()).replace("-", "").replace("_", "").casefold()


def closest(wrong: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The one of `choices` most like `wrong` (difflib, case aside), or None when none is close."""
    import difflib

    folded = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(wrong.casefold(), list(folded), n=1, cutoff=cutoff)
    return folded[close[0]] if close else None


def did_you_mean(wrong: str, choices: Iterable[str]) -> str:
    """The hint "; did you mean 'x'?" for the closest of `choices` to `wrong`, or ""."""
    near = closest(wrong, choices)
    return f"; did you mean '{near}'?" if near else ""


def find_model(name: str) -> PrinterModel | None:
    """The model called `name`, one of its aliases, its full title ("Original Prusa MK4S", "Bambu Lab
    A1 mini") or the name its G-code gives it ("MK4IS"), case, spaces and dashes aside; or None."""
    wanted = _key(name)
    if not wanted:
        return None
    for key, model in MODELS.items():
        if _key(key) == wanted:
            return model
    target = next((m for alias, m in ALIASES.items() if _key(alias) == wanted), None)
    if target:
        return MODELS.get(target)
    return next((m for m in MODELS.values() if wanted in (_key(m.title), _key(m.printer_model))), None)


def check_model(name: str) -> PrinterModel:
    """The model `name` means; UnknownChoice (with the closest name) when there is none."""
    model = find_model(name)
    if model is None:
        names = {key: key for key in MODELS} | ALIASES  # an alias suggests the model it stands for
        near = closest(_key(name), names)
        hint = f"; did you mean '{names[near]}'?" if near else ";"
        raise UnknownChoice(
            f"unknown printer model '{name}'{hint} known models: {', '.join(MODELS)} (`farm profiles`)"
        )
    return model


def check_material(name: str, model: PrinterModel | None = None) -> str:
    """`name` as the farm spells it ("petg" -> "PETG"); UnknownChoice when no printer (of `model`)
    can load it. The one rule for `farm submit --material` and `farm printers set --material`."""
    material = name.strip().upper()
    choices = model.materials if model else MATERIALS
    if material not in choices:
        where = f" for the {model.name}" if model else ""
        hint = did_you_mean(material, choices)
        raise UnknownChoice(f"unknown material '{name}'{where}{hint or ';'} choose from {', '.join(choices)}")
    return material


def check_quality(name: str, model: PrinterModel | None = None) -> str:
    quality = name.strip().lower()
    choices = model.qualities if model else QUALITIES
    if quality not in choices:
        hint = did_you_mean(quality, choices)
        raise UnknownChoice(f"unknown quality '{name}'{hint or ';'} choose from {', '.join(choices)}")
    return quality


def check_color(name: str) -> str | None:
    """A filament colour as the farm keeps it: words of letters and digits (also `#`, `+`, `-`, `.`,
    `/`, `'`), spaces collapsed; "" is none. Matching ignores case. The one rule for
    `farm submit --color` and `farm printers set --color`."""
    color = " ".join(name.split())
    if not color:
        return None
    if len(color) > MAX_COLOR_CHARS:
        raise UnknownChoice(f"a colour name has at most {MAX_COLOR_CHARS} characters, not {len(color)}")
    bad = sorted({c for c in color if not (c.isalnum() or c in " #+-./'")})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise UnknownChoice(f"colour '{name}' has characters a colour name does not: {shown}")
    return color
