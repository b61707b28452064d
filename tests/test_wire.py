"""The wire protocol (farm/core/wire.py) is one set of models for the three sides that speak it:
the coordinator's routes take and answer them, the OpenAPI document shows them, and FarmClient's
typed methods (farm/core/client.py) send and parse them. These tests fail when one side drifts:
a route that takes or answers another shape than the model, a schema that is not the model's, an
answer (from the route or from fastlane.py, which answers most agent calls without FastAPI) that
the model does not reproduce key for key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from sqlmodel import Session
from starlette.testclient import TestClient

from farm.coordinator.api import create_app
from farm.core import wire
from farm.core.client import FarmClient, FarmError
from farm.core.settings import Settings
from farm.core.states import JobState, PrinterState, SliceState
from tests.coordinator_fixtures import create_build, ready_build

# (method, path, the request body's model, the 200 answer's model): every typed FarmClient call.
CALLS: list[tuple[str, str, type[BaseModel] | None, type[BaseModel] | None]] = [
    ("post", "/api/agents/register", wire.Register, wire.Registered),
    ("post", "/api/agents/heartbeat", wire.Heartbeat, wire.HeartbeatAnswer),
    ("post", "/api/agents/claim", wire.Heartbeat, wire.Claim),
    ("get", "/api/agents/next", None, wire.NextGcode),
    ("post", "/api/agents/jobs/{job_id}/report", wire.Report, wire.JobView),
    ("post", "/api/workers", wire.Hello, wire.WorkerView),
    ("post", "/api/builds/{build_id}/cad/start", wire.WorkerClaim, wire.CadStart),
    ("post", "/api/builds/{build_id}/cad/heartbeat", wire.WorkerClaim, wire.Held),
    ("post", "/api/builds/{build_id}/cad/result", wire.CadResult, None),  # answers the build (a dict)
    ("post", "/api/slices/{slice_id}/start", wire.WorkerClaim, wire.SliceStart),
    ("post", "/api/slices/{slice_id}/heartbeat", wire.WorkerClaim, wire.Held),
    ("post", "/api/slices/{slice_id}/result", wire.SliceResult, wire.SliceView),
]
REF = "#/components/schemas/"


@dataclass
class Coordinator:
    app: Any
    http: TestClient  # as the admin
    client: FarmClient  # the typed client, over `http`


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    app = create_app(Settings(data_dir=tmp_path))
    token = (tmp_path / "admin.token").read_text().strip()
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as http:
            client = FarmClient(str(http.base_url), token)
            client._http.close()
            client._http = http  # the same calls, into the app in this process
            yield Coordinator(app, http, client)
    finally:
        app.state.farm.engine.dispose()


def _schema_ref(schema: dict[str, Any] | None) -> str | None:
    """The component a body's or an answer's schema names (an optional body: anyOf [it, null])."""
    if schema is None:
        return None
    if "$ref" in schema:
        return str(schema["$ref"]).removeprefix(REF)
    refs = [s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s]
    return refs[0].removeprefix(REF) if len(refs) == 1 else None


def _model_schema(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF + "{model}", mode=mode)
    schema.pop("$defs", None)
    for prop in schema["properties"].values():  # FastAPI's document leaves out `"default": null`
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    return schema


def _fields(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    return set(schema["properties"]), set(schema.get("required", []))


def test_the_openapi_document_shows_the_wire_models(coordinator: Coordinator) -> None:
    doc = coordinator.app.openapi()
    components = doc["components"]["schemas"]
    for method, path, request, answer in CALLS:
        op = doc["paths"][path][method]
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        ok = op["responses"]["200"].get("content", {}).get("application/json", {}).get("schema")
        assert _schema_ref(body) == (request.__name__ if request else None), (method, path, body)
        if answer is not None:
            assert _schema_ref(ok) == answer.__name__, (method, path, ok)
        modes: list[tuple[type[BaseModel] | None, JsonSchemaMode]] = [
            (request, "validation"),  # what the route takes
            (answer, "serialization"),  # what it sends
        ]
        for model, mode in modes:
            if model is None:
                continue
            shown, own = components[model.__name__], _model_schema(model, mode)
            assert _fields(shown) == _fields(own), (path, model.__name__, _fields(shown), _fields(own))
            assert shown["properties"] == own["properties"], (path, model.__name__)


def _same_json(model: type[BaseModel], raw: Any) -> BaseModel:
    """The answer parses into the model, and the model gives back exactly the JSON that came: no
    key the model does not know (a response_model would drop it), none added, no value changed."""
    parsed = model.model_validate(raw)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == raw, model.__name__
    return parsed


def test_a_printer_and_a_worker_round_trip_through_the_typed_client(coordinator: Coordinator) -> None:
    client, http, engine = coordinator.client, coordinator.http, coordinator.app.state.farm.engine

    reg = wire.Register(printer="p", model="MINI", protocol="prusalink", state=PrinterState.IDLE)
    assert client.register(reg) == wire.Registered(printer="p", job=None)
    idle = wire.Heartbeat(printer="p", state=PrinterState.IDLE, message=None, progress=None)
    assert client.heartbeat(idle) == wire.HeartbeatAnswer(job=None, fence=None)
    assert client.claim(idle) == (None, False)
    assert client.next_gcode("p") is None

    with Session(engine) as s:
        (job,) = ready_build(s, models=["MINI"])
        job_id = job.id
    assert job_id is not None
    hint = client.next_gcode("p")
    assert hint is not None and hint.gcode == "1" * 64

    claimed = client.claim(idle)
    claim = claimed.job
    assert claim is not None and claim.id == job_id and claim.gcode == "1" * 64
    assert claim.gcode_name.startswith(f"job{job_id}-") and claim.state == JobState.CLAIMED
    assert claimed.snapshot_wanted is False

    # What each answer carried, raw: fastlane.py serves the short calls, the routes (through their
    # response_model) the long ones; both give the model's JSON, key for key.
    route = {"message": "x" * (70 * 1024)}  # longer than the fast lane reads
    for extra in ({}, route):
        beat = http.post("/api/agents/heartbeat", json={**wire.body(idle), **extra})
        got = _same_json(wire.HeartbeatAnswer, beat.json())
        assert got == wire.HeartbeatAnswer(job=job_id, fence=claim.fence)
        again = http.post("/api/agents/register", json={**wire.body(reg), **extra})
        bound = _same_json(wire.Registered, again.json()).job
        assert bound is not None
        assert (bound.id, bound.fence, bound.gcode, bound.gcode_name) == (
            claim.id,
            claim.fence,
            claim.gcode,
            claim.gcode_name,
        )
        report = {"printer": "p", "fence": claim.fence, "state": "uploading", "progress": 0.0, **extra}
        reported = http.post(f"/api/agents/jobs/{job_id}/report", json=report)
        assert reported.status_code == 200, reported.text
        view = _same_json(wire.JobView, reported.json())
        assert view.id == job_id and view.state == JobState.UPLOADING and view.copy_index == 1
    assert set(reported.json()) == {f.alias or name for name, f in wire.JobView.model_fields.items()}

    sent = wire.Report(printer="p", fence=claim.fence, state=JobState.PRINTING, progress=5.0, remaining_s=60)
    printing = client.report(job_id, sent)
    assert (printing.state, printing.progress, printing.remaining_s) == (JobState.PRINTING, 5.0, 60)
    with pytest.raises(FarmError) as stale:
        client.report(job_id, wire.Report(printer="p", fence=claim.fence - 1, state=JobState.DONE))
    assert stale.value.status == 409

    # A claim while the printer holds a job hands the same job back (an agent restarted mid-upload).
    again_claimed = client.claim(idle, wait_s=0.5).job
    assert again_claimed is not None and (again_claimed.id, again_claimed.fence) == (job_id, claim.fence)

    # The workers' side: hello, then a slice taken under a lease, beaten and finished.
    hello = client.worker_hello(wire.Hello(name="host:1", queues=["slice"], sandbox="off"))
    assert (hello.name, hello.queues, hello.layers) == ("host:1", ["slice"], [])
    raw_hello = http.post("/api/workers", json={"name": "host:1", "queues": ["slice"], "sandbox": "off"})
    _same_json(wire.WorkerView, raw_hello.json())
    with Session(engine) as s:
        build, _jobs, _out = create_build(s, printer_model="MINI")
        s.commit()
        build_id = build.id
    assert build_id is not None
    cad = client.cad_start(build_id, "host:1")  # a mesh needs no CAD: not this worker's to take
    assert cad.go is False and cad.build["id"] == build_id and cad.lease_s is None
    slice_id = cad.build["slices"][0]["id"]
    started = client.slice_start(slice_id, "host:1")
    assert started.go is True and started.slice["id"] == slice_id
    assert started.lease_s is not None and started.heartbeat_s is not None
    assert client.slice_start(slice_id, "host:2").go is False  # another worker holds it
    assert client.slice_heartbeat(slice_id, "host:1").held is True
    assert client.slice_heartbeat(slice_id, "host:2") == wire.Held(held=False)
    raw_start = http.post(f"/api/slices/{slice_id}/start", json={"worker": "host:2"}).json()
    assert set(_same_json(wire.SliceStart, raw_start).model_fields_set) == {"go", "slice"}  # no lease: absent
    done = client.slice_result(slice_id, wire.SliceResult(error="no profile"))
    assert done.state == SliceState.FAILED and done.error == "no profile"
    assert client.cad_heartbeat(build_id, "host:1").held is False


def test_the_typed_client_sends_the_json_the_agent_sent_before() -> None:
    """An absent key stays absent (the agent sent `material` only when the printer said it), an
    explicit null stays null, enums go as their values."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"job": None, "fence": None})

    client = FarmClient("http://farm.invalid", "t")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    beat = wire.Heartbeat(printer="p", state=PrinterState.IDLE, message=None, progress=None)
    assert client.heartbeat(beat) == wire.HeartbeatAnswer(job=None, fence=None)
    beat.material = "PETG"
    client.heartbeat(beat)
    sent = {"printer": "p", "state": "idle", "message": None, "progress": None}
    assert seen == [("/api/agents/heartbeat", sent), ("/api/agents/heartbeat", {**sent, "material": "PETG"})]
