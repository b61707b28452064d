"""The Dramatiq actors: a CAD build and a slice, each a round trip through the coordinator's API.

Workers need only the Redis URL, the coordinator URL and a token: inputs are downloaded and outputs
uploaded over HTTP, so a worker can run on any machine. A mistake in the user's design is reported
as the build's error; only infrastructure trouble (the coordinator unreachable) raises, so that
Dramatiq retries the message with back-off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from pydantic import ValidationError

from farm.core import wire
from farm.core.client import FarmClient, FarmError
from farm.core.printer_models import PrinterModel, get_model
from farm.core.queue import CAD_ACTOR, CAD_QUEUE, SLICE_ACTOR, SLICE_QUEUE
from farm.core.settings import Settings
from farm.core.slice_error import SliceError
from workers.cad_cache import CadCache, cached_build
from workers.cad_runner import CadRunner
from workers.cad_types import CadError, CadRequest, CadResult
from workers.gcode_meta import GcodeMeta, parse_sliced_file
from workers.slice_cache import SliceCache
from workers.slicer import slice_mesh

log = logging.getLogger("farm.worker")
# A message whose coordinator could not be reached comes back after 2-5 s, for about four minutes
# (the coordinator's housekeeper sends work unbegun for work_resend_s again after that in any case);
# any other failure is retried with Dramatiq's back-off, 10 times.
AWAY_RETRY_MS, AWAY_RETRIES, RETRIES = (2_000, 5_000), 70, 10


def _retry_when(retries: int, exc: BaseException) -> bool:
    return retries < (AWAY_RETRIES if isinstance(exc, dramatiq.Retry) else RETRIES)


@dataclass
class WorkerContext:
    settings: Settings
    client: FarmClient
    cad: CadRunner | None = None  # when this worker serves the CAD queue
    cad_cache: CadCache | None = None  # a rebuild of unchanged code, entry and params is a lookup
    slice_cache: SliceCache | None = None  # one cached slice serves every printer of that model
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")  # holds leases


@contextlib.contextmanager
def heartbeat(path: str, beat_once: Callable[[], wire.Held], every_s: float | None) -> Iterator[None]:
    """While the body runs, tell the coordinator every `every_s` (`beat_once`, the call to `path`)
    that this worker still holds the work (its lease); a worker that dies stops, and the
    coordinator sends the work again. None: the coordinator did not say; every 10 s."""
    done = threading.Event()
    every_s = 10.0 if every_s is None else every_s

    def beat() -> None:
        while not done.wait(every_s):
            try:
                if not beat_once().held:
                    log.warning("%s: the lease is no longer this worker's; finishing anyway", path)
            except Exception as error:  # the next beat tries again: one failed beat must not end them
                log.warning("%s failed: %s", path, error)

    thread = threading.Thread(target=beat, name=f"heartbeat {path}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _user_error(exc: FarmError) -> bool:
    """4xx: our request was wrong and retrying will not help; anything else may pass."""
    return exc.status is not None and 400 <= exc.status < 500


def build_cad(ctx: WorkerContext, build_id: int) -> None:
    started = ctx.client.cad_start(build_id, ctx.name)
    if not started.go:
        log.info("build %s is past CAD or another worker's; skipping a duplicate message", build_id)
        return
    beat = functools.partial(ctx.client.cad_heartbeat, build_id, ctx.name)
    with heartbeat(f"/api/builds/{build_id}/cad/heartbeat", beat, started.heartbeat_s):
        _build_cad(ctx, build_id, started.build)


def _build_cad(ctx: WorkerContext, build_id: int, build: wire.BuildView) -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"farm-cad-{build_id}-") as tmp:
        os.chmod(tmp, 0o711)  # the build's own uid passes through to src/, cannot list
        request = _cad_request(ctx, build, Path(tmp))
        if ctx.cad is None or ctx.cad_cache is None:  # main.run sets both for a CAD worker
            raise RuntimeError("this worker does not serve the CAD queue")
        try:
            result, hit = cached_build(ctx.cad, ctx.cad_cache, request, use_cache=build.use_cache)
        except CadError as exc:
            log.info("build %s failed: %s", build_id, exc)
            failed = {"error": str(exc), "seconds": time.monotonic() - t0}
            ctx.client.cad_result(build_id, wire.CadResult.model_validate(failed))
            return
        uploaded = _upload_cad_outputs(ctx, result, PurePath(build.source).stem)
    bbox = [list(result.bbox[0]), list(result.bbox[1])]
    made = {
        **uploaded,
        "objects": result.objects,
        "bbox": bbox,
        "volume": result.volume,
        "seconds": time.monotonic() - t0,
        "skipped": result.skipped,
        "cached": hit,  # for /metrics
    }
    ctx.client.cad_result(build_id, wire.CadResult.model_validate(made))
    log.info("build %s meshed in %.2f s%s", build_id, time.monotonic() - t0, " (cache hit)" if hit else "")


def _cad_request(ctx: WorkerContext, build: wire.BuildView, tmp: Path) -> CadRequest:
    """Download the build's source into `tmp` and say what to build from it."""
    outdir = tmp / "out"
    outdir.mkdir()
    if build.project:  # an archive; the runner unpacks it in the build's private folder
        archive = ctx.client.download_artifact(build.source_sha256, tmp / "project.tar.gz")
        source, project = Path(build.source), archive
    else:
        source = tmp / "src" / PurePath(build.source).name
        ctx.client.download_artifact(build.source_sha256, source)
        project = None
    return CadRequest(
        source=source,
        outdir=outdir,
        entry=build.entry,
        params=build.params,
        project=project,
        step=build.step_requested,
    )


def _upload_cad_outputs(ctx: WorkerContext, result: CadResult, stem: str) -> dict[str, str]:
    """Upload the files the build made; the artifact ids by kind, as the result reports them."""
    outputs = {
        "stl": (result.stl, f"{stem}.stl"),
        "threemf": (result.threemf, f"{stem}.3mf"),
        "step": (result.step, f"{stem}.step"),
        "preview": (result.preview, f"{stem}.png"),
        "preview_small": (result.preview_small, f"{stem}-96.png"),
    }
    return {kind: ctx.client.upload_artifact(path, name) for kind, (path, name) in outputs.items() if path}


def slice_build(ctx: WorkerContext, slice_id: int) -> None:
    started = ctx.client.slice_start(slice_id, ctx.name)
    if not started.go:
        log.info("slice %s is done or another worker's; skipping a duplicate message", slice_id)
        return
    beat = functools.partial(ctx.client.slice_heartbeat, slice_id, ctx.name)
    with heartbeat(f"/api/slices/{slice_id}/heartbeat", beat, started.heartbeat_s):
        _slice(ctx, slice_id, started.slice)


def _slice(ctx: WorkerContext, slice_id: int, sl: wire.SliceWork) -> None:
    t0 = time.monotonic()
    if sl.kind == "gcode":
        _read_presliced(ctx, sl)
        return
    model = get_model(sl.printer_model)
    if model is None:
        no_profile = {"error": f"no slicing profile for printer model '{sl.printer_model}'"}
        ctx.client.slice_result(slice_id, wire.SliceResult.model_validate(no_profile))
        return
    mesh_sha, suffix = _mesh_to_slice(sl)
    if mesh_sha is None:  # a slice is queued only once its build has a mesh: fail it plainly if not
        ctx.client.slice_result(slice_id, wire.SliceResult(error=f"build {sl.build} has no mesh to slice"))
        return
    stem = PurePath(sl.source).stem
    with tempfile.TemporaryDirectory(prefix=f"farm-slice-{slice_id}-") as tmp:
        mesh = ctx.client.download_artifact(mesh_sha, Path(tmp) / f"{stem}{suffix}")
        preview = _preview_png(ctx, sl, model, Path(tmp))
        out = Path(tmp) / f"{stem}_{model.name}.gcode"
        try:
            result = slice_mesh(
                mesh,
                model,
                out,
                material=sl.material,
                quality=sl.quality,
                overrides=sl.overrides,
                copies=sl.copies or 1,
                slicer=Path(ctx.settings.slicer_path) if ctx.settings.slicer_path else None,
                cache=ctx.slice_cache,
                thumbnail_png=preview,
            )
        except SliceError as exc:
            log.info("slice %s failed: %s", slice_id, exc)
            failed = {"error": str(exc), "seconds": time.monotonic() - t0}
            ctx.client.slice_result(slice_id, wire.SliceResult.model_validate(failed))
            return
        gcode = ctx.client.upload_artifact(result.gcode, result.gcode.name)  # .gcode.3mf for Bambu
    sliced = {
        "gcode": gcode,
        "meta": _estimates(result.meta),
        "seconds": time.monotonic() - t0,
        "cached": result.cached,
    }
    ctx.client.slice_result(slice_id, wire.SliceResult.model_validate(sliced))
    log.info(
        "slice %s for %s done in %.2f s%s",
        slice_id,
        model.name,
        time.monotonic() - t0,
        " (cache hit)" if result.cached else "",
    )


def _mesh_to_slice(sl: wire.SliceWork) -> tuple[str | None, str]:
    """The artifact to slice and the suffix that tells the slicer what it is."""
    suffix = PurePath(sl.source).suffix.lower() if sl.kind == "mesh" else ".stl"
    if sl.kind == "cad" and (sl.objects or 1) > 1 and sl.threemf:
        # The STL is one mesh; the 3MF keeps the objects apart, so the slicer places each.
        return sl.threemf, ".3mf"
    return sl.stl, suffix


def _preview_png(ctx: WorkerContext, sl: wire.SliceWork, model: PrinterModel, tmp: Path) -> bytes | None:
    # The slicer makes no thumbnail headless: the CAD preview stands in (a package's plate
    # picture, or a small `; thumbnail` block in plain G-code for the printer's screen and web UI).
    picture = sl.preview if model.output_suffix != ".gcode" else sl.preview_small
    if not picture:
        return None
    return ctx.client.download_artifact(picture, tmp / "preview.png").read_bytes()


def _estimates(meta: GcodeMeta) -> dict[str, object]:
    return {k: getattr(meta, k) for k in ("print_time_s", "filament_g", "filament_mm", "printer_model")}


def _read_presliced(ctx: WorkerContext, sl: wire.SliceWork) -> None:
    """A submitted .gcode / .gcode.3mf is not sliced: read which printer it is for and its estimates."""
    t0 = time.monotonic()
    name = PurePath(sl.source).name
    with tempfile.TemporaryDirectory(prefix=f"farm-presliced-{sl.id}-") as tmp:
        path = ctx.client.download_artifact(sl.source_sha256, Path(tmp) / name)
        try:
            meta = parse_sliced_file(path)
        except SliceError as exc:
            ctx.client.slice_result(sl.id, wire.SliceResult(error=str(exc)))
            return
    error = None
    if not meta.printer_model:
        error = (
            f"{name} does not say which printer it was sliced for (no M862.3 or '; printer_model'); "
            "submit the mesh instead, or slice it with a printer profile"
        )
    elif sl.printer_model and meta.printer_model != sl.printer_model:
        error = (
            f"{name} was sliced for {meta.printer_model}, not {sl.printer_model}; "
            f"submit it with --printer-model {meta.printer_model} or slice the mesh again"
        )
    elif get_model(meta.printer_model) is None:
        error = f"{name} was sliced for {meta.printer_model}, a printer model this farm does not know"
    body = (
        {"error": error}
        if error
        else {
            "gcode": sl.source_sha256,
            "meta": _estimates(meta),
        }
    )
    result = wire.SliceResult.model_validate({**body, "seconds": time.monotonic() - t0})
    ctx.client.slice_result(sl.id, result)


def register(broker: RedisBroker, ctx: WorkerContext, queues: set[str]) -> None:
    """Declare the actors on this broker, bound to this worker's context."""
    limit_ms = (ctx.settings.cad_wall_s + 120) * 1000

    def _guard(fn: Callable[[WorkerContext, int], None], *args: int) -> None:
        try:
            fn(ctx, *args)
        except ValidationError as exc:  # what the coordinator would refuse (422), or answer unreadably
            log.error("%s%s gave up: %s", fn.__name__, args, exc)
        except FarmError as exc:
            if _user_error(exc):
                log.error("%s%s gave up: %s", fn.__name__, args, exc)
                return
            # The coordinator is restarting or away: one line, no traceback, and the message comes
            # back in a few seconds (Dramatiq's own back-off starts at 15 s and doubles: work caught
            # by two coordinator restarts waited minutes after it was back, in bench/chaos.py).
            log.warning("%s%s: %s; trying again shortly", fn.__name__, args, exc)
            raise dramatiq.Retry(str(exc), delay=random.randint(*AWAY_RETRY_MS)) from exc

    def declare(name: str, queue: str, fn: Callable[[int], None]) -> None:
        decorate = dramatiq.actor(
            actor_name=name, queue_name=queue, broker=broker, retry_when=_retry_when, time_limit=limit_ms
        )
        decorate(fn)

    if CAD_QUEUE in queues:
        declare(CAD_ACTOR, CAD_QUEUE, lambda build_id: _guard(build_cad, build_id))
    if SLICE_QUEUE in queues:
        declare(SLICE_ACTOR, SLICE_QUEUE, lambda slice_id: _guard(slice_build, slice_id))
