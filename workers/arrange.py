"""Several parts on one plate: copies of a mesh, or the objects of a 3MF, placed by PrusaSlicer's
own arranger (nothing is sliced), and how many copies fit on one bed when not all do."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from pathlib import Path

from farm.core.print_options import check_overrides
from farm.core.printer_models import DEFAULT_MATERIAL, DEFAULT_QUALITY, PrinterModel
from farm.core.slice_error import SliceError
from workers.mesh_bbox import BBox, bed_text, check_fits, mesh_bbox
from workers.prusaslicer import find_slicer, run_slicer, slicer_complaint
from workers.slicer_profiles import config_numbers, flatten_profile, profile_text


def centred_on_bed(bbox: BBox, model: PrinterModel) -> BBox:
    """Where PrusaSlicer puts the part: centred on the bed in x and y, standing on z = 0."""
    (x0, y0, z0), (x1, y1, z1) = bbox
    cx, cy = model.bed[0] / 2, model.bed[1] / 2
    sx, sy = (x1 - x0) / 2, (y1 - y0) / 2
    r = functools.partial(round, ndigits=3)
    return (r(cx - sx), r(cy - sy), 0.0), (r(cx + sx), r(cy + sy), r(z1 - z0))


def rounded_bbox(bbox: BBox) -> BBox:
    """The box to the micrometre, as the G-code metadata records it."""
    (x0, y0, z0), (x1, y1, z1) = bbox
    r = functools.partial(round, ndigits=3)
    return (r(x0), r(y0), r(z0)), (r(x1), r(y1), r(z1))


class CopiesDontFit(SliceError):
    """`copies` copies do not fit on one bed; `per_plate` of them do (at least 1)."""

    def __init__(self, message: str, copies: int, per_plate: int) -> None:
        super().__init__(message)
        self.copies = copies
        self.per_plate = per_plate

    @property
    def plates(self) -> list[int]:
        return plates_for(self.copies, self.per_plate)


def plates_for(copies: int, per_plate: int) -> list[int]:
    """How `copies` split into plates of at most `per_plate`: 10 by 4 -> [4, 4, 2]."""
    per_plate = max(1, per_plate)
    full, rest = divmod(copies, per_plate)
    return [per_plate] * full + ([rest] if rest else [])


def _float(cfg: Mapping[str, str], key: str, default: float = 0.0) -> float:
    values = config_numbers(cfg.get(key, ""))
    return values[0] if values else default


def _arrange_margin(cfg: Mapping[str, str]) -> float:
    """Room to keep free along the bed edges: PrusaSlicer 2.5 arranges the parts up to the edge
    and then prints the skirt and brim around them, off the bed."""
    skirt = 0.0
    if _float(cfg, "skirts") > 0 and _float(cfg, "skirt_height", 1) > 0:
        skirt = _float(cfg, "skirt_distance") + _float(cfg, "skirts") * 1.0  # 1 mm per loop, generous
    return round(max(skirt, _float(cfg, "brim_width")) + 0.5, 2)


def _arrange_profile(cfg: Mapping[str, str], model: PrinterModel) -> str:
    m = _arrange_margin(cfg)
    bx, by = model.bed[0] - m, model.bed[1] - m
    return profile_text({**cfg, "bed_shape": f"{m:g}x{m:g},{bx:g}x{m:g},{bx:g}x{by:g},{m:g}x{by:g}"})


def _arrange(binary: Path, mesh: Path, copies: int, arrange_ini: Path, out: Path, timeout_s: float) -> bool:
    """Arrange `copies` copies with PrusaSlicer's own arranger into the 3MF `out`; False if they
    do not fit on one bed. Fast: nothing is sliced."""
    out.unlink(missing_ok=True)
    cmd = [str(binary), "--loglevel", "1", "--load", str(arrange_ini), "--duplicate", str(copies)]
    proc = run_slicer([*cmd, "--export-3mf", "-o", str(out), str(mesh.resolve())], out.parent, timeout_s)
    said = proc.stdout + proc.stderr
    if "could not fit on the bed" in said:
        return False
    if proc.returncode != 0 or not out.is_file():
        complaint = slicer_complaint(proc.stdout, proc.stderr)
        raise SliceError(f"the slicer could not arrange {copies} copies of {mesh.name}: {complaint}")
    return True


def _most_that_fit(
    binary: Path, mesh: Path, copies: int, arrange_ini: Path, tmp: Path, timeout_s: float
) -> int:
    """The largest n < copies that fits, by bisection (each probe is one quick arrange)."""
    lo, hi = 0, copies  # lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _arrange(binary, mesh, mid, arrange_ini, tmp / f"probe-{mid}.3mf", timeout_s):
            lo = mid
        else:
            hi = mid
    return lo


def arrange_copies(
    binary: Path,
    mesh: Path,
    model: PrinterModel,
    cfg: Mapping[str, str],
    copies: int,
    bbox: BBox,
    tmp: Path,
    timeout_s: float,
) -> Path:
    """A 3MF holding `copies` copies of `mesh` arranged on the bed, or CopiesDontFit."""
    arrange_ini = tmp / "arrange.ini"
    arrange_ini.write_text(_arrange_profile(cfg, model), encoding="utf-8")
    plate = tmp / "plate.3mf"
    if _arrange(binary, mesh, copies, arrange_ini, plate, timeout_s):
        return plate
    fit = max(1, _most_that_fit(binary, mesh, copies, arrange_ini, tmp, timeout_s))
    w, d = (bbox[1][i] - bbox[0][i] for i in range(2))
    plates = plates_for(copies, fit)
    bed = bed_text(model.bed[:2])
    raise CopiesDontFit(
        f"{copies} copies of {mesh.name} ({w:.1f} x {d:.1f} mm each) do not fit on one {model.name} bed "
        f"({bed} mm): {fit} fit per plate, so print them as {len(plates)} plates "
        f"({' + '.join(map(str, plates))} copies)",
        copies,
        fit,
    )


def copies_per_plate(
    mesh: Path,
    model: PrinterModel,
    copies: int,
    *,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    slicer: str | Path | None = None,
    timeout_s: float = 120,
) -> int:
    """How many of `copies` copies of `mesh` fit on one bed of `model` (at least 1, at most
    `copies`), using PrusaSlicer's arranger with the same profile a slice would use."""
    mesh = Path(mesh)
    binary = find_slicer(slicer)
    bbox = mesh_bbox(mesh)
    check_fits(bbox, model)
    cfg = {**flatten_profile(model, material, quality, bundle_dirs=None), **check_overrides(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="printfarm-arrange-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            arrange_copies(binary, mesh, model, cfg, copies, bbox, tmp, timeout_s)
        except CopiesDontFit as exc:
            return exc.per_plate
    return copies


def place_objects(
    binary: Path,
    mesh: Path,
    model: PrinterModel,
    cfg: Mapping[str, str],
    objects: int,
    tmp: Path,
    timeout_s: float,
) -> Path:
    """A 3MF with the objects of `mesh` arranged apart on the bed (they may overlap as designed,
    e.g. a lid on its box), as copies are; SliceError if they do not fit on one bed together."""
    arrange_ini = tmp / "arrange.ini"
    arrange_ini.write_text(_arrange_profile(cfg, model), encoding="utf-8")
    plate = tmp / "objects.3mf"
    if not _arrange(binary, mesh, 1, arrange_ini, plate, timeout_s):
        bed = bed_text(model.bed[:2])
        raise SliceError(
            f"the {objects} objects of {mesh.name} do not fit side by side on one {model.name} bed "
            f"({bed} mm); make them smaller, build them separately, or choose a larger printer model"
        )
    return plate
