"""The dashboard's sign-in: a one-time link (`farm open`) that turns into a session cookie.

A browser cannot send `Authorization: Bearer`, and a token pasted into a page would sit in its
storage for any script to read. So a person's token asks for a link (POST /api/signin-links),
valid for SIGNIN_TTL_S and good for one visit; visiting it sets an HttpOnly, SameSite=Strict
cookie that stands for that token (its role, its name as owner) until SESSION_S has passed or the
token is revoked or expires, whichever comes first: deps.authenticate looks the token up again on
every request.

Links are files in the data dir, consumed by unlinking them: of two visits at once only one
unlink succeeds, in any of the coordinator's processes. The cookie is signed (HMAC-SHA256) with a
key kept beside the admin token; it names the token by its secret's hash, never by the secret.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

from starlette.datastructures import Headers

from farm.core.settings import Settings

SIGNIN_TTL_S = 300.0
SESSION_S = 12 * 3600
COOKIE = "farm_session"
_TICKET_CHARS = 43  # token_urlsafe(32)


class HasDigest(Protocol):
    secret_sha256: str


def _tickets(settings: Settings) -> Path:
    return settings.data_dir / "signin"


@functools.cache
def _key_at(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it first: then its key is the key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def _key(settings: Settings) -> bytes:
    """The cookie-signing key: made once, 0600, shared by every coordinator process on the machine
    (read once per process)."""
    return _key_at(settings.data_dir / "session.key")


def new_ticket(settings: Settings, token: HasDigest, now: float | None = None) -> tuple[str, float]:
    """A one-time sign-in ticket for `token` and when it expires (epoch seconds)."""
    now = time.time() if now is None else now
    folder = _tickets(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in folder.iterdir():  # the few unused links people left behind
        try:
            if old.stat().st_mtime < now - SIGNIN_TTL_S:
                old.unlink()
        except FileNotFoundError:
            pass
    ticket = secrets.token_urlsafe(32)
    expires = now + SIGNIN_TTL_S
    path = folder / hashlib.sha256(ticket.encode()).hexdigest()
    path.write_text(json.dumps({"token": token.secret_sha256, "expires": expires}))
    return ticket, expires


def take_ticket(settings: Settings, ticket: str, now: float | None = None) -> str | None:
    """The token digest a ticket stands for, once: None if it is unknown, used or expired."""
    if len(ticket) != _TICKET_CHARS:
        return None
    path = _tickets(settings) / hashlib.sha256(ticket.encode()).hexdigest()
    try:
        data = json.loads(path.read_text())
        path.unlink()  # of two visits at once, only one gets past this
    except (FileNotFoundError, ValueError):
        return None
    if (time.time() if now is None else now) >= float(data["expires"]):
        return None
    return str(data["token"])


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def session_cookie(settings: Settings, digest: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_S)
    payload = f"{digest}.{expires}"
    return f"{payload}.{_sign(_key(settings), payload)}"


def session_digest(settings: Settings, cookie: str, now: float | None = None) -> str | None:
    """The token digest a session cookie stands for, or None if forged or past its time."""
    digest, _, rest = cookie.partition(".")
    expires, _, mac = rest.partition(".")
    if not (digest and expires.isdigit() and mac):
        return None
    if not hmac.compare_digest(mac, _sign(_key(settings), f"{digest}.{expires}")):
        return None
    return digest if (time.time() if now is None else now) < int(expires) else None


def same_origin(headers: Headers, scheme: str) -> bool:
    """Whether a request that changes something came from the dashboard's own pages.

    The cookie is SameSite=Strict already; this is the second lock (older browsers, a sibling
    site on the same host). Browsers send Origin with every POST, PATCH and DELETE; without one,
    the Fetch Metadata header must say same-origin."""
    origin = headers.get("origin")
    if origin is not None:
        return origin == f"{scheme}://{headers.get('host', '')}"
    return headers.get("sec-fetch-site") == "same-origin"
