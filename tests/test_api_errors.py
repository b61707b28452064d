"""Bad requests get a 4xx with a message that says what to fix; never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from farm.coordinator.api.deps import Farm, find_token, hash_secret, new_secret
from farm.coordinator.db import make_engine
from farm.coordinator.models import Token
from farm.coordinator.store import ArtifactStore
from farm.core.settings import Settings
from tests.conftest import EXAMPLES, RunningFarm


@pytest.fixture
def api(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


def test_no_or_wrong_token_is_401(farm: RunningFarm) -> None:
    assert "FARM_TOKEN" in httpx.get(f"{farm.url}/api/jobs").json()["detail"]
    bad = httpx.get(f"{farm.url}/api/jobs", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "unknown token" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        ({"file": ("part.docx", b"x")}, {}, 415, ".py"),
        ({"file": ("part.stl", b"")}, {}, 422, "empty"),
        ({"file": ("part.py", b"x=1")}, {"options": "{not json"}, 422, "options"),
        ({"file": ("part.py", b"x=1")}, {"options": '{"copies": 0}'}, 422, "copies"),
        (  # a plain function's parameter is typed at submit time, not in a failed build later
            {"file": ("part.py", b"def plate(length=40):\n    pass\n")},
            {"options": '{"params": {"length": "long"}}'},
            422,
            "parameter 'length' expects a number, got 'long'",
        ),
    ],
)
def test_bad_submissions(api: httpx.Client, files: dict, data: dict, status: int, words: str) -> None:
    resp = api.post("/api/builds", files=files, data=data)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["detail"]


def test_unknown_things_are_404(api: httpx.Client) -> None:
    for path in ("/api/builds/999999", "/api/jobs/999999"):
        resp = api.get(path)
        assert resp.status_code == 404 and "999999" in resp.json()["detail"]
    assert api.get("/api/artifacts/xyz").status_code == 400
    assert api.get("/api/artifacts/" + "0" * 64).status_code == 404


@pytest.mark.parametrize("name", ["bad\x00name", "trailing\n", "tab\tname", "del\x7f", "\x1b[31mred"])
def test_a_printer_name_with_control_characters_is_refused(api: httpx.Client, name: str) -> None:
    """The name check is Python, not a regex (farm/core/wire.py): a trailing newline, which a `$`
    lets through in Python's engine, is refused like any other control character."""
    resp = api.post("/api/agents/register", json={"printer": name, "model": "MINI", "protocol": "prusalink"})
    assert resp.status_code == 422 and "control characters" in resp.text
    assert all(p["name"] != name for p in api.get("/api/printers").json())


def test_an_agent_cannot_report_on_a_job_it_does_not_hold(api: httpx.Client, farm: RunningFarm) -> None:
    code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "--wait")
    job = build["jobs"][0]
    assert code == 0 and job["state"] == "done"
    resp = api.post(
        f"/api/agents/jobs/{job['id']}/report",
        json={"printer": job["printer"], "fence": 0, "state": "printing"},
    )
    assert resp.status_code == 409 and "no longer held" in resp.json()["detail"]


def test_agent_calls_answer_like_the_routes_whichever_way_they_are_served(
    api: httpx.Client, farm: RunningFarm
) -> None:
    """farm/coordinator/api/fastlane.py answers ordinary heartbeats, claims and reports itself and hands the
    rest to the routes. Each case twice: once with a token new to the coordinator process, once
    with it known."""
    reg = {"printer": "lane-test", "model": "MINI", "protocol": "prusalink"}
    assert api.post("/api/agents/register", json=reg).status_code == 200
    code, agent = farm.cli_json("tokens", "create", "lane-agent", "--role", "agent", "--printer", "lane-test")
    assert code == 0
    as_agent = {"Authorization": f"Bearer {agent['token']}"}
    nothing_loaded = {"printer": "lane-test", "state": "idle", "material": "PVB"}  # no job is PVB
    answers: list[list[tuple[int, object]]] = []
    fresh = [  # a token per call below
        api.post("/api/tokens", json={"name": f"lane {i}", "role": "agent", "printer": "lane-test"}).json()
        for i in range(9)
    ]
    try:
        for _ in range(2):
            calls = [
                ("/api/agents/claim", nothing_loaded),
                ("/api/agents/claim", {"printer": "sim-mini-1", "state": "idle"}),
                ("/api/agents/claim", {"printer": "lane-test"}),
                ("/api/agents/jobs/999999/report", {"printer": "lane-test", "fence": 1, "state": "printing"}),
                ("/api/agents/jobs/999999/report", {"printer": "lane-test", "fence": 1, "state": "bogus"}),
                ("/api/agents/jobs/9999999999/report", {"printer": "lane-test", "fence": 1, "state": "done"}),
                ("/api/agents/jobs/0/report", {"printer": "lane-test", "fence": 1, "state": "done"}),
                ("/api/agents/jobs/1/report", {"printer": "sim-mini-1", "fence": 1, "state": "done"}),
                (
                    "/api/agents/jobs/7/report",
                    {"printer": "lane-test", "fence": 1, "state": "printing", "remaining_s": 2**40},
                ),
            ]
            got = [
                api.post(path, json=body, headers={"Authorization": f"Bearer {t['token']}"})
                for (path, body), t in zip(calls, fresh, strict=True)
            ]
            answers.append([(r.status_code, r.json() if r.content else None) for r in got])
            assert [r.status_code for r in got] == [204, 403, 422, 404, 422, 422, 422, 403, 422], answers[-1]
            assert "bound to printer 'lane-test'" in got[1].json()["detail"]
            assert got[3].json() == {"detail": "no job 999999"}
            assert "bound to printer 'lane-test'" in got[7].json()["detail"]
            nan = b'{"printer": "lane-test", "state": "idle", "progress": NaN}'  # Python's json writes it
            for path in ("/api/agents/heartbeat", "/api/agents/claim"):
                refused = api.post(path, content=nan, headers={"content-type": "application/json"})
                assert refused.status_code == 422 and "progress" in refused.text
            ok = api.post("/api/agents/heartbeat", json={"printer": "lane-test", "state": "idle"})
            assert ok.status_code == 200 and ok.json() == {"job": None, "fence": None}, ok.text
            assert ok.headers["content-type"] == "application/json"
            mine = api.post(
                "/api/agents/heartbeat", json={"printer": "lane-test", "state": "idle"}, headers=as_agent
            )
            assert mine.status_code == 200 and mine.json() == {"job": None, "fence": None}, mine.text
            other = api.post(
                "/api/agents/heartbeat", json={"printer": "sim-mini-1", "state": "idle"}, headers=as_agent
            )
            assert other.status_code == 403 and "bound to printer 'lane-test'" in other.json()["detail"]
            gone = api.post("/api/agents/heartbeat", json={"printer": "no-such", "state": "idle"})
            assert gone.status_code == 404 and "not registered" in gone.json()["detail"]
            bad = api.post("/api/agents/heartbeat", json={"printer": "lane-test"})
            assert bad.status_code == 422 and "state" in bad.text
            garbage = api.post(
                "/api/agents/heartbeat", content=b"{not json", headers={"content-type": "application/json"}
            )
            assert garbage.status_code == 422
            # Longer than the fast lane reads: the route gets the whole body all the same.
            long = {"printer": "lane-test", "state": "attention", "message": "x" * 200_000}
            assert api.post("/api/agents/heartbeat", json=long).status_code == 200
            shown = api.get("/api/printers").json()
            assert next(p for p in shown if p["name"] == "lane-test")["message"] == "x" * 200_000
            nobody = httpx.post(
                f"{farm.url}/api/agents/heartbeat", json={"printer": "lane-test", "state": "idle"}
            )
            assert nobody.status_code == 401 and "FARM_TOKEN" in nobody.json()["detail"]
        assert answers[0] == answers[1]
    finally:
        removed = farm.cli("printers", "remove", "lane-test")
        assert removed.returncode == 0, removed.stderr


def test_a_token_miss_loads_every_token_once_and_wrong_tokens_cannot_force_reloads(tmp_path: Path) -> None:
    """After a restart every agent's first call misses the token cache: the first miss loads all."""
    engine = make_engine(f"sqlite:///{tmp_path / 'farm.coordinator.db'}")
    farm = Farm(
        settings=Settings(data_dir=tmp_path), engine=engine, store=ArtifactStore(tmp_path), broker=None
    )
    secrets = [new_secret() for _ in range(3)]
    with Session(engine) as session:
        session.add_all(
            Token(name=f"t{i}", role="agent", printer=f"p{i}", secret_sha256=hash_secret(s))
            for i, s in enumerate(secrets)
        )
        session.commit()
    queries: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    assert asyncio.run(find_token(farm, secrets[0])).name == "t0"  # type: ignore[union-attr]
    assert [asyncio.run(find_token(farm, s)).name for s in secrets[1:]] == ["t1", "t2"]  # type: ignore[union-attr]
    assert len(queries) == 1  # one load served all three
    for _ in range(3):
        assert asyncio.run(find_token(farm, "pf_wrong")) is None
    assert len(queries) == 4 and all("WHERE" in q for q in queries[1:])  # one lookup each, no reload
    late = new_secret()  # made after the load, e.g. by `farm tokens create`
    with Session(engine) as session:
        session.add(Token(name="late", role="agent", printer="p9", secret_sha256=hash_secret(late)))
        session.commit()
    assert asyncio.run(find_token(farm, late)).name == "late"  # type: ignore[union-attr]
    engine.dispose()
