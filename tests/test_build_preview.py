"""A preview (submit's `preview: true`, the dashboard's "Preview" button): a .py design built by a
CAD worker like any other, with no jobs; it ends `ready` once its mesh is made, with nothing
sliced. Only designs may be previewed, only by those who may submit. And what a build's page reads
from GET /api/builds/{id}: the preview flag and the slicer settings chosen. The coordinator app
through Starlette's TestClient, with test_auth's tokens and builds."""

from __future__ import annotations

import json

from tests import test_auth
from tests.test_auth import Coordinator, Fleet

coord, fleet = test_auth.coord, test_auth.fleet  # the fixtures, shared

DESIGN = b"def part(length: float = 10):\n    pass\n"


def _post(coord: Coordinator, token: str | None, name: str, data: bytes, **options: object):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return coord.client.post(
        "/api/builds", files={"file": (name, data)}, data={"options": json.dumps(options)}, headers=headers
    )


def test_a_preview_is_built_by_a_cad_worker_and_makes_no_jobs(coord: Coordinator, fleet: Fleet) -> None:
    made = _post(coord, fleet.alice, "part.py", DESIGN, preview=True, params={"length": 25})
    assert made.status_code == 201, made.text
    build = made.json()
    assert build["jobs"] == [] and build["slices"] == [] and build["preview_only"] is True
    assert build["stage"] == "queued" and build["params"] == {"length": 25}
    waiting = coord.call(fleet.viewer, "GET", "/api/dashboard").json()["waiting"]
    assert build["id"] in [b["id"] for b in waiting]  # on its way, like any build

    # A CAD worker takes it and returns a mesh: the build is ready, and nothing is sliced.
    worker = fleet.worker
    assert coord.call(worker, "POST", f"/api/builds/{build['id']}/cad/start", json={"worker": "w:1"}).json()
    up = coord.call(
        worker, "PUT", "/api/artifacts", params={"name": "part.stl"}, content=b"solid x\nendsolid x\n"
    )
    stl = up.json()["sha256"]
    done = coord.call(
        worker, "POST", f"/api/builds/{build['id']}/cad/result", json={"stl": stl, "objects": 2}
    )
    assert done.status_code == 200, done.text
    after = coord.call(fleet.alice, "GET", f"/api/builds/{build['id']}").json()
    assert (after["stage"], after["stl"], after["objects"]) == ("ready", stl, 2)
    assert after["slices"] == [] and after["jobs"] == [] and after["preview_only"] is True
    jobs = coord.call(coord.admin, "GET", "/api/jobs").json()
    assert build["id"] not in {j["build"] for j in jobs}
    waiting = coord.call(fleet.viewer, "GET", "/api/dashboard").json()["waiting"]
    assert build["id"] not in [b["id"] for b in waiting]

    # The same design submitted for printing: jobs, and it says it is no preview.
    printed = coord.submit(fleet.alice, "part.py", DESIGN, params={"length": 25}, infill="30%")
    assert len(printed["jobs"]) == 1 and printed["preview_only"] is False
    assert printed["slicer_settings"] == {"fill_density": "30%"}


def test_a_preview_needs_a_design_and_a_submitter(coord: Coordinator, fleet: Fleet) -> None:
    for name, data in (("cube.stl", b"solid x\nendsolid x\n"), ("a.gcode", b"G28\n")):
        refused = _post(coord, fleet.alice, name, data, preview=True)
        assert refused.status_code == 422 and "preview builds a .py design" in refused.text, refused.text
    bad = _post(coord, fleet.alice, "part.py", DESIGN, preview="soon")
    assert bad.status_code == 422 and "preview" in bad.text
    assert _post(coord, fleet.viewer, "part.py", DESIGN, preview=True).status_code == 403
    assert _post(coord, fleet.worker, "part.py", DESIGN, preview=True).status_code == 403
    assert _post(coord, None, "part.py", DESIGN, preview=True).status_code == 401
    assert coord.call(fleet.viewer, "GET", "/api/builds/999999").status_code == 404
    assert coord.client.get(f"/api/builds/{fleet.cad['id']}").status_code == 401
