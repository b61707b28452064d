"""Every route of the coordinator, fed requests generated from its own OpenAPI document.

Schemathesis reads app.openapi(), so routes added later are covered without touching this file.
Each generated request goes to the real app (its lifespan, middleware, a real Redis as its queue,
SQLite and then a throwaway PostgreSQL) once per role in ROLES, against a farm seeded with
printers, a build, its slice and jobs. Path ids and printer names are often swapped for the
seeded ones so that routes run past their 404. Every answer must be below 500 and conform to the
document: its status code listed, its content type, headers and body as declared.

Bounded and deterministic: at most MAX_EXAMPLES generated per operation, derandomized, no
example database, so CI sends the same requests every time (about 100 s for both databases).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session
from starlette.testclient import TestClient

from farm.coordinator.api import create_app
from farm.coordinator.api.deps import hash_secret, new_secret
from farm.coordinator.models import Token
from farm.core.settings import Settings
from tests.conftest import EXAMPLES
from tests.pgserver import PostgresUnavailable, throwaway_postgres

MAX_EXAMPLES = 100
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PRINTERS = ["st-mini", "st-mk3s"]
ROLES = ("admin", "submitter", "viewer", "agent")  # each generated request is sent as each


class Seeded:
    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, list[int]] = {}
        self.sha256: list[str] = []


SEEDED = Seeded()


def _seed(app: Any, data: Path) -> None:
    admin = (data / "admin.token").read_text().strip()
    SEEDED.tokens["admin"] = admin
    engine = app.state.farm.engine
    with Session(engine) as session:
        for role, printer in (("submitter", None), ("viewer", None), ("agent", PRINTERS[0])):
            secret = new_secret()
            digest = hash_secret(secret)
            session.add(Token(name=f"st-{role}", role=role, printer=printer, secret_sha256=digest))
            SEEDED.tokens[role] = secret
        session.commit()
    with TestClient(app, headers={"Authorization": f"Bearer {admin}"}) as client:
        for name, model in zip(PRINTERS, ("MINI", "MK3S"), strict=True):
            reg = {"printer": name, "model": model, "protocol": "prusalink"}
            assert client.post("/api/agents/register", json=reg).status_code == 200
        stl = (EXAMPLES / "cube.stl").read_bytes()
        built = client.post(
            "/api/builds",
            files={"file": ("cube.stl", stl)},
            data={"options": '{"copies": 2, "printer_model": "MINI"}'},
        )
        assert built.status_code == 201, built.text
        build = built.json()
        SEEDED.ids["build_id"] = SEEDED.ids["other_id"] = [build["id"]]  # other_id: GET .../diff/{other_id}
        SEEDED.ids["job_id"] = [j["id"] for j in build["jobs"]]
        SEEDED.ids["slice_id"] = [s["id"] for s in build["slices"]]
        SEEDED.sha256[:] = [hashlib.sha256(stl).hexdigest()]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with throwaway_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_schema(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("schemathesis")
    database = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    # A database of its own on the shared Redis: no other test's workers take these messages.
    queue = f"{redis_url.rsplit('/', 1)[0]}/14"
    app = create_app(Settings(data_dir=data, redis_url=queue, max_upload_mb=1, database_url=database))
    _seed(app, data)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES, deterministic=True, database="none", modes=["positive", "negative"]
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    yield schema
    asgi.shutdown_lifespans()  # the app's background tasks, started by schemathesis' first request
    app.state.farm.engine.dispose()
    shutil.rmtree(data, ignore_errors=True)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis' pytest plugin reads and rewrites `node._nodeid` (to name each operation's
    subtest), an attribute pytest 9.2 no longer has: give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _seeded_values(case: Any) -> None:
    """Half the ids and names that the generator picks become the seeded ones (chosen from the
    generated value itself, so the run stays deterministic)."""
    path = case.path_parameters or {}
    for name, value in path.items():
        if name in SEEDED.ids and isinstance(value, int) and value > 0 and value % 2 == 0:
            path[name] = SEEDED.ids[name][value // 2 % len(SEEDED.ids[name])]
        elif name == "name" and isinstance(value, str) and value and len(value) % 2 == 0:
            path[name] = PRINTERS[len(value) // 2 % len(PRINTERS)]
        elif name == "sha256" and isinstance(value, str) and len(value) % 2 == 0:
            path[name] = SEEDED.sha256[0]
    query = case.query or {}
    if isinstance(query.get("printer"), str) and len(query["printer"]) % 2 == 0:
        query["printer"] = PRINTERS[0]
    # A claim's long poll may rightly take `wait` seconds: a valid one is cut short so that it ends
    # inside the client's timeout; out-of-range values still go as generated (they are a 422).
    try:
        wait = float(query["wait"])
    except (KeyError, TypeError, ValueError):
        wait = 0.0
    if 0.2 < wait <= 30:
        query["wait"] = 0.2
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("printer"), str) and len(body["printer"]) % 2 == 0:
        body["printer"] = PRINTERS[len(body["printer"]) // 2 % len(PRINTERS)]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_as_documented(case: Any) -> None:
    _seeded_values(case)
    for role in ROLES:
        case.call_and_validate(headers={"Authorization": f"Bearer {SEEDED.tokens[role]}"}, checks=CHECKS)


def test_nul_in_text_is_a_422_on_postgresql(postgres: str, tmp_path: Path) -> None:
    """SQLite stores a NUL character; PostgreSQL refuses it. Either way no 500, whether the agents'
    fast lane (farm/coordinator/api/fastlane.py) or a route serves the call."""
    with sa.create_engine(postgres, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text("CREATE DATABASE nul_test"))
    app = create_app(Settings(data_dir=tmp_path, database_url=postgres.rsplit("/", 1)[0] + "/nul_test"))
    token = (tmp_path / "admin.token").read_text().strip()
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            reg = {"printer": "p", "model": "MINI", "protocol": "prusalink"}
            assert client.post("/api/agents/register", json=reg).status_code == 200
            calls = [
                ("/api/agents/register", {**reg, "model": "MINI\x00"}),
                ("/api/agents/heartbeat", {"printer": "p", "state": "idle", "color": "\x00"}),
                ("/api/agents/claim", {"printer": "p", "state": "idle", "message": "\x00"}),
                ("/api/tokens", {"name": "a\x00", "role": "submitter"}),
            ]
            for path, body in calls:
                resp = client.post(path, json=body)
                assert resp.status_code == 422, (path, resp.text)
                assert "NUL" in resp.json()["detail"][0]["msg"]
            assert (
                client.post("/api/agents/heartbeat", json={"printer": "p", "state": "idle"}).status_code
                == 200
            )
    finally:
        app.state.farm.engine.dispose()
