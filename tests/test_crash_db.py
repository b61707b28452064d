"""A power cut on the PostgreSQL server right after a claim.

Claims commit without waiting for the disk (farm/coordinator/db.py make_async_engine); the agent's
"uploading" report, sent before anything goes to the printer, waits for it, and with it
everything committed before. So a claim the crash took can never be acted on, and one acted on
survives the crash. Real server processes, a real cluster, its WAL writer held so the loss is
certain, then every PostgreSQL process killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from farm.coordinator.db import make_engine
from tests.coordinator_fixtures import ready_build
from tests.pgserver import Cluster, PostgresUnavailable, throwaway_cluster
from tests.test_server_workers import admin_with_printers, two_server_processes

# Nothing but the tests' own calls may flush the WAL: no timed flushes, no vacuum, no checkpoint.
QUIET = {
    "wal_writer_delay": "10000ms",
    "autovacuum": "off",
    "checkpoint_timeout": "3600",
    "bgwriter_lru_maxpages": "0",
}
IDLE = {"state": "idle", "message": None, "progress": None}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="psycopg is missing: run scripts/setup (the dev extra has it)")
    try:
        with throwaway_cluster(QUIET) as running:
            yield running
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")


def report(api: httpx.Client, printer: str, job: dict, state: str) -> httpx.Response:
    body = {"printer": printer, "fence": job["fence"], "state": state}
    return api.post(f"/api/agents/jobs/{job['id']}/report", json=body)


def test_a_claim_lost_in_a_power_cut_never_reaches_a_printer(
    cluster: Cluster, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(tmp_path),
        "FARM_DATABASE_URL": cluster.url,
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/6",
    }
    with two_server_processes(env, tmp_path) as (_server, base):
        api = admin_with_printers(tmp_path, base, "pa", "pb")
        engine = make_engine(cluster.url)
        with Session(engine) as session:
            (queued,) = ready_build(session, models=["MINI"])
            job_id = queued.id
        engine.dispose()

        lost = api.post("/api/agents/claim", json={"printer": "pa", **IDLE}).json()
        assert lost["id"] == job_id
        cluster.power_cut()
        cluster.start()

        # The claim is gone: pa's agent learns it before it sends the printer anything.
        refused = report(api, "pa", lost, "uploading")
        assert refused.status_code == 409 and "no longer held" in refused.json()["detail"]
        assert api.get(f"/api/jobs/{job_id}").json()["state"] == "ready"
        # Another printer claims the job, under the very fence number pa was given; pa is still refused.
        kept = api.post("/api/agents/claim", json={"printer": "pb", **IDLE}).json()
        assert (kept["id"], kept["fence"]) == (job_id, lost["fence"])
        assert report(api, "pa", lost, "uploading").status_code == 409

        # pb's "uploading" report waits for the disk, and takes its claim there with it.
        assert report(api, "pb", kept, "uploading").status_code == 200
        cluster.power_cut()
        cluster.start()
        assert report(api, "pb", kept, "printing").status_code == 200
        shown = api.get(f"/api/jobs/{job_id}").json()
        assert (shown["state"], shown["printer"]) == ("printing", "pb")
        beat = api.post("/api/agents/heartbeat", json={"printer": "pa", **IDLE})
        assert beat.status_code == 200 and beat.json()["job"] is None
