"""`farm worker`: a Dramatiq worker process serving the CAD queue, the slicing queue, or both."""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq

from farm.client import FarmClient
from farm.queue import CAD_QUEUE, SLICE_QUEUE, get_broker
from farm.settings import Settings
from workers.actors import WorkerContext, register
from workers.cad_cache import CadCache
from workers.slice_cache import SliceCache

log = logging.getLogger("farm.worker")
ALL_QUEUES = frozenset({CAD_QUEUE, SLICE_QUEUE})


def run(settings: Settings, queues: set[str]) -> None:
    if not settings.redis_url:
        raise SystemExit("farm worker needs FARM_REDIS_URL (the Redis the coordinator uses)")
    token = settings.resolved_token()
    if not token:
        raise SystemExit("farm worker needs FARM_TOKEN (a worker or admin token)")
    broker = get_broker(settings.redis_url)
    ctx = WorkerContext(settings=settings, client=FarmClient(settings.url, token, timeout=120))
    if CAD_QUEUE in queues:
        from workers.cad_runner import CadLimits, CadRunner

        ctx.cad = CadRunner(
            CadLimits(
                cpu_s=settings.cad_cpu_s,
                wall_s=settings.cad_wall_s,
                memory_mb=settings.cad_memory_mb,
                output_mb=settings.cad_output_mb,
            )
        )
        ctx.cad.start()  # pays the build123d import once, before the first job
        ctx.cad_cache = CadCache(settings.data_dir / "cad-cache")
    if SLICE_QUEUE in queues:
        ctx.slice_cache = SliceCache(settings.data_dir / "slice-cache")
    register(broker, ctx, queues)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=settings.worker_threads)
    worker.start()
    log.info("worker ready: queues %s, %d threads", ", ".join(sorted(queues)), settings.worker_threads)
    stop.wait()
    log.info("worker stopping")
    worker.stop(timeout=10_000)
    if ctx.cad is not None:
        ctx.cad.close()
    ctx.client.close()
    broker.close()
