"""The coordinator's HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from sqlmodel import Session, select

from farm.coordinator import dispatch, hook_runner, notify, pipeline
from farm.coordinator.api import (
    agent_package,
    agents,
    artifacts,
    builds,
    dashboard,
    enrol,
    events,
    history,
    hooks,
    inspect,
    metrics as metrics_api,
    notifications,
    operate,
    projects,
    reads,
    revisions,
    signin,
    snapshots,
    tokens,
    workers,
)
from farm.coordinator.api.bodylimit import BodyLimit
from farm.coordinator.api.deps import Farm, hash_secret, new_secret
from farm.coordinator.api.errors import NUL_IN_TEXT, document_body_errors, nul_in_text
from farm.coordinator.api.fastlane import AgentFastLane
from farm.coordinator.db import checkpoint, make_async_engine, make_engine, warm_up, write_session
from farm.coordinator.models import Build, Slice, Token
from farm.coordinator.pipeline import Outgoing
from farm.coordinator.store import ArtifactStore
from farm.core.queue import CAD_ACTOR, CAD_QUEUE, SLICE_ACTOR, SLICE_QUEUE, get_broker
from farm.core.settings import Settings, get_settings
from farm.core.states import BuildStage, SliceState

log = logging.getLogger("farm.coordinator")

# gc thresholds: Python's defaults for the young generations, a full pass 10 times rarer.
FULL_PASS_RARER = (700, 10, 100)


def ensure_admin_token(farm: Farm) -> str:
    """The admin token lives in the data dir so the CLI on this machine finds it without setup:
    FARM_ADMIN_TOKEN's secret on a first start, else a random one. Under a lock: the processes of
    `farm server --workers N` start together and must agree on one."""
    path = farm.settings.admin_token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    with (farm.settings.data_dir / "tokens.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        secret = _token_in_file(farm, path, "admin", "admin", farm.settings.admin_token)
        if farm.settings.worker_token_file is not None:
            _token_in_file(farm, farm.settings.worker_token_file, "compose-workers", "worker", None)
    return secret


def _token_in_file(farm: Farm, path: Path, name: str, role: str, given: str | None) -> str:
    """The token whose secret `path` holds (written now if missing), registered with `role`.
    A worker token someone revoked is replaced: revoking it is how its secret is changed."""
    secret = path.read_text().strip() if path.exists() else ""
    with Session(farm.engine) as session:
        token = session.exec(select(Token).where(Token.secret_sha256 == hash_secret(secret))).first()
        if not secret or (token is not None and token.revoked_at is not None and role == "worker"):
            secret, token = given or new_secret(), None
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secret + "\n")
        if token is None:
            session.add(Token(name=name, role=role, secret_sha256=hash_secret(secret)))
            session.commit()
    return secret


def resend_unfinished(farm: Farm) -> int:
    """After a restart, re-send work that may have been lost between commit and enqueue.

    Workers treat a duplicate as a no-op (cad/start answers go=false; a slice result is taken once).
    """
    with Session(farm.engine) as session:
        out = [
            Outgoing(CAD_QUEUE, CAD_ACTOR, (b.id,))
            for b in session.exec(select(Build).where(Build.stage == BuildStage.QUEUED))
        ]
        out += [
            Outgoing(SLICE_QUEUE, SLICE_ACTOR, (s.id,))
            for s in session.exec(select(Slice).where(Slice.state == SliceState.PENDING))
        ]
    builds.dispatch_outgoing(farm, out)
    return len(out)


def _expire_leases(farm: Farm) -> None:
    with write_session(farm.engine) as session:
        if dispatch.expire_leases(session, farm.settings.lease_s):
            farm.work.wake()  # jobs back in the queue: parked claims look again
    if farm.broker is None:
        return
    with write_session(farm.engine) as session:
        s = farm.settings
        out = pipeline.expire_work_leases(session, attempts=s.work_attempts, resend_s=s.work_resend_s)
        session.commit()
    if out:
        log.warning("re-sent %d CAD builds or slices whose worker stopped answering", len(out))
    builds.dispatch_outgoing(farm, out)


def housekeeping_interval(settings: Settings) -> float:
    return min(5.0, settings.lease_s / 4, settings.work_lease_s / 4)


async def _checkpoints(farm: Farm) -> None:
    """SQLite: fold the WAL into the database file every second, in a thread (see make_engine)."""
    while farm.engine.dialect.name == "sqlite":
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(checkpoint, farm.engine)
        except Exception:  # the next round retries
            log.exception("WAL checkpoint failed")


class Housekeeper:
    """With several server processes (`farm server --workers N`) one of them expires leases and
    re-sends unfinished work: whichever holds a lock file in the data dir. If it dies, another takes
    the lock on its next round."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "coordinator-housekeeper.lock"
        self._file: IO[str] | None = None

    def holds(self) -> bool:
        if self._file is None:
            f = self.path.open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return False
            self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


async def _housekeeping(farm: Farm, keeper: Housekeeper) -> None:
    while True:
        await asyncio.sleep(housekeeping_interval(farm.settings))
        if not keeper.holds():
            continue
        try:  # in a thread: a database wait must not stall every request on the event loop
            await asyncio.to_thread(_expire_leases, farm)
        except Exception:  # keep the loop alive; the next round retries
            log.exception("lease expiry failed")


async def _notifications(farm: Farm, keeper: Housekeeper) -> None:
    """Deliver notifications (farm/coordinator/notify.py): its own task and thread, so a slow receiver never
    holds up lease expiry or dispatch."""
    while True:
        await asyncio.sleep(farm.settings.notify_interval_s)
        if not keeper.holds():
            continue
        try:
            await asyncio.to_thread(notify.one_round, farm.engine, farm.settings)
        except Exception:  # the next round retries
            log.exception("notification round failed")


async def _hook_deliveries(farm: Farm, keeper: Housekeeper) -> None:
    """Build what push hooks accepted and no one has built yet: after a restart, or a fetch that
    failed and waits for its next try (farm/coordinator/hook_runner.py)."""
    while True:
        await asyncio.sleep(farm.settings.notify_interval_s)
        if not keeper.holds():
            continue
        try:
            await asyncio.to_thread(hook_runner.run_due, farm)
        except Exception:  # the next round retries
            log.exception("hook deliveries round failed")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def app_from_env() -> FastAPI:
    """The app for each of `farm server --workers N`'s processes (uvicorn imports it by name)."""
    return create_app(get_settings())


# Each module's router, in the order their routes are matched and documented.
ROUTERS = (
    builds,
    agents,
    artifacts,
    operate,
    reads,
    history,
    signin,
    tokens,
    workers,
    dashboard,
    events,
    inspect,
    metrics_api,
    notifications,
    enrol,
    agent_package,
    snapshots,
    revisions,
    projects,
    hooks,
)


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    farm = _make_farm(settings)
    ensure_admin_token(farm)
    app = FastAPI(
        title="printfarm coordinator",
        version="0.1.0",
        lifespan=_lifespan(farm, Housekeeper(settings.data_dir)),
    )
    app.state.farm = farm
    for module in ROUTERS:
        app.include_router(module.router)
    _add_middleware(app, farm)
    _add_error_handlers(app)

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    openapi = app.openapi

    def documented() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_body_errors(openapi())
        return app.openapi_schema

    app.openapi = documented  # type: ignore[method-assign]  # FastAPI's documented way to post-process it
    return app


def _make_farm(settings: Settings) -> Farm:
    return Farm(
        settings=settings,
        engine=make_engine(settings.db_url, background_checkpoints=True),
        store=ArtifactStore(settings.artifacts_dir),
        broker=get_broker(settings.redis_url) if settings.redis_url else None,
        async_engine=make_async_engine(settings.db_url, settings.db_agent_connections),
        nowait_engine=make_async_engine(settings.db_url, settings.db_agent_connections, durable=False),
    )


def _lifespan(farm: Farm, keeper: Housekeeper) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (warm the engines, re-send unfinished work) and the background rounds, then the
    shutdown that ends them."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for engine in (farm.async_engine, farm.nowait_engine):
            if engine is not None:
                await warm_up(engine)
        if farm.nowait_engine is not None:
            await dispatch.rehearse_pg(farm.nowait_engine)
        # Everything imported and built so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise walk it all and stall every request.
        gc.collect()
        gc.freeze()
        # What is built later (agents' connections, SQLAlchemy's caches) is long-lived too, and a
        # full pass over it holds the GIL for 25-50 ms (130 ms on a slow moment): at 500 requests
        # a second with Python's default of one every 10 middle passes that came every ~5 s and
        # set the p99 (bench/coordinator.py). Ten times rarer; the cyclic garbage that waits for
        # them is a few hundred objects.
        gc.set_threshold(*FULL_PASS_RARER)
        if farm.broker is not None and keeper.holds():
            resent = resend_unfinished(farm)
            if resent:
                log.info("re-sent %d unfinished work items after start", resent)
        events.end_streams_on_exit(_app.state.events, farm.work.close)
        task = asyncio.create_task(_housekeeping(farm, keeper))
        checkpoints = asyncio.create_task(_checkpoints(farm))
        notifications = asyncio.create_task(_notifications(farm, keeper))
        deliveries = asyncio.create_task(_hook_deliveries(farm, keeper))
        yield
        deliveries.cancel()
        task.cancel()
        notifications.cancel()
        checkpoints.cancel()
        keeper.release()
        for engine in (farm.async_engine, farm.nowait_engine):
            if engine is not None:
                await engine.dispose()

    return lifespan


def _add_middleware(app: FastAPI, farm: Farm) -> None:
    """The last added runs first on a request."""
    app.add_middleware(AgentFastLane, farm=farm)
    app.add_middleware(BodyLimit, max_upload_mb=farm.settings.max_upload_mb)  # before any read
    app.state.events = events.broadcaster_for(farm.engine, farm.settings)
    app.add_middleware(events.PokeOnChange, broadcaster=app.state.events)  # sees every change
    app.add_middleware(metrics_api.RequestTimer)  # outermost: times everything


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that it echoes a NaN it was sent, which JSON cannot carry
        # (that turned a 422 into a 500).
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the coordinator log"}, 500
        )

    @app.exception_handler(DataError)
    async def _refused_data(request: Request, exc: DataError) -> JSONResponse:
        if nul_in_text(exc):  # PostgreSQL; SQLite stores it
            return JSONResponse({"detail": NUL_IN_TEXT}, 422)
        return await _unexpected(request, exc)
