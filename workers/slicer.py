"""Slicing a mesh for a printer model: the profile, the bed-fit check, the arranged plate, the
PrusaSlicer run, its estimates, the Bambu package and the slice cache, in one `slice_mesh`.

The steps live in their own modules: `slicer_profiles` (the flat profile), `mesh_bbox` (measuring
the mesh), `arrange` (several parts on one plate), `prusaslicer` (the binary) and `gcode_meta`
(what the G-code says about itself).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.core.print_options import check_overrides
from farm.core.printer_models import DEFAULT_MATERIAL, DEFAULT_QUALITY, PrinterModel
from farm.core.slice_error import SliceError
from workers.arrange import arrange_copies, centred_on_bed, place_objects, rounded_bbox
from workers.bambu3mf import PACKAGE_FORMAT, PlateInfo, package_gcode
from workers.bed_load import MARK as BED_LOAD_MARK, fill_bed_load
from workers.gcode_meta import GcodeMeta, embed_thumbnail, gcode_thumbnails, parse_gcode_meta
from workers.mesh_bbox import MEASURED_SUFFIXES, BBox, check_fits, count_3mf_items, mesh_bbox
from workers.prusaslicer import check_known_keys, find_slicer, raise_for_failure, run_slicer, slicer_version
from workers.slice_cache import SliceCache, cache_key
from workers.slicer_profiles import flatten_profile, profile_text


@dataclass
class SliceResult:
    gcode: Path  # the file to send to the printer: plain G-code, or a .gcode.3mf for Bambu
    meta: GcodeMeta
    plain_gcode: Path | None = None  # the text G-code (the same file as `gcode` unless packaged)
    cache_key: str | None = None
    cached: bool = False  # True when the slicer did not run: the result came from the cache


def output_paths(out: Path, model: PrinterModel) -> tuple[Path, Path]:
    """(plain G-code, file to send) for `out`: the same file unless the model takes a .gcode.3mf,
    which then sits next to the G-code (`x.gcode` -> `x.gcode.3mf`, and the reverse)."""
    out = Path(out)
    if model.output_suffix == ".gcode":
        return out, out
    if out.name.endswith(".gcode.3mf"):
        return out.with_name(out.name.removesuffix(".3mf")), out
    plain = out if out.name.endswith(".gcode") else out.with_name(out.name + ".gcode")
    return plain, plain.with_name(plain.name + ".3mf")


def _packaging(model: PrinterModel) -> str:
    if model.output_suffix == ".gcode":
        return "gcode"
    return f"{PACKAGE_FORMAT}:{model.bambu_model_id}"


def slice_mesh(
    mesh: Path,
    model: PrinterModel,
    out: Path,
    *,
    material: str = DEFAULT_MATERIAL,
    quality: str = DEFAULT_QUALITY,
    overrides: Mapping[str, str] | None = None,
    copies: int = 1,
    slicer: str | Path | None = None,
    timeout_s: float = 600,
    bundle_dirs: Sequence[Path] | None = None,
    cache: SliceCache | None = None,
    thumbnail_png: bytes | None = None,
) -> SliceResult:
    """Slice `mesh` for `model` into `out`; every failure is a SliceError.

    For a Bambu model `result.gcode` is the `.gcode.3mf` beside `out` (see `output_paths`) and
    `result.plain_gcode` the text G-code inside it. With a `cache`, an identical earlier slice
    (same mesh bytes, flattened profile, copies and slicer version) is copied instead of sliced.
    `copies` > 1 arranges that many copies on one plate (one G-code); when they do not all fit,
    CopiesDontFit (a SliceError) says how many do, so the caller can make several plates.
    A 3MF with several objects is arranged on the plate as separate objects. `thumbnail_png` (the
    CAD preview) becomes a Bambu package's plate picture when the G-code carries no thumbnail.
    """
    mesh, out = Path(mesh), Path(out)
    if not 1 <= copies <= 1000:
        raise SliceError(f"copies must be from 1 to 1000, not {copies}")
    binary = find_slicer(slicer)
    bbox = _checked_bbox(mesh, model, copies)
    cfg = _profile(binary, model, material, quality, overrides, bundle_dirs)
    plain, send = output_paths(out, model)
    send.parent.mkdir(parents=True, exist_ok=True)
    text = profile_text(cfg)
    objects = count_3mf_items(mesh) if mesh.suffix.lower() == ".3mf" else 1
    key = None
    if cache is not None:
        extra = _cache_extra(model, copies, objects, thumbnail_png)
        key = cache_key(mesh, text, slicer_version(binary), extra=extra)
        hit = cache.get(key)
        if hit is not None and {"gcode", "send"} <= hit.files.keys():
            return _from_cache(hit.files, hit.meta, plain, send, key)
    try:
        plate = _Plate(mesh, bbox, copies, objects)
        meta = _slice_plate(binary, plate, model, cfg, text, plain, timeout_s)
        if send != plain:
            _package(plain, send, model, meta, cfg, thumbnail_png)
        elif thumbnail_png and not meta.thumbnails:
            meta.thumbnails = [embed_thumbnail(plain, thumbnail_png)]
    except SliceError:
        _discard(send)
        raise
    if cache is not None and key is not None:
        cache.put(key, {"gcode": plain, "send": send}, meta.to_json())
    return SliceResult(gcode=send, meta=meta, plain_gcode=plain, cache_key=key)


def _checked_bbox(mesh: Path, model: PrinterModel, copies: int) -> BBox | None:
    """The mesh's box, refused when larger than the bed; None for a mesh the farm cannot measure."""
    if not mesh.is_file():
        raise SliceError(f"the mesh {mesh} does not exist")
    if mesh.suffix.lower() in MEASURED_SUFFIXES:
        # Before the slicer: it would slice a part taller than the printer without complaint.
        bbox = mesh_bbox(mesh)
        check_fits(bbox, model)
        return bbox
    if copies > 1:
        readable = ", ".join(MEASURED_SUFFIXES)
        raise SliceError(f"copies need a mesh the farm can measure ({readable}), not {mesh.name}")
    return None


def _profile(
    binary: Path,
    model: PrinterModel,
    material: str,
    quality: str,
    overrides: Mapping[str, str] | None,
    bundle_dirs: Sequence[Path] | None,
) -> dict[str, str]:
    """The flat profile with the job's overrides, each a setting this binary knows."""
    cfg = flatten_profile(model, material, quality, bundle_dirs=bundle_dirs)
    extra = check_overrides(overrides or {})
    if extra:
        check_known_keys(cfg, extra, binary)
        cfg.update(extra)
    return cfg


def _cache_extra(model: PrinterModel, copies: int, objects: int, thumbnail_png: bytes | None) -> str:
    """What else, beside mesh, profile and slicer, decides the bytes of the result."""
    packaging = _packaging(model) + (f";copies={copies}" if copies > 1 else "")
    packaging += f";objects={objects}" if objects > 1 else ""
    if thumbnail_png:
        packaging += f";preview={hashlib.sha256(thumbnail_png).hexdigest()}"
    return packaging


@dataclass
class _Plate:
    mesh: Path
    bbox: BBox | None  # None for a mesh the farm cannot measure (then copies == 1)
    copies: int
    objects: int  # the 3MF's build items; 1 for other meshes

    @property
    def arranged(self) -> bool:
        return self.copies > 1 or self.objects > 1


def _slice_plate(
    binary: Path,
    plate: _Plate,
    model: PrinterModel,
    cfg: Mapping[str, str],
    text: str,
    plain: Path,
    timeout_s: float,
) -> GcodeMeta:
    """Arrange the copies or objects when there are several, slice, and record where the parts sit."""
    mesh, bbox = plate.mesh, plate.bbox
    with tempfile.TemporaryDirectory(prefix="printfarm-slice-") as tmp_name:
        tmp = Path(tmp_name)
        source, placed = mesh, centred_on_bed(bbox, model) if bbox else None
        if plate.copies > 1:
            assert bbox is not None
            source = arrange_copies(binary, mesh, model, cfg, plate.copies, bbox, tmp, timeout_s)
            placed = rounded_bbox(mesh_bbox(source))
        elif plate.objects > 1:
            source = place_objects(binary, mesh, model, cfg, plate.objects, tmp, timeout_s)
            placed = rounded_bbox(mesh_bbox(source))
        meta = _slice_to(
            binary, source, mesh.name, model, plain, text, tmp, timeout_s, arranged=plate.arranged
        )
    meta.bbox = placed
    return meta


def _slice_to(
    binary: Path,
    mesh: Path,
    name: str,
    model: PrinterModel,
    out: Path,
    text: str,
    tmp: Path,
    timeout_s: float,
    *,
    arranged: bool = False,
) -> GcodeMeta:
    _discard(out)  # a failed run must not leave an older G-code looking like its result
    try:
        profile = tmp / "profile.ini"
        profile.write_text(text, encoding="utf-8")
        cmd = [str(binary), "--loglevel", "1", "--load", str(profile), "--export-gcode"]
        if arranged:
            cmd.append("--dont-arrange")  # keep the plate's arrangement
        proc = run_slicer([*cmd, "-o", str(out.resolve()), str(mesh.resolve())], tmp, timeout_s)
        raise_for_failure(proc, name, model, out)
        if BED_LOAD_MARK in text:
            try:
                fill_bed_load(out)
            except (ValueError, OSError) as exc:
                raise SliceError(f"cannot write the bed load into the G-code: {exc}") from exc
        meta = parse_gcode_meta(out)
        if meta.printer_model and meta.printer_model != model.name:
            raise SliceError(
                f"the {model.name} profile produced G-code for a {meta.printer_model}; "
                f"its bundle {model.bundle} is inconsistent"
            )
    except SliceError:
        _discard(out)
        raise
    return meta


def _package(
    plain: Path,
    send: Path,
    model: PrinterModel,
    meta: GcodeMeta,
    cfg: Mapping[str, str],
    fallback_png: bytes | None = None,
) -> None:
    thumbs = [t for t in gcode_thumbnails(plain) if t.format == "png"]
    info = PlateInfo(
        printer_model=model.printer_model,
        printer_model_id=model.bambu_model_id,
        nozzle_diameter=meta.nozzle_diameter,
        print_time_s=meta.print_time_s,
        filament_g=meta.filament_g,
        filament_mm=meta.filament_mm,
        filament_type=meta.filament_type,
        layers=meta.layers,
        max_z=meta.bbox[1][2] if meta.bbox else None,
        bbox=meta.bbox,
        thumbnail_png=max(thumbs, key=lambda t: t.width * t.height).data if thumbs else fallback_png,
        bed=(model.bed[0], model.bed[1]),
        filament_colour=cfg.get("filament_colour"),
    )
    try:
        package_gcode(plain, send, info, cfg)
    except OSError as exc:
        raise SliceError(f"cannot write {send.name}: {exc}") from exc


def _from_cache(
    files: Mapping[str, Path], meta: Mapping[str, object], plain: Path, send: Path, key: str
) -> SliceResult:
    try:
        shutil.copyfile(files["gcode"], plain)
        if send != plain:
            shutil.copyfile(files["send"], send)
    except OSError as exc:
        raise SliceError(f"cannot copy the cached slice to {send.parent}: {exc}") from exc
    return SliceResult(
        gcode=send, meta=GcodeMeta.from_json(meta), plain_gcode=plain, cache_key=key, cached=True
    )


def _discard(out: Path) -> None:
    out.unlink(missing_ok=True)
    # PrusaSlicer writes "<out>.tmp" and renames it when done; a killed run leaves it behind.
    out.with_name(out.name + ".tmp").unlink(missing_ok=True)
