"""The security boundary, attacked: agents reading other printers' G-code, submitters acting on
others' jobs, viewers writing, revoked and expired tokens. A real coordinator app (SQLite, a real
Redis for its queue) through Starlette's TestClient; the test plays the worker and the agents."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from farm.coordinator.api import create_app
from farm.coordinator.api.deps import TOKEN_RELOAD_S
from farm.core.settings import Settings


@dataclass
class Coordinator:
    client: TestClient
    settings: Settings
    admin: str

    def call(self, token: str, method: str, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    def token(self, name: str, role: str, **extra: object) -> str:
        resp = self.call(self.admin, "POST", "/api/tokens", json={"name": name, "role": role, **extra})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])

    def submit(self, token: str, name: str, data: bytes, **options: object) -> dict:
        resp = self.call(
            token, "POST", "/api/builds", files={"file": (name, data)}, data={"options": json.dumps(options)}
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def slice_as_worker(self, worker: str, build: dict, gcode: bytes) -> str:
        """What a slicing worker does: upload the G-code, report it for the build's slice."""
        up = self.call(worker, "PUT", "/api/artifacts", params={"name": "part.gcode"}, content=gcode)
        sha = str(up.json()["sha256"])
        done = self.call(
            worker, "POST", f"/api/slices/{build['slices'][0]['id']}/result", json={"gcode": sha}
        )
        assert done.status_code == 200, done.text
        return sha


def _coordinator(data: Path, redis_url: str) -> Settings:
    # A Redis database of its own: the session's `farm up` workers must not see these builds.
    return Settings(data_dir=data, redis_url=redis_url.rsplit("/", 1)[0] + "/9", database_url=None)


@pytest.fixture
def coord(tmp_path: Path, redis_url: str) -> Iterator[Coordinator]:
    settings = _coordinator(tmp_path, redis_url)
    with TestClient(create_app(settings)) as client:
        yield Coordinator(client, settings, settings.admin_token_file.read_text().strip())


@dataclass
class Fleet:
    """Two printers (pa, a MINI; pb, an MK3S), each with its agent token; alice's and bob's builds."""

    agent_a: str
    agent_b: str
    alice: str
    bob: str
    worker: str
    viewer: str
    build_a: dict  # alice's G-code for pa, sliced
    build_b: dict  # bob's G-code for pb, sliced
    cad: dict  # alice's .py design, queued for a CAD worker
    gcode_a: str
    gcode_b: str


@pytest.fixture
def fleet(coord: Coordinator) -> Fleet:
    agents = {}
    for name, model in (("pa", "MINI"), ("pb", "MK3S")):
        agents[name] = coord.token(f"agent-{name}", "agent", printer=name)
        reg = {"printer": name, "model": model, "protocol": "prusalink", "auto_eject": True}
        assert coord.call(agents[name], "POST", "/api/agents/register", json=reg).status_code == 200
    alice, bob = coord.token("alice", "submitter"), coord.token("bob", "submitter")
    worker, viewer = coord.token("worker", "worker"), coord.token("eve", "viewer")
    build_a = coord.submit(alice, "a.gcode", b"G28 ; a\n", printer="pa")
    build_b = coord.submit(bob, "b.gcode", b"G28 ; b\n", printer="pb", attempts=1)
    cad = coord.submit(alice, "part.py", b"def part():\n    pass\n")
    gcode_a = coord.slice_as_worker(worker, build_a, b"G28 ; sliced for pa\n")
    gcode_b = coord.slice_as_worker(worker, build_b, b"G28 ; sliced for pb\n")
    return Fleet(
        agents["pa"], agents["pb"], alice, bob, worker, viewer, build_a, build_b, cad, gcode_a, gcode_b
    )


def _artifact(coord: Coordinator, token: str, sha: str) -> tuple[int, str]:
    resp = coord.call(token, "GET", f"/api/artifacts/{sha}")
    return resp.status_code, resp.text


def test_an_agent_reads_only_the_gcode_of_its_own_printers_jobs(coord: Coordinator, fleet: Fleet) -> None:
    a, b = fleet.agent_a, fleet.agent_b
    # Before any claim: pa may prefetch what it would print next (the agent does, while a bed waits).
    assert coord.call(a, "GET", "/api/agents/next", params={"printer": "pa"}).json() == {
        "gcode": fleet.gcode_a
    }
    assert _artifact(coord, a, fleet.gcode_a)[0] == 200
    status, text = _artifact(coord, b, fleet.gcode_a)
    assert status == 403 and "printer ('pb')" in text

    claimed = {}
    for name, token in (("pa", a), ("pb", b)):
        resp = coord.call(token, "POST", "/api/agents/claim", json={"printer": name, "state": "idle"})
        assert resp.status_code == 200, resp.text
        claimed[name] = resp.json()
    assert (claimed["pa"]["gcode"], claimed["pb"]["gcode"]) == (fleet.gcode_a, fleet.gcode_b)

    assert _artifact(coord, a, fleet.gcode_a) == (200, "G28 ; sliced for pa\n")
    assert _artifact(coord, a, fleet.gcode_b)[0] == 403  # printer pb's G-code
    assert _artifact(coord, a, fleet.cad["source_sha256"])[0] == 403  # a submitter's source
    assert _artifact(coord, a, fleet.build_a["source_sha256"])[0] == 403  # its own job's source

    # Once its job has ended, the printer holds it no more: its G-code is no longer pa's to read.
    job = claimed["pa"]
    for state in ("uploading", "printing", "done"):
        body = {"printer": "pa", "fence": job["fence"], "state": state}
        assert coord.call(a, "POST", f"/api/agents/jobs/{job['id']}/report", json=body).status_code == 200
    assert _artifact(coord, a, fleet.gcode_a)[0] == 403


def test_people_read_the_artifacts_their_role_allows(coord: Coordinator, fleet: Fleet) -> None:
    source = fleet.cad["source_sha256"]
    assert _artifact(coord, fleet.alice, source) == (200, "def part():\n    pass\n")
    assert _artifact(coord, fleet.alice, fleet.gcode_a)[0] == 200
    status, text = _artifact(coord, fleet.bob, source)
    assert status == 403 and "not from a build of 'bob's" in text
    assert _artifact(coord, fleet.bob, fleet.gcode_a)[0] == 403
    assert _artifact(coord, fleet.viewer, fleet.gcode_a)[0] == 200  # what a build made
    status, text = _artifact(coord, fleet.viewer, source)
    assert status == 403 and "not sources" in text
    assert _artifact(coord, fleet.worker, source)[0] == 200  # a CAD worker builds it
    assert _artifact(coord, coord.admin, source)[0] == 200


def test_builds_and_jobs_have_owners_and_only_they_or_an_admin_act_on_them(
    coord: Coordinator, fleet: Fleet
) -> None:
    shown = coord.call(fleet.viewer, "GET", f"/api/builds/{fleet.cad['id']}").json()
    assert shown["owner"] == "alice" and [j["owner"] for j in shown["jobs"]] == ["alice"]
    listed = {j["id"]: j["owner"] for j in coord.call(fleet.bob, "GET", "/api/jobs").json()}
    job_a, job_b, job_cad = (b["jobs"][0]["id"] for b in (fleet.build_a, fleet.build_b, fleet.cad))
    assert (listed[job_a], listed[job_b], listed[job_cad]) == ("alice", "bob", "alice")

    # Bob's job fails on pb (one attempt), so there is something to retry.
    claim = coord.call(
        fleet.agent_b, "POST", "/api/agents/claim", json={"printer": "pb", "state": "idle"}
    ).json()
    failed = {"printer": "pb", "fence": claim["fence"], "state": "failed", "error": "spaghetti"}
    assert (
        coord.call(fleet.agent_b, "POST", f"/api/agents/jobs/{job_b}/report", json=failed).status_code == 200
    )

    for action in ("retry", "cancel"):
        refused = coord.call(fleet.alice, "POST", f"/api/jobs/{job_b}/{action}")
        assert refused.status_code == 403, refused.text
        assert f"job {job_b} belongs to 'bob'" in refused.json()["detail"]
    assert coord.call(fleet.bob, "POST", f"/api/jobs/{job_b}/retry").json()["state"] == "ready"
    assert coord.call(fleet.bob, "POST", f"/api/jobs/{job_cad}/cancel").status_code == 403
    assert coord.call(fleet.alice, "POST", f"/api/jobs/{job_cad}/cancel").json()["state"] == "cancelled"
    assert coord.call(coord.admin, "POST", f"/api/jobs/{job_b}/cancel").json()["state"] == "cancelled"
    assert coord.call(fleet.bob, "POST", "/api/jobs/999999/cancel").status_code == 404


def test_a_viewer_reads_everything_and_changes_nothing(coord: Coordinator, fleet: Fleet) -> None:
    job = fleet.build_a["jobs"][0]["id"]
    for path in (
        "/api/status",
        "/api/jobs",
        f"/api/jobs/{job}",
        f"/api/jobs/{job}/explain",
        "/api/builds",
        f"/api/builds/{fleet.build_a['id']}",
        "/api/printers",
    ):
        assert coord.call(fleet.viewer, "GET", path).status_code == 200, path
    writes = [
        ("POST", "/api/builds", {"files": {"file": ("x.stl", b"solid x")}}),
        ("POST", f"/api/jobs/{job}/cancel", {}),
        ("POST", f"/api/jobs/{job}/retry", {}),
        ("PATCH", "/api/printers/pa", {"json": {"material": "PETG"}}),
        ("POST", "/api/printers/pa/clear", {}),
        ("DELETE", "/api/printers/pa", {}),
        ("POST", "/api/tokens", {"json": {"name": "mallory", "role": "admin"}}),
        ("GET", "/api/tokens", {}),
        ("DELETE", "/api/tokens/alice", {}),
        ("PUT", "/api/artifacts", {"content": b"x"}),
        ("POST", "/api/agents/heartbeat", {"json": {"printer": "pa", "state": "idle"}}),
        ("POST", f"/api/builds/{fleet.cad['id']}/cad/start", {}),
    ]
    for method, path, kwargs in writes:
        resp = coord.call(fleet.viewer, method, path, **kwargs)
        assert resp.status_code == 403 and "a viewer token cannot do this" in resp.json()["detail"], path
    assert coord.call(fleet.viewer, "GET", "/api/jobs").json()[0]["state"] != "cancelled"


def test_a_revoked_token_is_refused_at_once_and_its_name_can_be_given_again(coord: Coordinator) -> None:
    carol = coord.token("carol", "submitter")
    assert coord.call(carol, "GET", "/api/jobs").status_code == 200  # now in the token cache
    agent = coord.token("spare-agent", "agent", printer="pc")
    reg = {"printer": "pc", "model": "MINI", "protocol": "prusalink"}
    assert coord.call(agent, "POST", "/api/agents/register", json=reg).status_code == 200
    beat = {"printer": "pc", "state": "idle"}
    assert coord.call(agent, "POST", "/api/agents/heartbeat", json=beat).status_code == 200  # fast lane

    assert coord.call(carol, "DELETE", "/api/tokens/carol").status_code == 403  # not its own to revoke
    for name in ("carol", "spare-agent"):
        revoked = coord.call(coord.admin, "DELETE", f"/api/tokens/{name}")
        assert revoked.status_code == 200 and revoked.json()["tokens"][0]["revoked_at"], revoked.text
    refused = coord.call(carol, "GET", "/api/jobs")
    assert refused.status_code == 401 and "token 'carol' was revoked" in refused.json()["detail"]
    for path in ("/api/agents/heartbeat", "/api/agents/claim"):  # the fast lane refuses it too
        refused = coord.call(agent, "POST", path, json=beat)
        assert refused.status_code == 401 and "was revoked" in refused.json()["detail"], path

    again = coord.call(coord.admin, "DELETE", "/api/tokens/carol")
    assert again.status_code == 404 and "already revoked" in again.json()["detail"]
    listed = {t["name"]: t for t in coord.call(coord.admin, "GET", "/api/tokens").json()}
    assert listed["carol"]["revoked_at"] is not None
    new_carol = coord.token("carol", "submitter")  # a new secret under the old name
    assert coord.call(new_carol, "GET", "/api/jobs").status_code == 200
    assert coord.call(carol, "GET", "/api/jobs").status_code == 401


def test_another_coordinator_process_refuses_a_revoked_token_within_the_reload_bound(
    coord: Coordinator, redis_url: str
) -> None:
    """`farm server --workers N`: each process keeps its own token cache."""
    dan = coord.token("dan", "submitter")
    with TestClient(create_app(coord.settings)) as other:
        as_dan = {"Authorization": f"Bearer {dan}"}
        assert other.get("/api/jobs", headers=as_dan).status_code == 200  # cached there now
        assert coord.call(coord.admin, "DELETE", "/api/tokens/dan").status_code == 200
        assert coord.call(dan, "GET", "/api/jobs").status_code == 401  # this process: at once
        time.sleep(TOKEN_RELOAD_S + 0.2)
        refused = other.get("/api/jobs", headers=as_dan)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_an_expired_token_is_refused_and_says_so(coord: Coordinator) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    frank = coord.token("frank", "viewer", expires_at=soon.isoformat())
    listed = {t["name"]: t for t in coord.call(coord.admin, "GET", "/api/tokens").json()}
    assert datetime.fromisoformat(listed["frank"]["expires_at"]) == soon
    assert coord.call(frank, "GET", "/api/status").status_code == 200
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    refused = coord.call(frank, "GET", "/api/status")
    assert refused.status_code == 401 and "token 'frank' expired at" in refused.json()["detail"]

    for bad, words in (
        ("2020-01-01T00:00:00Z", "has passed"),
        ("next week", "expires_at"),
    ):
        resp = coord.call(
            coord.admin, "POST", "/api/tokens", json={"name": "x", "role": "viewer", "expires_at": bad}
        )
        assert resp.status_code == 422 and words in resp.text, resp.text
    resp = coord.call(coord.admin, "POST", "/api/tokens", json={"name": "x", "role": "guest"})
    assert resp.status_code == 422 and "viewer" in resp.text
    resp = coord.call(coord.admin, "POST", "/api/tokens", json={"name": "a/b", "role": "viewer"})
    assert resp.status_code == 422 and "name" in resp.text  # it could never be revoked by name
