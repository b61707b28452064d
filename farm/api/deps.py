"""What every route needs: the farm's context, a DB session, and the caller's token."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar

from dramatiq.brokers.redis import RedisBroker
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from farm.db import write_session, write_session_now
from farm.models import Token
from farm.settings import Settings
from farm.store import ArtifactStore

T = TypeVar("T")


@dataclass
class Farm:
    settings: Settings
    engine: Engine
    store: ArtifactStore
    broker: RedisBroker | None
    _tokens: dict[str, Token] = field(default_factory=dict)  # secret hash -> token; tokens never change


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return "pf_" + secrets.token_urlsafe(24)


# The writers' own threads: a few are enough to overlap PostgreSQL's round trips and commits, and
# fewer threads than the general pool's 40 means less contention for the GIL.
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="farm-write")


def _in_write_session(engine: Engine, work: Callable[..., T], *args: Any) -> T:
    with write_session(engine) as session:
        return work(session, *args)


async def write(farm: Farm, work: Callable[..., T], *args: Any) -> T:
    """`work(session, *args)` in a write_session, for the agents' calls that come every few seconds.

    On SQLite with no other writer it runs right here on the event loop: it is a few local
    statements, and a hop to the thread pool (and the GIL hand-offs between threads) costs more
    than that. PostgreSQL waits on the network, and a busy SQLite on the lock: those go to the pool.
    """
    with write_session_now(farm.engine) as session:
        if session is not None:
            return work(session, *args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_WRITERS, partial(_in_write_session, farm.engine, work, *args))


# The dependencies below that need no I/O are `async def`: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request.


async def get_farm(request: Request) -> Farm:
    return request.app.state.farm  # type: ignore[no-any-return]


def get_session(farm: Annotated[Farm, Depends(get_farm)]) -> Iterator[Session]:
    with Session(farm.engine, expire_on_commit=False) as session:
        yield session


def _find_token(farm: Farm, digest: str) -> Token | None:
    with Session(farm.engine) as session:
        return session.exec(select(Token).where(Token.secret_sha256 == digest)).first()


async def authenticate(request: Request, farm: Annotated[Farm, Depends(get_farm)]) -> Token:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>' (set FARM_TOKEN)")
    digest = hash_secret(secret.strip())
    token = farm._tokens.get(digest)
    if token is None:
        token = await run_in_threadpool(_find_token, farm, digest)
        if token is None:
            raise HTTPException(
                401,
                "unknown token: check FARM_TOKEN (farm up writes the admin token to <data dir>/admin.token)",
            )
        farm._tokens[digest] = token
    return token


def require(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency that lets admins and the named roles through."""

    async def check(token: Annotated[Token, Depends(authenticate)]) -> Token:
        if token.role != "admin" and token.role not in roles:
            raise HTTPException(
                403, f"a {token.role} token cannot do this; it needs one of: {', '.join(('admin', *roles))}"
            )
        return token

    return check


SessionDep = Annotated[Session, Depends(get_session)]
FarmDep = Annotated[Farm, Depends(get_farm)]
