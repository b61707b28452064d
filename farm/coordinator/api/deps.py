"""What every route needs: the farm's context, a DB session, and the caller's token."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, TypeVar

from dramatiq.brokers.redis import RedisBroker
from fastapi import Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

from farm.coordinator.api import websession
from farm.coordinator.api.longpoll import WorkSignal
from farm.coordinator.db import write_session, write_session_now
from farm.coordinator.models import Printer, Token
from farm.coordinator.store import ArtifactStore
from farm.core.settings import Settings
from farm.core.wire import MAX_ID, MAX_NAME, NAME_PATTERN  # re-exported: the routes take them from here

T = TypeVar("T")


@dataclass
class Farm:
    settings: Settings
    engine: Engine
    store: ArtifactStore
    broker: RedisBroker | None
    # PostgreSQL: the agents' calls run on the event loop through these (see `write`); heartbeats
    # and claims (heartbeats.heartbeat_pg, claim_pg) through a pool whose commits do not wait for
    # the disk (db.make_async_engine).
    async_engine: AsyncEngine | None = None
    nowait_engine: AsyncEngine | None = None
    _tokens: dict[str, Token] = field(default_factory=dict)  # secret hash -> token (find_token)
    _tokens_loaded_at: float = -1e9
    done_slices: dict[int, tuple[Any, str | None]] = field(default_factory=dict)  # agents._done_slice
    work: WorkSignal = field(default_factory=WorkSignal)  # claims waiting for work (longpoll.py)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return "pf_" + secrets.token_urlsafe(24)


# The writers' own threads (SQLite with a busy writer): a few, since fewer threads than the
# general pool's 40 means less contention for the GIL.
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="farm-write")


def _in_write_session(engine: Engine, work: Callable[..., T], *args: Any) -> T:
    with write_session(engine) as session:
        return work(session, *args)


async def write(farm: Farm, work: Callable[..., T], *args: Any) -> T:
    """`work(session, *args)` in a write_session, for the agents' calls that come every few seconds
    (on PostgreSQL heartbeats and claims skip the session: heartbeats.heartbeat_pg and claim_pg).

    PostgreSQL: `work` runs on the event loop in a greenlet (SQLAlchemy's AsyncSession.run_sync),
    which parks it at each network round trip and serves other requests meanwhile: no thread hop,
    and no thread waiting on the GIL after each reply (a pool of threads doing round trips spent
    more time in those hand-offs than in the queries). SQLite with no other writer: right here,
    on the loop too (a few local statements). A busy SQLite waits on its lock, in a thread.
    """
    if farm.async_engine is not None:
        return await _write_async(farm.async_engine, work, *args)
    with write_session_now(farm.engine) as session:
        if session is not None:
            return work(session, *args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_WRITERS, partial(_in_write_session, farm.engine, work, *args))


async def _write_async(engine: AsyncEngine, work: Callable[..., T], *args: Any) -> T:
    async def run() -> T:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            return await session.run_sync(work, *args)

    return await reconnecting(run)


async def reconnecting(call: Callable[[], Awaitable[T]]) -> T:
    """`call()` on the async pools, once more if its connection had died.

    No ping before each use (a round trip per request): a connection that died with a database
    restart fails once, the pool drops it and its peers, and the call runs again on a fresh one.
    Safe: the agents' calls are idempotent for their agent, and the rest only read."""
    try:
        return await call()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await call()


# The dependencies below that need no I/O are `async def`: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request.


async def get_farm(request: Request) -> Farm:
    return request.app.state.farm


def found(session: Session, model: type[T], key: Any, what: str) -> T:
    """The row of `model` with primary key `key`, or a 404 "no {what} {key}"."""
    row = session.get(model, key)
    if row is None:
        raise HTTPException(404, f"no {what} {key}")
    return row


def found_printer(session: Session, name: str) -> Printer:
    """The printer called `name`, or a 404 that says where the names are."""
    printer = session.get(Printer, name)
    if printer is None:
        raise HTTPException(404, f"no printer '{name}'; `farm printers` lists them")
    return printer


def get_session(farm: Annotated[Farm, Depends(get_farm)]) -> Iterator[Session]:
    with Session(farm.engine, expire_on_commit=False) as session:
        yield session


def _all(engine: Engine, query: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(query).all())


TOKEN_RELOAD_S = 5.0


async def find_token(farm: Farm, secret: str) -> Token | None:
    """The token with this secret (revoked and expired ones too: see token_problem), or None.

    Each process keeps the tokens, and reloads them all when its copy is TOKEN_RELOAD_S old and
    a call comes: that bounds how long another coordinator process (`farm server --workers N`)
    accepts a token after it was revoked; the process that revoked it refuses it at once
    (remember_revoked). After a restart a thousand agents' first calls come at once, each with a
    token this process has not seen: the first miss loads every token in one query (so wrong
    tokens cannot make it load more often; between loads, a miss looks up its one).
    On PostgreSQL on the event loop; SQLite in a thread, since a read can wait on a checkpoint."""
    if not secret:
        return None
    return await find_token_by_digest(farm, hash_secret(secret))


async def find_token_by_digest(farm: Farm, digest: str) -> Token | None:
    """find_token, for a secret known by its hash (a dashboard session: websession.py)."""
    token = farm._tokens.get(digest)
    now = time.monotonic()
    reload = now - farm._tokens_loaded_at >= TOKEN_RELOAD_S
    if token is not None and not reload:
        return token
    if reload:
        farm._tokens_loaded_at = now
    query = select(Token) if reload else select(Token).where(Token.secret_sha256 == digest)
    if (engine := farm.async_engine) is not None:

        async def lookup() -> list[Token]:
            async with AsyncSession(engine) as async_session:
                return list((await async_session.exec(query)).all())

        found = await reconnecting(lookup)
    else:
        found = await run_in_threadpool(_all, farm.engine, query)
    fresh = {t.secret_sha256: t for t in found}
    if reload:
        # A revocation is for good: one this process made stays, even if this load began before it.
        kept = {d: t for d, t in farm._tokens.items() if t.revoked_at is not None and d in fresh}
        farm._tokens = fresh | kept
    else:
        farm._tokens.update(fresh)
    return farm._tokens.get(digest)


def remember_revoked(farm: Farm, token: Token) -> None:
    """This process refuses the token from now on; the others when they next reload (find_token)."""
    farm._tokens[token.secret_sha256] = token


def as_utc(value: datetime) -> datetime:
    """Timestamps come back from the database without a zone; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def token_problem(token: Token) -> str | None:
    """Why this token may not be used (revoked, expired), or None."""
    if token.revoked_at is not None:
        return f"token '{token.name}' was revoked; ask an admin for a new one"
    if token.expires_at is not None and as_utc(token.expires_at) <= datetime.now(UTC):
        return (
            f"token '{token.name}' expired at {as_utc(token.expires_at).isoformat(timespec='seconds')}; "
            "ask an admin for a new one"
        )
    return None


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def authenticate(request: Request, farm: Annotated[Farm, Depends(get_farm)]) -> Token:
    header = request.headers.get("authorization", "")
    if not header and (cookie := request.cookies.get(websession.COOKIE)):
        return await _from_session(request, farm, cookie)
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>' (set FARM_TOKEN)")
    token = await find_token(farm, secret.strip())
    if token is None:
        raise HTTPException(
            401,
            "unknown token: check FARM_TOKEN (farm up writes the admin token to <data dir>/admin.token)",
        )
    if (problem := token_problem(token)) is not None:
        raise HTTPException(401, problem)
    return token


async def _from_session(request: Request, farm: Farm, cookie: str) -> Token:
    """A dashboard's request: signed in by its cookie; a change must come from the page itself."""
    digest = websession.session_digest(farm.settings, cookie)
    token = await find_token_by_digest(farm, digest) if digest else None
    if token is None:
        raise HTTPException(401, "the dashboard session has ended: run `farm open` for a new sign-in link")
    if (problem := token_problem(token)) is not None:
        raise HTTPException(401, problem)
    changes = request.method not in _SAFE_METHODS
    if changes and not websession.same_origin(request.headers, request.url.scheme):
        raise HTTPException(403, "a change made with the dashboard's session must come from its own page")
    return token


def require(*roles: str) -> Callable[[Token], Coroutine[Any, Any, Token]]:
    """A dependency that lets admins and the named roles through."""

    async def check(token: Annotated[Token, Depends(authenticate)]) -> Token:
        if token.role != "admin" and token.role not in roles:
            raise HTTPException(
                403, f"a {token.role} token cannot do this; it needs one of: {', '.join(('admin', *roles))}"
            )
        return token

    return check


SessionDep = Annotated[Session, Depends(get_session)]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
PrinterPath = Annotated[str, Path(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
FarmDep = Annotated[Farm, Depends(get_farm)]
