"""`farm worker`: a Dramatiq worker process serving the CAD queue, the slicing queue, or both."""

from __future__ import annotations

import logging
import os

import dramatiq
import httpx
from pydantic import ValidationError

from farm.core import wire
from farm.core.client import FarmClient, FarmError
from farm.core.queue import CAD_QUEUE, SLICE_QUEUE, get_broker
from farm.core.settings import Settings
from farm.core.stopping import stop_on_signals
from workers import priority, sandbox, sandbox_probe
from workers.actors import WorkerContext, register
from workers.cad_cache import CadCache
from workers.cad_runner import CadRunner
from workers.cad_types import CadLimits
from workers.slice_cache import SliceCache

log = logging.getLogger("farm.worker")
ALL_QUEUES = frozenset({CAD_QUEUE, SLICE_QUEUE})
SANDBOX_OFF_WARNING = (
    "FARM_CAD_SANDBOX=off: CAD builds run with this worker's rights, network and files. "
    "Only for designs you trust; `farm worker --check-sandbox` says what this host can isolate."
)


def sandbox_policy(settings: Settings) -> sandbox.Policy:
    try:
        return sandbox.Policy.from_settings(settings.cad_sandbox, settings.cad_sandbox_disable)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def check_sandbox(settings: Settings) -> sandbox_probe.Report:
    """What `farm worker --check-sandbox` reports: each layer tried on this host, in a throwaway build."""
    return sandbox_probe.probe(sandbox_policy(settings))


def _announce(ctx: WorkerContext, queues: set[str], walls: str) -> None:
    report = getattr(ctx.cad, "sandbox", None)
    layers = [layer.name for layer in report.layers if layer.active] if report else []
    body = {"name": ctx.name, "queues": sorted(queues), "sandbox": walls, "layers": layers}
    try:
        ctx.client.worker_hello(wire.Hello.model_validate(body))
    except (FarmError, httpx.HTTPError, ValidationError) as error:  # status just will not list this worker
        log.warning("could not announce this worker to the coordinator: %s", error)


def batch_priority(settings: Settings) -> priority.BatchPriority:
    return priority.BatchPriority(settings.batch_nice, settings.batch_ioprio, settings.batch_policy)


def _described(seen: priority.Observed) -> str:
    return f"nice {seen.nice}, scheduling {seen.policy}, I/O {seen.io}"


def run(settings: Settings, queues: set[str]) -> None:
    # First, before any thread or child exists: all of them inherit it (the fork server, builds, PrusaSlicer).
    priority.apply(batch_priority(settings))
    if not settings.redis_url:
        raise SystemExit("farm worker needs FARM_REDIS_URL (the Redis the coordinator uses)")
    token = settings.resolved_token()
    if not token:
        raise SystemExit("farm worker needs FARM_TOKEN (a worker or admin token)")
    broker = get_broker(settings.redis_url)
    ctx = WorkerContext(settings=settings, client=FarmClient(settings.url, token, timeout=120))
    walls = "none"
    if CAD_QUEUE in queues:
        ctx.cad = CadRunner(
            CadLimits(
                cpu_s=settings.cad_cpu_s,
                wall_s=settings.cad_wall_s,
                memory_mb=settings.cad_memory_mb,
                output_mb=settings.cad_output_mb,
            ),
            policy=sandbox_policy(settings),
        )
        if settings.cad_sandbox == "off":
            log.warning(SANDBOX_OFF_WARNING)
        try:
            ctx.cad.start()  # pays the build123d import once, before the first job
        except sandbox_probe.Unavailable as refused:
            raise SystemExit(f"farm worker: {refused}") from None
        walls = "off" if settings.cad_sandbox == "off" else "isolated"
        ctx.cad_cache = CadCache(settings.data_dir / "cad-cache")
    _announce(ctx, queues, walls)
    if SLICE_QUEUE in queues:
        ctx.slice_cache = SliceCache(settings.data_dir / "slice-cache")
    register(broker, ctx, queues)

    stop = stop_on_signals()
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=settings.worker_threads)
    worker.start()
    log.info(
        "worker ready: queues %s, %d threads, %s",
        ", ".join(sorted(queues)),
        settings.worker_threads,
        _described(priority.observe(os.getpid())),
    )
    stop.wait()
    log.info("worker stopping")
    worker.stop(timeout=10_000)
    if ctx.cad is not None:
        ctx.cad.close()
    ctx.client.close()
    broker.close()
