"""The wire protocol (farm/core/wire.py) is one set of models for the three sides that speak it:
the coordinator's routes take and answer them, the OpenAPI document shows them, and FarmClient's
typed methods (farm/core/client.py) send and parse them. These tests fail when one side drifts:
a route that takes or answers another shape than the model, a schema that is not the model's, an
answer (from the route or from fastlane.py, which answers most agent calls without FastAPI) that
the model does not reproduce key for key, a view (api/views.py) with a key its model would drop,
a `--json` that is not the answer as it came."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dramatiq.brokers.stub import StubBroker
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from sqlmodel import Session, col, select
from starlette.testclient import TestClient
from typer.testing import CliRunner, Result

from farm.cli import app
from farm.commands import (
    common,
    history as history_command,
    revisions as revisions_command,
    status as status_command,
    submit as submit_command,
)
from farm.coordinator import explain, history, pipeline
from farm.coordinator.api import builds, create_app, notifications, reads, tokens, views
from farm.coordinator.api.deps import Farm
from farm.coordinator.models import Build, HookDelivery, Job, Printer, Project, Slice, Token, stored_id
from farm.coordinator.ops_tables import NotifyTarget
from farm.coordinator.revisions import build_diff, revision_view
from farm.core import wire
from farm.core.client import FarmClient, FarmError
from farm.core.queue import CAD_QUEUE, SLICE_QUEUE
from farm.core.settings import Settings
from farm.core.states import BuildStage, JobState, PrinterState, SliceState
from tests.coordinator_fixtures import create_build, ready_build

# (method, path, the request body's model, the 200 answer's model): the agents' and workers' calls.
CALLS: list[tuple[str, str, type[BaseModel] | None, type[BaseModel] | None]] = [
    ("post", "/api/agents/register", wire.Register, wire.Registered),
    ("post", "/api/agents/heartbeat", wire.Heartbeat, wire.HeartbeatAnswer),
    ("post", "/api/agents/claim", wire.Heartbeat, wire.Claim),
    ("get", "/api/agents/next", None, wire.NextGcode),
    ("post", "/api/agents/jobs/{job_id}/report", wire.Report, wire.JobView),
    ("post", "/api/workers", wire.Hello, wire.WorkerView),
    ("post", "/api/builds/{build_id}/cad/start", wire.WorkerClaim, wire.CadStart),
    ("post", "/api/builds/{build_id}/cad/heartbeat", wire.WorkerClaim, wire.Held),
    ("post", "/api/builds/{build_id}/cad/result", wire.CadResult, wire.BuildView),
    ("post", "/api/slices/{slice_id}/start", wire.WorkerClaim, wire.SliceStart),
    ("post", "/api/slices/{slice_id}/heartbeat", wire.WorkerClaim, wire.Held),
    ("post", "/api/slices/{slice_id}/result", wire.SliceResult, wire.SliceView),
]
# What people read (the CLI, the dashboard) and what the operators' and admins' calls answer:
# (method, path, the success answer's model, whether the answer is a list of them).
ANSWERS: list[tuple[str, str, type[BaseModel], bool]] = [
    ("get", "/api/status", wire.FarmStatus, False),
    ("get", "/api/printers", wire.PrinterView, True),
    ("get", "/api/jobs", wire.JobView, True),
    ("get", "/api/jobs/{job_id}", wire.JobView, False),
    ("get", "/api/jobs/{job_id}/explain", wire.Explained, False),
    ("get", "/api/history", wire.History, False),
    ("get", "/api/builds", wire.BuildView, True),
    ("get", "/api/builds/{build_id}", wire.BuildView, False),
    ("post", "/api/builds", wire.BuildView, False),
    ("get", "/api/slices/{slice_id}", wire.SliceWork, False),
    ("post", "/api/jobs/{job_id}/cancel", wire.JobView, False),
    ("post", "/api/jobs/{job_id}/retry", wire.JobView, False),
    ("patch", "/api/jobs/{job_id}", wire.JobView, False),
    ("post", "/api/printers/{name}/clear", wire.PrinterView, False),
    ("patch", "/api/printers/{name}", wire.PrinterView, False),
    ("post", "/api/tokens", wire.MadeToken, False),
    ("get", "/api/tokens", wire.TokenView, True),
    ("delete", "/api/tokens/{name}", wire.RevokedTokens, False),
    ("get", "/api/notify/targets", wire.TargetView, True),
    ("post", "/api/notify/targets", wire.MadeTarget, False),
    ("post", "/api/notify/targets/{target_id}/test", wire.QueuedTest, False),
    ("delete", "/api/notify/targets/{target_id}", wire.RemovedTarget, False),
    ("get", "/api/notify/log", wire.NotifyLogEntry, True),
    ("get", "/api/projects", wire.ProjectView, True),
    ("post", "/api/projects", wire.MadeProject, False),
    ("get", "/api/projects/{name}", wire.ProjectShown, False),
    ("delete", "/api/projects/{name}", wire.Removed, False),
    ("delete", "/api/printers/{name}", wire.Removed, False),
    ("get", "/api/projects/{name}/parts/{part}/revisions", wire.Revision, True),
    ("get", "/api/builds/{build_id}/diff/{other_id}", wire.BuildDiff, False),
    ("post", "/api/printers/{name}/snapshot", wire.SnapshotAsked, False),
    ("get", "/api/printers/{name}/snapshots", wire.PrinterSnapshots, False),
    ("get", "/api/jobs/{job_id}/snapshots", wire.SnapshotView, True),
    ("post", "/api/agents/jobs/{job_id}/snapshots", wire.SnapshotView, False),
    ("post", "/api/agents/printers/{name}/snapshots", wire.SnapshotView, False),
    ("post", "/api/printers/enrol", wire.EnrolmentCode, False),
    ("post", "/api/enroll/info", wire.Enrolment, False),
    ("post", "/api/enroll", wire.Enrolled, False),
    ("post", "/api/signin-links", wire.SigninLink, False),
]
# The bodies the CLI sends as wire models (the agents' and workers' are in CALLS): (method, path,
# the body's model).
BODIES: list[tuple[str, str, type[BaseModel]]] = [
    ("post", "/api/tokens", wire.NewToken),
    ("post", "/api/notify/targets", wire.NewTarget),
    ("post", "/api/projects", wire.NewProject),
    ("patch", "/api/printers/{name}", wire.PrinterSettings),
    ("patch", "/api/jobs/{job_id}", wire.JobChange),
    ("post", "/api/printers/enrol", wire.NewEnrolment),
    ("post", "/api/enroll/info", wire.CodeBody),
    ("post", "/api/enroll", wire.CodeBody),
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


def _model_schemas(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, dict[str, Any]]:
    """The model's schema and those of the models it holds, by name, as the OpenAPI components."""
    schema = model.model_json_schema(ref_template=REF + "{model}", mode=mode)
    schemas = {**schema.pop("$defs", {}), model.__name__: schema}
    for each in schemas.values():
        for prop in each.get("properties", {}).values():  # FastAPI shows no `"default": null`
            if "default" in prop and prop["default"] is None:
                del prop["default"]
    return schemas


def _shows(components: dict[str, Any], model: type[BaseModel], mode: JsonSchemaMode, where: str) -> None:
    """The document's components are the model's own schema, and those of each model it holds."""
    for name, own in _model_schemas(model, mode).items():
        shown = components[name]
        if "properties" not in own:  # an enum: the states
            assert shown == own, (where, name)
            continue
        assert _fields(shown) == _fields(own), (where, name, _fields(shown), _fields(own))
        assert shown["properties"] == own["properties"], (where, name)


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
            if model is not None:
                _shows(components, model, mode, path)
    for method, path, answer, many in ANSWERS:
        responses = doc["paths"][path][method]["responses"]
        ok = next(responses[c] for c in ("200", "201", "202") if c in responses)
        ok = ok["content"]["application/json"]["schema"]
        assert _schema_ref(ok["items"] if many else ok) == answer.__name__, (method, path, ok)
        assert (ok.get("type") == "array") is many, (method, path, ok)
        _shows(components, answer, "serialization", path)
    for method, path, request in BODIES:
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert _schema_ref(body) == request.__name__, (method, path, body)
        _shows(components, request, "validation", path)


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
    assert cad.go is False and cad.build.id == build_id and cad.lease_s is None
    slice_id = cad.build.slices[0].id
    started = client.slice_start(slice_id, "host:1")
    assert started.go is True and started.slice.id == slice_id and started.slice.kind == "mesh"
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


@dataclass
class Seeded:
    done: int  # printed on printer "p", whose bed still holds it
    cancelled: int
    ready: int
    cad: int  # a CAD build with its outputs, being sliced
    cad_slice: int


def _seed(c: Coordinator, tmp_path: Path) -> Seeded:
    """A farm with something in every field people read: a printer awaiting its bed's clearing and
    an idle one, a worker, jobs done, cancelled and ready, a CAD build from git with its outputs."""
    client, http, engine = c.client, c.http, c.app.state.farm.engine
    broker = StubBroker()  # a CAD result sends its slices to the queue
    for queue in (CAD_QUEUE, SLICE_QUEUE):
        broker.declare_queue(queue)
    c.app.state.farm.broker = broker
    client.register(wire.Register(printer="p", model="MINI", protocol="prusalink", state=PrinterState.IDLE))
    hello = wire.Hello(name="host:1", queues=["cad", "slice"], sandbox="isolated", layers=["landlock"])
    client.worker_hello(hello)
    with Session(engine) as s:
        ids = {stored_id(job) for job in ready_build(s, models=["MINI"], copies=3)}
    claim = client.claim(wire.Heartbeat(printer="p", state=PrinterState.IDLE)).job
    assert claim is not None
    for state, progress in ((JobState.PRINTING, 40.0), (JobState.DONE, 100.0)):
        sent = wire.Report(printer="p", fence=claim.fence, state=state, progress=progress, remaining_s=0)
        client.report(claim.id, sent)
    beat = wire.Heartbeat(printer="p", state=PrinterState.FINISHED, message="done", material="PETG")
    client.heartbeat(beat)
    cancelled, ready = sorted(i for i in ids if i != claim.id)
    assert http.post(f"/api/jobs/{cancelled}/cancel").json()["state"] == "cancelled"

    stl = tmp_path / "part.stl"
    stl.write_bytes(b"solid part\nendsolid part\n")
    sha = client.upload_artifact(stl)
    with Session(engine) as s:
        build, _jobs, _out = pipeline.create_build(
            s,
            source_name="part.py",
            source_sha256=sha,
            entry="part",
            params={"width": 20, "label": "x", "ratio": 1.5, "holes": [1, 2]},
            copies=1,
            material="PETG",
            quality="standard",
            color="red",
            printer_model="MINI",
            priority=5,
            overrides={"fill_density": "20%"},
            git={"url": "https://example.com/part.git", "ref": "main", "commit": "a" * 40},
            owner="admin",
        )
        s.commit()
        cad = build.id
    assert cad is not None and client.cad_start(cad, "host:1").go
    result = wire.CadResult(
        stl=sha, objects=1, bbox=[[0, 0, 0], [20, 10, 5]], volume=1000, seconds=1.5, skipped=["a sketch"]
    )
    made = client.cad_result(cad, result)
    assert made.stage == BuildStage.SLICING and made.bbox == [[0.0, 0.0, 0.0], [20.0, 10.0, 5.0]]
    assert made.git == wire.GitSource(url="https://example.com/part.git", ref="main", commit="a" * 40)
    assert made.params == {"width": 20, "label": "x", "ratio": 1.5, "holes": [1, 2]}
    client.register(wire.Register(printer="q", model="MINI", protocol="prusalink", state=PrinterState.IDLE))
    client.heartbeat(wire.Heartbeat(printer="q", state=PrinterState.IDLE))
    return Seeded(claim.id, cancelled, ready, cad, made.slices[0].id)


def _unfiltered(farm: Farm, seeded: Seeded) -> list[tuple[str, type[BaseModel], Any]]:
    """Each read's path, its model, and its answer as the coordinator's own functions make it,
    before a response_model could drop or change anything."""
    with Session(farm.engine) as s:
        jobs = list(s.exec(select(Job).order_by(col(Job.id).desc())))
        build_ids = sorted((b.id for b in s.exec(select(Build)) if b.id is not None), reverse=True)
        ended = history.recent(s, history.Filters(), 100)
        the_slice = s.get(Slice, seeded.cad_slice)
        assert the_slice is not None
        done = [j for j in jobs if j.id == seeded.done]
        (ready,) = [j for j in jobs if j.id == seeded.ready]
        st = farm.settings
        why = explain.explain(
            s, ready, st.starvation_s, heatup_s=st.heatup_s, heating_per_group=st.heating_per_group
        )
        explained = {"job": views.job_view(ready), "printers": why}
        printers = [views.printer_view(p) for p in s.exec(select(Printer).order_by(col(Printer.name)))]
        ended_rows = {
            "jobs": reads.job_rows(s, ended, pictures=True),
            "totals": history.totals(s, history.Filters()),
        }
        made: list[tuple[str, type[BaseModel], Any]] = [
            ("/api/status", wire.FarmStatus, reads.farm_status(s)),
            ("/api/printers", wire.PrinterView, printers),
            ("/api/jobs", wire.JobView, reads.job_rows(s, jobs)),
            (f"/api/jobs/{seeded.done}", wire.JobView, reads.job_rows(s, done)[0]),
            (f"/api/jobs/{seeded.ready}/explain", wire.Explained, explained),
            ("/api/history", wire.History, ended_rows),
            ("/api/builds", wire.BuildView, [builds.load_build(s, b) for b in build_ids]),
            (f"/api/builds/{seeded.cad}", wire.BuildView, builds.load_build(s, seeded.cad)),
            (f"/api/slices/{seeded.cad_slice}", wire.SliceWork, builds._slice_work(s, the_slice)),
        ]
    # As the routes sent them before they declared models: a dict serialized by pydantic.
    return [(path, model, TypeAdapter(Any).dump_python(answer, mode="json")) for path, model, answer in made]


def test_what_people_read_is_the_models_json_and_the_typed_client_parses_it(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    seeded = _seed(coordinator, tmp_path)
    client, http = coordinator.client, coordinator.http
    for path, model, unfiltered in _unfiltered(coordinator.app.state.farm, seeded):
        raw = http.get(path).json()
        # The response_model dropped no key, changed no value and kept the order: as before it.
        assert json.dumps(raw) == json.dumps(unfiltered), path
        for item in raw if isinstance(raw, list) else [raw]:
            _same_json(model, item)

    status = client.status()
    assert status.jobs["done"] == status.jobs["cancelled"] == status.jobs["ready"] == 1
    assert status.printers == {"awaiting_clear": 1, "idle": 1} and status.printer_count == 2
    assert [(w.name, w.queues, w.sandbox, w.layers) for w in status.workers] == [
        ("host:1", ["cad", "slice"], "isolated", ["landlock"])
    ]
    printer, idle = client.printers()
    assert (idle.name, idle.state, idle.bed_clear, idle.material, idle.nozzle) == (
        "q",
        "idle",
        True,
        "PLA",
        0.4,
    )
    assert (printer.name, printer.state, printer.bed_clear, printer.material) == (
        "p",
        "awaiting_clear",
        False,
        "PETG",
    )
    assert printer.job is None and printer.message == "done" and printer.last_seen is not None
    newest_first = [j.id for j in client.jobs()]
    assert newest_first == sorted(newest_first, reverse=True) and len(newest_first) == 4
    assert [j.id for j in client.jobs("ready")] == [seeded.ready]
    assert [j.id for j in client.jobs(most=2)] == newest_first[:2]
    done = client.job(seeded.done)
    assert (done.state, done.printer, done.progress, done.print_time_s) == (JobState.DONE, "p", 100.0, 60)
    with pytest.raises(FarmError) as missing:
        client.job(999_999)
    assert missing.value.status == 404
    why = client.explain(seeded.ready)
    assert why.job.id == seeded.ready and [(v.printer, v.eligible, v.position) for v in why.printers] == [
        ("p", False, None),
        ("q", True, 1),
    ]
    assert "position" not in why.printers[0].model_fields_set  # only a printer that would take it has one

    ended = client.history(limit=10)
    assert {(j.id, j.state) for j in ended.jobs} == {(seeded.done, "done"), (seeded.cancelled, "cancelled")}
    assert (ended.totals.all.done, ended.totals.all.cancelled) == (1, 1)
    assert [(t.printer, t.done) for t in ended.totals.by_printer] == [("(none)", 0), ("p", 1)]
    assert [(t.material, t.done, t.cancelled) for t in ended.totals.by_material] == [("PLA", 1, 1)]
    only = client.history(limit=10, printer="p", state="done")
    assert [j.id for j in only.jobs] == [seeded.done] and only.totals.all.cancelled == 0

    work = wire.SliceWork.model_validate(http.get(f"/api/slices/{seeded.cad_slice}").json())
    assert (work.build, work.kind, work.material, work.overrides) == (
        seeded.cad,
        "cad",
        "PETG",
        {"fill_density": "20%"},
    )
    built = client.build(seeded.cad)
    assert json.dumps(wire.body(built)) == json.dumps(http.get(f"/api/builds/{seeded.cad}").json())
    assert built.skipped == ["a sketch"] and [s.id for s in built.slices] == [seeded.cad_slice]
    with pytest.raises(FarmError) as no_build:
        client.build(999_999)
    assert no_build.value.status == 404


@pytest.fixture
def cli(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`farm ARGS` against the coordinator in this process, through the typed client."""
    farm = coordinator.client
    monkeypatch.setattr(farm, "close", lambda: None)  # each command closes its client; this one lives on
    for module in (common, history_command, revisions_command, status_command, submit_command):
        monkeypatch.setattr(module, "client", lambda settings=None: farm)
    return lambda *args: CliRunner().invoke(app, list(args))


def test_the_cli_prints_what_the_coordinator_answered(
    coordinator: Coordinator, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """--json prints the answer as it came, key for key and byte for byte; the tables read the
    models' fields."""
    seeded = _seed(coordinator, tmp_path)
    http = coordinator.http
    reads_ = [
        (["status"], "/api/status"),
        (["printers"], "/api/printers"),
        (["jobs"], "/api/jobs?limit=1000"),
        (["jobs", "--state", "ready"], "/api/jobs?state=ready&limit=1000"),
        (["jobs", "--limit", "2"], "/api/jobs?limit=2"),
        (["job", str(seeded.done)], f"/api/jobs/{seeded.done}"),
        (["jobs", "explain", str(seeded.ready)], f"/api/jobs/{seeded.ready}/explain"),
        (["history", "--printer", "p"], "/api/history?printer=p&limit=20"),
    ]
    for args, path in reads_:
        shown = cli(*args, "--json")
        assert shown.exit_code == 0, shown.output
        assert shown.stdout == json.dumps(http.get(path).json(), default=str) + "\n", args

    def text(*args: str) -> str:
        shown = cli(*args)
        assert shown.exit_code == 0, shown.output
        return str(shown.stdout)

    assert text("status").splitlines() == [
        "builds    slicing 1, ready 1",
        "jobs      waiting 1, ready 1, done 1, cancelled 1",
        "printers  awaiting_clear 1, idle 1",
        "worker    host:1 (cad+slice): sandboxed",
    ]
    assert "awaiting_clear" in text("printers") and "PETG" in text("printers")
    assert "state          done\n" in text("job", str(seeded.done))
    assert "all: 1 done, 0 failed, 1 cancelled" in text("history")
    first, p, q = text("jobs", "explain", str(seeded.ready)).splitlines()
    assert (first, q) == (f"job {seeded.ready} is ready", "  q: can take it, next in its queue at #1")
    assert p.startswith("  p: its bed is not cleared yet: `farm printers clear p` once it is empty; ")
    watched = text("watch", "--once")
    assert "awaiting_clear" in watched and "jobs: waiting 1, ready 1, done 1, cancelled 1" in watched
    gcode = tmp_path / "a.gcode"
    gcode.write_text("G28\n")
    submitted = cli("submit", str(gcode), "--json")  # FarmClient.submit parses the answer: a BuildView
    assert submitted.exit_code == 0, submitted.output
    made = json.loads(submitted.stdout)
    assert submitted.stdout == json.dumps(http.get(f"/api/builds/{made['id']}").json()) + "\n"
    job = made["jobs"][0]["id"]
    assert (
        text("submit", str(gcode)) == f"build {made['id'] + 1} (a.gcode): slicing\n  job {job + 1}: waiting\n"
    )
    refused = cli("jobs", "--state", "nonsense")
    assert refused.exit_code == 1 and "state" in refused.output

    # The operators' changes: PrinterSettings sent (only what was given), JobView/PrinterView back.
    changed = cli("printers", "set", "q", "--material", "PETG", "--tag", "enclosed", "--json")
    (q,) = [p for p in http.get("/api/printers").json() if p["name"] == "q"]
    assert changed.stdout == json.dumps(q) + "\n" and (q["material"], q["tags"], q["nozzle"]) == (
        "PETG",
        ["enclosed"],
        0.4,
    )
    assert (
        text("printers", "set", "q", "--color", "") == "q: PETG (any colour), 0.4 mm nozzle, auto-eject off\n"
    )
    assert text("printers", "clear", "p") == "p: bed clear, ready for the next job\n"
    cancelled = cli("cancel", str(seeded.ready), "--json")
    assert cancelled.exit_code == 0 and json.loads(cancelled.stdout)["state"] == "cancelled"
    _same_json(wire.JobView, json.loads(cancelled.stdout))
    again = cli("jobs", "retry", str(seeded.done))
    assert again.exit_code == 1 and "only a failed job can be retried (HTTP 409)" in again.output
    assert json.loads(cli("printers", "remove", "q", "--json").stdout) == {"removed": "q"}
    client = coordinator.client
    with pytest.raises(FarmError) as unknown:
        client.set_printer("q", wire.PrinterSettings(material="PLA"))
    assert unknown.value.status == 404
    assert client.clear("p").bed_clear is True and client.cancel(job).state == JobState.CANCELLED


def test_the_admins_commands_print_what_the_coordinator_answered(
    coordinator: Coordinator, cli: Callable[..., Result]
) -> None:
    """Tokens, notification targets and projects: each answer is its model's JSON (what the routes'
    own functions make, key for key), the typed client parses it, --json prints it as it came."""
    http = coordinator.http

    def json_of(*args: str) -> Any:
        shown = cli(*args, "--json")
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.stdout)

    made = json_of("tokens", "create", "alice", "--expires", "2031-01-02T03:04:05")
    assert list(made) == ["name", "role", "printer", "created_at", "expires_at", "revoked_at", "token"]
    assert made["expires_at"] == "2031-01-02T03:04:05+00:00"
    _same_json(wire.MadeToken, made)
    agent = json_of("tokens", "create", "pi", "--role", "agent", "--printer", "p")
    assert (agent["role"], agent["printer"], agent["expires_at"]) == ("agent", "p", None)
    shown = cli("tokens", "list", "--json")
    assert shown.stdout == json.dumps(http.get("/api/tokens").json()) + "\n"
    with Session(coordinator.app.state.farm.engine) as s:
        views_ = [tokens._view(t) for t in s.exec(select(Token).order_by(col(Token.id)))]
    assert json.loads(shown.stdout) == views_
    assert [t.name for t in coordinator.client.tokens()] == ["admin", "alice", "pi"]
    revoked = json_of("tokens", "revoke", "pi")
    _same_json(wire.RevokedTokens, revoked)
    assert revoked["revoked"] == "pi" and revoked["tokens"][0]["revoked_at"] is not None
    refused = cli("tokens", "create", "a/b")  # the coordinator's 422, as before the model
    assert refused.exit_code == 2 and "body.name: String should match pattern" in refused.output

    target = json_of("notify", "add", "https://example.com/hook", "-e", "job.done")
    assert list(target) == ["id", "url", "format", "events", "signed", "created_at", "secret"]
    assert target["created_at"].endswith("Z")  # pydantic's time, as the route wrote it before its model
    _same_json(wire.MadeTarget, target)
    json_of("notify", "add", "mailto:ops@example.com")
    shown = cli("notify", "list", "--json")
    assert shown.stdout == json.dumps(http.get("/api/notify/targets").json()) + "\n"
    with Session(coordinator.app.state.farm.engine) as s:
        made = [
            notifications.target_view(t) for t in s.exec(select(NotifyTarget).order_by(col(NotifyTarget.id)))
        ]
    assert shown.stdout == json.dumps(TypeAdapter(Any).dump_python(made, mode="json")) + "\n"
    assert json_of("notify", "test", str(target["id"])) == {"delivery": 1, "target": target["id"]}
    log = cli("notify", "log", "--json")
    assert log.stdout == json.dumps(http.get("/api/notify/log").json()) + "\n"
    (entry,) = [_same_json(wire.NotifyLogEntry, d) for d in json.loads(log.stdout)]
    assert isinstance(entry, wire.NotifyLogEntry) and entry.state == "pending" and entry.next_at is not None
    assert common.shown_time(entry.next_at) == json.loads(log.stdout)[0]["next_at"]  # the table's
    assert json_of("notify", "remove", str(target["id"])) == {"removed": target["id"]}
    refused = cli("notify", "add", "ftp://x")
    assert refused.exit_code == 2 and "a target is an http(s):// URL" in refused.output

    made = json_of("projects", "add", "proj", "--git", "https://example.com/proj.git")
    assert list(made) == ["name", "git_url", "branch", "credentials", "hooks", "created_at", "secret"]
    _same_json(wire.MadeProject, made)
    given = json_of("projects", "add", "own", "--git", "https://example.com/o.git", "--secret", "s" * 16)
    assert "secret" not in given  # only a secret the farm made is shown
    with Session(coordinator.app.state.farm.engine) as s:
        (project,) = s.exec(select(Project).where(Project.name == "proj"))
        assert project.id is not None
        for n, state in enumerate(("pending", "done")):
            s.add(
                HookDelivery(
                    project_id=project.id,
                    service="github",
                    delivery_key=str(n),
                    body_sha256=str(n),
                    ref="refs/heads/main",
                    commit="c" * 40,
                    state=state,
                    builds_json="[1, 2]" if state == "done" else "[]",
                )
            )
        s.commit()
    listed = cli("projects", "list", "--json")
    assert listed.stdout == json.dumps(http.get("/api/projects").json()) + "\n"
    shown = cli("projects", "show", "proj", "--json")
    assert shown.stdout == json.dumps(http.get("/api/projects/proj").json()) + "\n"
    detail = _same_json(wire.ProjectShown, json.loads(shown.stdout))
    assert isinstance(detail, wire.ProjectShown)
    assert [(d.state, d.builds) for d in detail.deliveries] == [("done", [1, 2]), ("pending", [])]
    assert json_of("projects", "remove", "own") == {"removed": "own"}
    refused = cli("projects", "add", "x", "--git", "https://example.com/x.git", "--secret", "short")
    assert (
        refused.exit_code == 2 and "body.secret: String should have at least 16 characters" in refused.output
    )


def test_revisions_and_diffs_are_the_models_json(
    coordinator: Coordinator, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """`farm revisions` and `farm diff`: the answers are what coordinator/revisions.py makes, key
    for key (an integer stays one: a print time, a bbox stored with whole numbers), the typed client
    parses them, --json prints them as they came."""
    seeded = _seed(coordinator, tmp_path)
    http, client = coordinator.http, coordinator.client
    with Session(coordinator.app.state.farm.engine) as s:
        for build in s.exec(select(Build)):
            build.project_name, build.part_name = "proj", "part"
            if build.id != seeded.cad:
                build.git_tag, build.params_json, build.bbox_json = (
                    "v1",
                    '{"width": 10}',
                    "[[0, 0, 0], [10.5, 10, 4]]",
                )
            s.add(build)
        s.commit()
        builds_ = sorted(s.exec(select(Build)), key=lambda b: -stored_id(b))
        made = [revision_view(b, list(s.exec(select(Slice).where(Slice.build_id == b.id)))) for b in builds_]
    raw = http.get("/api/projects/proj/parts/part/revisions").json()
    assert json.dumps(raw) == json.dumps(TypeAdapter(Any).dump_python(made, mode="json"))
    assert (
        raw[-1]["bbox"] == [[0, 0, 0], [10.5, 10, 4]] and raw[-1]["estimates"]["MINI"]["print_time_s"] == 60
    )
    shown = cli("revisions", "proj", "part", "--json")
    assert shown.stdout == json.dumps(raw) + "\n"
    assert [r.id for r in client.revisions("proj", "part", most=1)] == [raw[0]["id"]]
    first, cad = raw[-1]["id"], seeded.cad
    diffed = http.get(f"/api/builds/{first}/diff/{cad}").json()
    assert json.dumps(diffed) == json.dumps(
        TypeAdapter(Any).dump_python(build_diff(made[-1], made[0]), mode="json")
    )
    assert cli("diff", str(first), str(cad), "--json").stdout == json.dumps(diffed) + "\n"
    parsed = _same_json(wire.BuildDiff, diffed)
    assert parsed == client.diff(first, cad) and client.diff(first, cad).params.changed["width"].b == 20
    lines = cli("diff", str(first), str(cad)).stdout.splitlines()
    assert lines[:3] == [
        f"build {first} -> build {cad}",
        "  commit    - -> aaaaaaaaaaaa",
        "  tag       v1 -> -",
    ]


def test_a_still_asked_for_is_the_models_json(coordinator: Coordinator) -> None:
    """What `farm printers snapshot` reads: the request's answer and the printer's stills."""
    http, client = coordinator.http, coordinator.client
    client.register(wire.Register(printer="p", model="MINI", protocol="prusalink", state=PrinterState.IDLE))
    asked = client.request_snapshot("p")
    assert (asked.printer, asked.after) == ("p", 0)
    before = _same_json(wire.PrinterSnapshots, http.get("/api/printers/p/snapshots").json())
    assert isinstance(before, wire.PrinterSnapshots) and before.snapshots == [] and before.wanted_since
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    made = http.post("/api/agents/printers/p/snapshots", content=png, headers={"Content-Type": "image/png"})
    _same_json(wire.SnapshotView, made.json())  # the agent's upload answers the still
    stills = client.printer_snapshots("p", limit=1)
    assert [(s.id, s.moment, s.media_type) for s in stills.snapshots] == [
        (made.json()["id"], "request", "image/png")
    ]
    assert wire.body(stills) == http.get("/api/printers/p/snapshots", params={"limit": 1}).json()
    with pytest.raises(FarmError) as unknown:
        client.request_snapshot("nobody")
    assert unknown.value.status == 404


def test_an_enrolment_through_the_typed_client(coordinator: Coordinator) -> None:
    """`farm printers add` makes a code, `farm agent enroll` reads then spends it; `farm open`."""
    client = coordinator.client
    made = client.enrol(wire.NewEnrolment(printer="mini-1", model="mini", ttl_s=600))
    assert (made.printer, made.model, made.driver) == ("mini-1", "MINI", "prusalink")
    assert made.code.startswith("pe_") and made.expires_at.endswith("+00:00")
    agent = FarmClient(str(coordinator.http.base_url), None)  # no token: the code is the credential
    agent._http.close()
    agent._http = TestClient(coordinator.app)
    info = agent.enrolment(made.code)
    assert (info.printer, info.model, info.driver, info.expires_at) == (
        "mini-1",
        "MINI",
        "prusalink",
        made.expires_at,
    )
    granted = agent.enroll(made.code)
    assert granted.token_name == "agent-mini-1" and granted.token.startswith("pf_")
    with pytest.raises(FarmError) as spent:
        agent.enroll(made.code)
    assert spent.value.status == 409
    with pytest.raises(FarmError) as empty:  # unchecked by the client: the coordinator's 422
        agent.enrolment("")
    assert empty.value.status == 422
    agent.close()
    link = client.signin_link()
    assert link.path.startswith("/signin/") and link.expires_in_s > 0
