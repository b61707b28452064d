"""History: finished, failed and cancelled jobs with filters, their totals, bad filters refused,
and `farm history` against a real coordinator."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlmodel import Session
from starlette.testclient import TestClient

from farm.coordinator.api import create_app
from farm.coordinator.models import Build, Job, Slice
from farm.core.settings import Settings
from farm.core.states import JobState
from tests.conftest import farm_server, run_farm

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _seed(app: FastAPI) -> None:
    """mk4-a: two done PLA prints of 2 h and 1 h (10 g, 5 g per plate), one failed; mini-b: one
    done PETG print of 30 min (no estimate), one cancelled; plus a ready and a printing job,
    which are not history."""
    with Session(app.state.farm.engine) as session:
        build = Build(
            source_name="bracket.py",
            source_sha256="0" * 64,
            source_kind="python",
            owner="ann",
            preview_sha256="b" * 64,
            preview_small_sha256="a" * 64,
        )
        session.add(build)
        session.flush()
        big = Slice(build_id=build.id, printer_model="MK4", filament_g=10.0)  # type: ignore[arg-type]
        small = Slice(build_id=build.id, printer_model="MK4", filament_g=5.0)  # type: ignore[arg-type]
        session.add_all([big, small])
        session.flush()

        def job(
            state: JobState, printer: str | None, material: str, start_h: float, hours: float, **kw: object
        ) -> Job:
            started = T0 + timedelta(hours=start_h)
            return Job(
                build_id=build.id,  # type: ignore[arg-type]
                state=state,
                printer=printer,
                material=material,
                started_at=started,
                finished_at=started + timedelta(hours=hours),
                owner=str(kw.pop("owner", "ann")),
                **kw,
            )

        session.add_all(
            [
                job(JobState.DONE, "mk4-a", "PLA", 0, 2, slice_id=big.id),
                job(JobState.DONE, "mk4-a", "PLA", 24, 1, slice_id=small.id, owner="bob"),
                job(JobState.FAILED, "mk4-a", "PLA", 48, 0.25, error="nozzle clog", slice_id=big.id),
                job(JobState.DONE, "mini-b", "PETG", 72, 0.5),
                job(JobState.CANCELLED, None, "PETG", 96, 0),
                job(JobState.READY, None, "PLA", 120, 0),
                job(JobState.PRINTING, "mini-b", "PLA", 120, 0),
            ]
        )
        session.commit()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path))
    _seed(app)
    token = (tmp_path / "admin.token").read_text().strip()
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
    app.state.farm.engine.dispose()


def test_totals_per_printer_and_material(api: TestClient) -> None:
    data = api.get("/api/history").json()
    assert [j["state"] for j in data["jobs"]] == ["cancelled", "done", "failed", "done", "done"]
    t = data["totals"]
    assert t["all"] == {"done": 3, "failed": 1, "cancelled": 1, "hours": 3.5, "filament_g": 15.0}
    assert t["by_printer"] == [  # most jobs first, then by name
        {"printer": "mk4-a", "done": 2, "failed": 1, "cancelled": 0, "hours": 3.0, "filament_g": 15.0},
        {"printer": "(none)", "done": 0, "failed": 0, "cancelled": 1, "hours": 0.0, "filament_g": 0.0},
        {"printer": "mini-b", "done": 1, "failed": 0, "cancelled": 0, "hours": 0.5, "filament_g": 0.0},
    ]
    assert [(m["material"], m["done"]) for m in t["by_material"]] == [("PLA", 2), ("PETG", 1)]


def test_each_row_has_its_parts_small_picture(api: TestClient) -> None:
    """The dashboard's history rows show the part: the 96 px preview (an artifact id), not the 256 px."""
    rows = api.get("/api/history").json()["jobs"]
    assert [j.get("preview") for j in rows] == ["a" * 64] * 5


def test_filters(api: TestClient) -> None:
    def ids(**params: str) -> list[str]:
        data = api.get("/api/history", params=params).json()
        return [f"{j['printer']}:{j['state']}" for j in data["jobs"]]

    assert ids(printer="mk4-a") == ["mk4-a:failed", "mk4-a:done", "mk4-a:done"]
    assert ids(material="petg") == ["None:cancelled", "mini-b:done"]
    assert ids(owner="bob") == ["mk4-a:done"]
    assert ids(state="failed") == ["mk4-a:failed"]
    # Ended within day 2 (UTC), given with a zone: 09:00+01:00 is 08:00 UTC.
    assert ids(since="2026-12-02T09:00:00+01:00", until="2026-12-03T00:00:00Z") == ["mk4-a:done"]
    assert ids(since="2026-12-04") == ["None:cancelled", "mini-b:done"]
    day2 = api.get("/api/history", params={"since": "2026-12-02", "until": "2026-12-03"}).json()
    assert day2["totals"]["all"]["hours"] == 1.0  # the totals follow the filters


def test_pages(api: TestClient) -> None:
    first = api.get("/api/history", params={"limit": 2})
    assert len(first.json()["jobs"]) == 2
    rest = api.get("/api/history", params={"limit": 2, "cursor": first.headers["X-Next-Cursor"]})
    assert [j["id"] for j in rest.json()["jobs"]] == [j - 2 for j in (j["id"] for j in first.json()["jobs"])]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"state": "ready"}, "history holds only"),
        ({"since": "2026-12-03", "until": "2026-12-02"}, "since must be before until"),
        ({"since": "yesterday"}, "datetime"),
        ({"printer": "x" * 201}, "at most 200"),
        ({"limit": "0"}, "greater than or equal to 1"),
        ({"cursor": "bm9wZQ"}, "cursor"),
    ],
)
def test_bad_filters_are_a_clear_422(api: TestClient, params: dict[str, str], words: str) -> None:
    answer = api.get("/api/history", params=params)
    assert answer.status_code == 422 and words in answer.text, answer.text


def test_farm_history_cli(tmp_path: Path, redis_url: str) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    _seed(app)
    app.state.farm.engine.dispose()
    env = {**os.environ, "FARM_DATA_DIR": str(tmp_path / "data"), "FARM_REDIS_URL": redis_url[:-2] + "/9"}
    env.pop("FARM_TOKEN", None)
    with farm_server(env, tmp_path / "server.log") as (_, base):
        env["FARM_URL"] = base

        def farm(*args: str) -> subprocess.CompletedProcess[str]:
            return run_farm(env, "history", *args, timeout=60)

        shown = farm("--printer", "mk4-a")
        assert shown.returncode == 0, shown.stderr
        assert "all: 2 done, 1 failed, 0 cancelled, 3.0 h printing, 15.0 g of filament" in shown.stdout
        assert "nozzle clog" in shown.stdout
        as_json = farm("--material", "PETG", "--json")
        assert json.loads(as_json.stdout)["totals"]["all"]["done"] == 1
        refused = farm("--state", "printing")
        assert refused.returncode == 2 and "history holds only" in refused.stderr
