"""List endpoints page with `limit` and a cursor; bad bounds are a 422; the client follows pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlmodel import Session
from starlette.testclient import TestClient

from farm.coordinator.api import create_app
from farm.coordinator.models import Build, Job, Printer
from farm.core.client import FarmClient
from farm.core.settings import Settings


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    app = create_app(Settings(data_dir=tmp_path))
    yield app
    app.state.farm.engine.dispose()


@pytest.fixture
def api(app: FastAPI, tmp_path: Path) -> Iterator[TestClient]:
    token = (tmp_path / "admin.token").read_text().strip()
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def _add_jobs(app: FastAPI, n: int) -> None:
    with Session(app.state.farm.engine) as session:
        build = Build(source_name="cube.stl", source_sha256="0" * 64, source_kind="mesh")
        session.add(build)
        session.flush()
        session.add_all(Job(build_id=build.id, copy_index=i) for i in range(n))  # type: ignore[arg-type]
        session.commit()


def test_jobs_page_newest_first_and_a_page_does_not_shift_when_jobs_are_added(
    app: FastAPI, api: TestClient
) -> None:
    _add_jobs(app, 5)
    first = api.get("/api/jobs", params={"limit": 2})
    assert first.status_code == 200 and [j["id"] for j in first.json()] == [5, 4]
    cursor = first.headers["X-Next-Cursor"]
    assert first.headers["Link"] == f'</api/jobs?limit=2&cursor={cursor}>; rel="next"'
    _add_jobs(app, 3)  # ids 6..8 arrive while the listing goes on
    second = api.get("/api/jobs", params={"limit": 2, "cursor": cursor})
    assert [j["id"] for j in second.json()] == [3, 2]
    last = api.get("/api/jobs", params={"limit": 2, "cursor": second.headers["X-Next-Cursor"]})
    assert [j["id"] for j in last.json()] == [1]
    assert "X-Next-Cursor" not in last.headers and "Link" not in last.headers
    exact = api.get("/api/jobs", params={"limit": 8})  # exactly one page: no cursor to an empty one
    assert len(exact.json()) == 8 and "X-Next-Cursor" not in exact.headers


def test_a_cursor_keeps_the_filter_and_serves_builds_printers_and_tokens_too(
    app: FastAPI, api: TestClient
) -> None:
    _add_jobs(app, 3)
    _add_jobs(app, 1)
    page = api.get("/api/builds", params={"limit": 1})
    assert [b["id"] for b in page.json()] == [2]
    rest = api.get("/api/builds", params={"limit": 1, "cursor": page.headers["X-Next-Cursor"]})
    assert [b["id"] for b in rest.json()] == [1] and "X-Next-Cursor" not in rest.headers
    ready = api.get("/api/jobs", params={"state": "waiting", "limit": 3})
    assert "state=waiting" in ready.headers["Link"]
    with Session(app.state.farm.engine) as session:
        session.add_all(Printer(name=n, model="MINI", protocol="prusalink") for n in ("b", "a", "c ü"))
        session.commit()
    names = api.get("/api/printers", params={"limit": 2})
    assert [p["name"] for p in names.json()] == ["a", "b"]
    more = api.get("/api/printers", params={"limit": 2, "cursor": names.headers["X-Next-Cursor"]})
    assert [p["name"] for p in more.json()] == ["c ü"]
    for i in range(2):
        assert api.post("/api/tokens", json={"name": f"t{i}", "role": "submitter"}).status_code == 201
    tokens = api.get("/api/tokens", params={"limit": 2})
    assert [t["name"] for t in tokens.json()] == ["admin", "t0"]
    after = api.get("/api/tokens", params={"cursor": tokens.headers["X-Next-Cursor"]})
    assert [t["name"] for t in after.json()] == ["t1"]


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("/api/jobs", {"limit": "-262329039169071513600"}, "greater than or equal to 1"),
        ("/api/builds", {"limit": "-262329039169071513600"}, "greater than or equal to 1"),
        ("/api/builds", {"limit": str(2**64)}, "less than or equal to 1000"),
        ("/api/jobs", {"limit": "0"}, "greater than or equal to 1"),
        ("/api/jobs", {"limit": "1001"}, "less than or equal to 1000"),
        ("/api/jobs", {"cursor": "abc"}, "not one this list gave"),
        ("/api/jobs", {"cursor": "IjEi"}, "not one this list gave"),  # the string "1", not an id
        ("/api/jobs", {"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk"}, "not one this list gave"),  # > 64 bits
        ("/api/printers", {"cursor": "MQ"}, "not one this list gave"),  # 1, not a name
        ("/api/jobs", {"cursor": "a=b"}, "pattern"),
        ("/api/jobs", {"cursor": "A" * 2000}, "at most 1024"),
        ("/api/jobs/99999999999999999999999", {}, "less than or equal to"),
        ("/api/jobs/-1", {}, "greater than or equal to 1"),
        ("/api/agents/next", {"printer": "x" * 201}, "at most 200"),
        ("/api/agents/next", {"printer": "a\x00b"}, "pattern"),  # PostgreSQL refuses NUL in text
    ],
)
def test_out_of_bounds_is_a_clear_4xx(api: TestClient, path: str, params: dict, words: str) -> None:
    resp = api.get(path, params=params)
    assert 400 <= resp.status_code < 500, resp.text
    assert words in resp.text


def test_the_client_follows_cursors(app: FastAPI, api: TestClient) -> None:
    _add_jobs(app, 2500)
    client = FarmClient("http://testserver", None)
    client._http = api  # the app in this process, with the admin token
    every = client.get_all("/api/jobs")
    assert [j["id"] for j in every] == list(range(2500, 0, -1))
    assert [j["id"] for j in client.get_all("/api/jobs", most=3)] == [2500, 2499, 2498]
    assert len(client.get_all("/api/jobs", most=1500)) == 1500
    assert client.get_all("/api/jobs", state="done") == []
