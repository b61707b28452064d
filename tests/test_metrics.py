"""/metrics after a small farm run, read by the Prometheus client's own parser and checked
against what the API says (#18)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from farm.coordinator.db import make_engine
from tests.conftest import EXAMPLES, REPO, RunningFarm, farm_server, running_farm, wait_until
from tests.coordinator_fixtures import ready_build
from tests.test_server_workers import children

EXPORTED = {
    "printfarm_jobs", "printfarm_builds", "printfarm_printers", "printfarm_queue_depth_jobs",
    "printfarm_queue_oldest_ready_age_seconds", "printfarm_stage_duration_seconds",
    "printfarm_cache_requests", "printfarm_upload_bytes", "printfarm_upload_seconds",
    "printfarm_agent_heartbeat_age_seconds", "printfarm_claims", "printfarm_lease_expiries",
    "printfarm_api_request_duration_seconds",
}  # fmt: skip


@pytest.fixture(scope="module")
def small_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(redis_url, tmp_path_factory.mktemp("metrics"), "2", redis_db=7) as running:
        yield running


def _scrape(farm: RunningFarm) -> dict[str, list]:
    reply = httpx.get(f"{farm.url}/metrics", headers=farm.admin_headers(), timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(reply.text)}


def _by(samples: list, label: str, suffix: str = "") -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples if s.name.endswith(suffix) and label in s.labels}


def test_metrics_match_the_api_after_a_small_run(small_farm: RunningFarm, tmp_path: Path) -> None:
    farm = small_farm
    assert httpx.get(f"{farm.url}/metrics").status_code == 401
    assert httpx.get(f"{farm.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    mini = next(p["name"] for p in farm.printers if p["model"] == "MINI")
    # The MINI's bed must be cleared by hand: its second print waits for a person.
    patched = httpx.patch(
        f"{farm.url}/api/printers/{mini}", json={"auto_eject": False}, headers=farm.admin_headers()
    )
    assert patched.status_code == 200, patched.text
    for _ in range(2):  # the second slice of the same mesh comes from the slice cache
        code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "--wait")
        assert code == 0 and build["jobs"][0]["state"] == "done", build
        cleared = httpx.post(f"{farm.url}/api/printers/{mini}/clear", headers=farm.admin_headers())
        assert cleared.status_code == 200
    broken = tmp_path / "broken.py"
    broken.write_text("def part(:\n")
    code, build = farm.cli_json("submit", str(broken), "--wait")
    assert code == 1 and build["stage"] == "failed", build
    job_id = build["jobs"][0]["id"]
    assert httpx.get(f"{farm.url}/api/jobs/{job_id}", headers=farm.admin_headers()).status_code == 200

    jobs = httpx.get(f"{farm.url}/api/jobs", params={"limit": 1000}, headers=farm.admin_headers()).json()
    status = httpx.get(f"{farm.url}/api/status", headers=farm.admin_headers()).json()
    printers = httpx.get(f"{farm.url}/api/printers", headers=farm.admin_headers()).json()
    families = _scrape(farm)  # nothing moves meanwhile: every job has ended
    assert set(families) >= EXPORTED

    # Gauges read from the database: the same counts as the API's.
    by_state = _by(families["printfarm_jobs"], "state")
    assert {k: v for k, v in by_state.items() if v} == dict(Counter(j["state"] for j in jobs))
    assert by_state["done"] == 2 and by_state["failed"] == 1
    assert {k: v for k, v in _by(families["printfarm_builds"], "stage").items() if v} == {
        k: v for k, v in status["builds"].items() if v
    }
    assert {k: v for k, v in _by(families["printfarm_printers"], "state").items() if v} == dict(
        Counter(p["state"] for p in printers)
    )
    assert sum(s.value for s in families["printfarm_queue_depth_jobs"]) == by_state.get("ready", 0)
    assert "printfarm_queue_oldest_ready_age_seconds" in families
    ages = _by(families["printfarm_agent_heartbeat_age_seconds"], "printer")
    assert set(ages) == {p["name"] for p in printers} and all(0 <= a < 30 for a in ages.values())
    claims = [s.value for s in families["printfarm_claims"] if s.name == "printfarm_claims_total"]
    assert claims == [2.0]  # each printed job was claimed once
    assert _by(families["printfarm_lease_expiries"], "kind", "_total") == {
        "claim": 0.0,
        "cad": 0.0,
        "slice": 0.0,
    }

    # Tallies: the stages each print went through, in histograms.
    stages = families["printfarm_stage_duration_seconds"]
    counts = _by(stages, "stage", "_count")
    assert counts["slicing"] == 2 and counts["upload"] == 2 and counts["print"] == 2, counts
    assert counts["bed_clear"] == 2 and counts["cad"] == 1, counts  # the broken build's CAD run
    inf = {
        s.labels["stage"]: s.value for s in stages if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    }
    assert inf == counts  # every observation is in the +Inf bucket

    cache = {(s.labels["stage"], s.labels["result"]): s.value for s in families["printfarm_cache_requests"]}
    assert cache[("slicing", "miss")] == 1 and cache[("slicing", "hit")] == 1, cache
    sent = _by(families["printfarm_upload_bytes"], "printer", "_total")
    gcode = sum(p.stat().st_size for p in farm.received(mini))
    assert sent == {mini: gcode} and gcode > 0
    assert _by(families["printfarm_upload_seconds"], "printer", "_total")[mini] > 0

    # API latency by route template: never a raw path with an id in it.
    routes = {s.labels["route"] for s in families["printfarm_api_request_duration_seconds"]}
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/agents/heartbeat", "/api/agents/claim"} <= routes
    assert "/api/agents/jobs/{job_id}/report" in routes
    assert not [r for r in routes if re.search(r"/(\d+|[0-9a-f]{16,})(/|$)", r)], routes


def test_two_server_processes_on_postgresql_answer_with_the_same_totals(
    redis_url: str,
    postgres: str,
    tmp_path: Path,
) -> None:
    """Tallies live in the database and latency files in PROMETHEUS_MULTIPROC_DIR: whichever
    process answers a scrape, it reports what both did."""
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path),
        "FARM_DATABASE_URL": postgres,
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/8",
        "FARM_METRICS_TOKEN": "scrape-only-secret",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with farm_server(env, tmp_path / "server.log", "--workers", "2") as (server, base):
        wait_until(lambda: len(children(server.pid)) >= 2, 30, "two server processes")
        token = (tmp_path / "admin.token").read_text().strip()
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        reg = {"printer": "pa", "model": "MINI", "protocol": "prusalink", "auto_eject": True}
        assert api.post("/api/agents/register", json=reg).status_code == 200
        engine = make_engine(postgres)
        with Session(engine) as session:
            ready_build(session, models=["MINI"], copies=1)
        engine.dispose()
        job = api.post("/api/agents/claim", json={"printer": "pa", "state": "idle"}).json()
        for state, extra in (
            ("uploading", {}),
            ("printing", {"upload_bytes": 1234, "upload_s": 0.5}),
            ("done", {}),
        ):
            body = {"printer": "pa", "fence": job["fence"], "state": state, **extra}
            assert api.post(f"/api/agents/jobs/{job['id']}/report", json=body).status_code == 200
        for _ in range(20):
            assert api.get("/api/status").status_code == 200
        # The scrape token scrapes, and does nothing else.
        scraper = httpx.Client(base_url=base, headers={"Authorization": "Bearer scrape-only-secret"})
        assert scraper.get("/api/status").status_code == 401
        answers = []
        for _ in range(6):
            reply = scraper.get("/metrics")
            assert reply.status_code == 200, reply.text
            families = {f.name: f.samples for f in text_string_to_metric_families(reply.text)}
            latency = {
                (s.labels["route"], s.labels["method"]): s.value
                for s in families["printfarm_api_request_duration_seconds"]
                if s.name.endswith("_count")
            }
            counts = _by(families["printfarm_stage_duration_seconds"], "stage", "_count")
            sent = _by(families["printfarm_upload_bytes"], "printer", "_total")
            answers.append((latency[("/api/status", "GET")], counts["upload"], counts["print"], sent))
        # 21 /api/status calls: the 20 above and the refused one; split between the two processes.
    assert all(a == (21.0, 1.0, 1.0, {"pa": 1234.0}) for a in answers), answers


def test_the_example_dashboard_asks_only_for_families_the_farm_exports() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {
        re.sub(r"_(bucket|sum|count|total)$", "", n) for e in exprs for n in re.findall(r"printfarm_\w+", e)
    }
    assert asked == EXPORTED  # every family has a panel, and no panel asks for one the farm lacks
