"""The dashboard's sign-in: `farm open`'s one-time link, the session cookie it sets, the token's role
behind it, and cross-site requests refused. A real coordinator app (SQLite, no queue) through
Starlette's TestClient, and once as `farm server` with the real `farm open` command."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from farm.coordinator.api import create_app
from farm.coordinator.api.deps import hash_secret
from farm.coordinator.api.websession import COOKIE, SESSION_S, SIGNIN_TTL_S, new_ticket, session_cookie
from farm.coordinator.models import Token
from farm.core.settings import Settings
from tests.conftest import farm_server, run_farm

ORIGIN = "http://testserver"  # TestClient's own origin


class Coord:
    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.admin = settings.admin_token_file.read_text().strip()

    def bearer(self, token: str, method: str, path: str, **kw: object) -> httpx.Response:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)

    def token(self, name: str, role: str, **extra: object) -> str:
        resp = self.bearer(self.admin, "POST", "/api/tokens", json={"name": name, "role": role, **extra})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])

    def link(self, token: str) -> str:
        resp = self.bearer(token, "POST", "/api/signin-links")
        assert resp.status_code == 201, resp.text
        assert resp.json()["expires_in_s"] == SIGNIN_TTL_S
        return str(resp.json()["path"])

    def visit(self, path: str) -> httpx.Response:
        self.client.cookies.clear()
        return self.client.get(path, follow_redirects=False)

    def sign_in(self, token: str) -> str:
        """The session cookie the link for `token` sets."""
        resp = self.visit(self.link(token))
        assert resp.status_code == 303, resp.text
        return resp.cookies[COOKIE]

    def with_cookie(self, cookie: str, method: str, path: str, **headers: str) -> httpx.Response:
        self.client.cookies.clear()
        return self.client.request(method, path, headers={"Cookie": f"{COOKIE}={cookie}", **headers})


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coord]:
    settings = Settings(data_dir=tmp_path, redis_url=None, database_url=None)
    with TestClient(create_app(settings)) as client:
        yield Coord(client, settings)


def test_a_link_signs_in_once_with_an_httponly_samesite_cookie(coord: Coord) -> None:
    path = coord.link(coord.admin)
    first = coord.visit(path)
    assert first.status_code == 303 and first.headers["location"] == "/"
    set_cookie = first.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert f"max-age={SESSION_S}" in set_cookie
    assert coord.admin not in first.headers["set-cookie"]  # the cookie never carries the secret
    me = coord.with_cookie(first.cookies[COOKIE], "GET", "/api/me")
    assert me.status_code == 200 and me.json() == {"name": "admin", "role": "admin"}
    again = coord.visit(path)
    assert again.status_code == 410 and "farm open" in again.text and "set-cookie" not in again.headers


def test_a_link_past_its_minutes_and_a_session_past_its_hours_are_refused(coord: Coord) -> None:
    with Session(create_app_engine(coord)) as session:
        admin = session.exec(select(Token).where(Token.secret_sha256 == hash_secret(coord.admin))).one()
    ticket, _ = new_ticket(coord.settings, admin, now=time.time() - SIGNIN_TTL_S - 1)
    assert coord.visit(f"/signin/{ticket}").status_code == 410
    fresh, _ = new_ticket(coord.settings, admin, now=time.time() - SIGNIN_TTL_S + 5)
    assert coord.visit(f"/signin/{fresh}").status_code == 303  # still inside its minutes
    old = session_cookie(coord.settings, admin.secret_sha256, now=time.time() - SESSION_S - 1)
    assert coord.with_cookie(old, "GET", "/api/me").status_code == 401
    assert coord.visit("/signin/not-a-ticket").status_code == 410


def create_app_engine(coord: Coord):  # type: ignore[no-untyped-def]
    return coord.client.app.state.farm.engine  # type: ignore[attr-defined]


def test_the_session_has_its_tokens_role_and_ends_with_it(coord: Coord) -> None:
    alice = coord.token("alice", "submitter")
    eve = coord.token("eve", "viewer")
    alice_cookie, eve_cookie = coord.sign_in(alice), coord.sign_in(eve)
    assert coord.with_cookie(alice_cookie, "GET", "/api/me").json() == {"name": "alice", "role": "submitter"}
    assert coord.with_cookie(alice_cookie, "GET", "/api/tokens").status_code == 403
    assert coord.with_cookie(coord.sign_in(coord.admin), "GET", "/api/tokens").status_code == 200
    assert coord.with_cookie(eve_cookie, "GET", "/api/printers").status_code == 200
    refused = coord.with_cookie(eve_cookie, "POST", "/api/jobs/1/cancel", Origin=ORIGIN)
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    # Revoked: the session ends with the token.
    assert coord.bearer(coord.admin, "DELETE", "/api/tokens/alice").status_code == 200
    assert coord.with_cookie(alice_cookie, "GET", "/api/me").status_code == 401
    # Machines' tokens get no link.
    for role, extra in (("agent", {"printer": "p1"}), ("worker", {})):
        machine = coord.token(f"m-{role}", role, **extra)
        assert coord.bearer(machine, "POST", "/api/signin-links").status_code == 403


def test_a_forged_or_altered_cookie_is_refused(coord: Coord) -> None:
    cookie = coord.sign_in(coord.admin)
    digest, expires, mac = cookie.split(".")
    alice = coord.token("alice", "submitter")
    other = hash_secret(alice)
    later = int(expires) + 9999
    for forged in (f"{other}.{expires}.{mac}", f"{digest}.{later}.{mac}", f"{digest}.{expires}.0"):
        assert coord.with_cookie(forged, "GET", "/api/me").status_code == 401


def test_changes_made_with_the_cookie_must_come_from_the_dashboards_own_origin(coord: Coord) -> None:
    cookie = coord.sign_in(coord.admin)
    path = "/api/printers/nowhere/clear"
    cross = coord.with_cookie(cookie, "POST", path, Origin="http://evil.example")
    assert cross.status_code == 403 and "dashboard" in cross.json()["detail"]
    assert coord.with_cookie(cookie, "POST", path).status_code == 403  # no Origin, no Fetch Metadata
    assert coord.with_cookie(cookie, "POST", path, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # From the page itself: past the check, to the route (which has no such printer).
    own = coord.with_cookie(cookie, "POST", path, Origin=ORIGIN)
    assert own.status_code == 404 and "no printer" in own.json()["detail"]
    fetch = coord.with_cookie(cookie, "POST", path, **{"Sec-Fetch-Site": "same-origin"})
    assert fetch.status_code == 404
    # Reading needs no Origin; a bearer token (the CLI, scripts) never did.
    assert coord.with_cookie(cookie, "GET", "/api/printers").status_code == 200
    assert coord.bearer(coord.admin, "POST", path).status_code == 404


def test_farm_open_no_browser_prints_a_working_link_last(tmp_path: Path, redis_url: str) -> None:
    queue = redis_url.rsplit("/", 1)[0] + "/11"  # a database of its own; no worker reads it
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path), "FARM_REDIS_URL": queue, "PYTHONUNBUFFERED": "1"}
    for key in ("FARM_TOKEN", "FARM_DATABASE_URL"):
        env.pop(key, None)
    with farm_server(env, tmp_path / "server.log") as (_, base):
        env["FARM_URL"] = base
        done = run_farm(env, "open", "--no-browser", timeout=60)
        assert done.returncode == 0, done.stderr
        link = done.stdout.strip().splitlines()[-1]
        assert link.startswith(f"{base}/signin/"), done.stdout
        with httpx.Client() as browser:
            page = browser.get(link)
            assert page.status_code == 303 and page.headers["location"] == "/"
            assert browser.get(f"{base}/api/me").json()["role"] == "admin"
            assert browser.get(link).status_code == 410
