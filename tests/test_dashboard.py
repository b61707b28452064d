"""The dashboard's server side: its page and assets, the snapshot it draws (printers with their jobs,
the queue in dispatch order, builds being made, failures), priority changes, and artifacts served
with a type a browser may show (a PNG preview) or only download (anything else). The coordinator
app through Starlette's TestClient, with test_auth's printers, tokens and builds."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from tests import test_auth
from tests.conftest import EXAMPLES
from tests.test_auth import Coordinator, Fleet

coord, fleet = test_auth.coord, test_auth.fleet  # the fixtures, shared


def _png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0\xff\x80\0"))
        + chunk(b"IEND", b"")
    )


def test_the_page_and_its_assets_ship_in_the_package_with_a_strict_policy(coord: Coordinator) -> None:
    page = coord.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert (
        "default-src 'self'" in policy
        and "script-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
    )
    assert 'src="/static/app.js"' in page.text and "://" not in page.text  # nothing from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")):
        asset = coord.client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
        assert name == "icon.svg" or "://" not in asset.text, name
    for bad in ("../__init__.py", "nothere.js", "index.py"):
        assert coord.client.get(f"/static/{bad}").status_code == 404


def test_the_snapshot_shows_printers_the_queue_in_dispatch_order_and_builds_being_made(
    coord: Coordinator, fleet: Fleet
) -> None:
    job_a, job_b = fleet.build_a["jobs"][0]["id"], fleet.build_b["jobs"][0]["id"]
    manual = coord.call(coord.admin, "PATCH", "/api/printers/pa", json={"auto_eject": False})
    assert manual.status_code == 200  # someone must clear pa's bed after a print
    snap = coord.call(fleet.viewer, "GET", "/api/dashboard").json()
    assert [p["name"] for p in snap["printers"]] == ["pa", "pb"]
    assert [j["id"] for j in snap["queue"]] == [job_a, job_b] and snap["queue_total"] == 2
    assert [(b["id"], b["stage"], b["owner"]) for b in snap["waiting"]] == [
        (fleet.cad["id"], "queued", "alice")
    ]
    assert snap["status"]["printer_count"] == 2 and snap["failed"] == []

    # Bob raises his job's priority: it goes ahead of alice's older one.
    raised = coord.call(fleet.bob, "PATCH", f"/api/jobs/{job_b}", json={"priority": 5})
    assert raised.status_code == 200 and raised.json()["priority"] == 5
    snap = coord.call(fleet.alice, "GET", "/api/dashboard").json()
    assert [(j["id"], j["priority"]) for j in snap["queue"]] == [(job_b, 5), (job_a, 0)]
    refused = coord.call(fleet.alice, "PATCH", f"/api/jobs/{job_b}", json={"priority": 9})
    assert refused.status_code == 403 and "belongs to 'bob'" in refused.json()["detail"]
    assert coord.call(fleet.viewer, "PATCH", f"/api/jobs/{job_b}", json={"priority": 9}).status_code == 403
    assert coord.call(fleet.bob, "PATCH", f"/api/jobs/{job_b}", json={"priority": 101}).status_code == 422

    # pa claims alice's job and prints: its card carries the job, its progress and time left.
    claim = coord.call(
        fleet.agent_a, "POST", "/api/agents/claim", json={"printer": "pa", "state": "idle"}
    ).json()
    assert claim["id"] == job_a
    report = {
        "printer": "pa",
        "fence": claim["fence"],
        "state": "printing",
        "progress": 40.0,
        "remaining_s": 600,
    }
    assert (
        coord.call(fleet.agent_a, "POST", f"/api/agents/jobs/{job_a}/report", json=report).status_code == 200
    )
    snap = coord.call(coord.admin, "GET", "/api/dashboard").json()
    pa = snap["printers"][0]
    assert (pa["current"]["id"], pa["current"]["progress"], pa["current"]["remaining_s"]) == (
        job_a,
        40.0,
        600,
    )
    assert pa["current"]["source"] == "a.gcode" and snap["printers"][1]["current"] is None
    assert [j["id"] for j in snap["queue"]] == [job_b]
    printing = coord.call(fleet.alice, "PATCH", f"/api/jobs/{job_a}", json={"priority": 3})
    assert printing.status_code == 409 and "printing" in printing.json()["detail"]

    # It fails: the card says the bed needs clearing; the job is listed under failures.
    failed = {"printer": "pa", "fence": claim["fence"], "state": "failed", "error": "spaghetti"}
    assert (
        coord.call(fleet.agent_a, "POST", f"/api/agents/jobs/{job_a}/report", json=failed).status_code == 200
    )
    beat = {"printer": "pa", "state": "idle"}
    assert coord.call(fleet.agent_a, "POST", "/api/agents/heartbeat", json=beat).status_code == 200
    snap = coord.call(fleet.viewer, "GET", "/api/dashboard").json()
    assert snap["printers"][0]["state"] == "awaiting_clear" and not snap["printers"][0]["bed_clear"]
    # Alice's job has attempts left: back in the queue. Bob's had one: it fails for good, to retry.
    assert [(j["id"], j["attempts"], j["error"]) for j in snap["queue"]] == [
        (job_b, 0, None),
        (job_a, 1, "attempt 1 of 2 failed on pa: spaghetti"),
    ]
    claim_b = coord.call(
        fleet.agent_b, "POST", "/api/agents/claim", json={"printer": "pb", "state": "idle"}
    ).json()
    assert claim_b["id"] == job_b
    failed_b = {"printer": "pb", "fence": claim_b["fence"], "state": "failed", "error": "nozzle clog"}
    assert (
        coord.call(fleet.agent_b, "POST", f"/api/agents/jobs/{job_b}/report", json=failed_b).status_code
        == 200
    )
    snap = coord.call(fleet.viewer, "GET", "/api/dashboard").json()
    assert [(j["id"], j["error"]) for j in snap["failed"]] == [(job_b, "nozzle clog")]


def test_agents_and_workers_get_no_dashboard(coord: Coordinator, fleet: Fleet) -> None:
    for machine in (fleet.agent_a, fleet.worker):
        assert coord.call(machine, "GET", "/api/dashboard").status_code == 403
    assert coord.client.get("/api/dashboard").status_code == 401


def test_a_preview_is_served_as_a_png_and_anything_else_only_as_a_download(
    coord: Coordinator, fleet: Fleet
) -> None:
    png = _png()
    shas = {}
    for name, data in (
        ("preview.png", png),
        ("page.html", b"<script>alert(1)</script>"),
        ("x.png", b"<svg/>"),
    ):
        up = coord.call(fleet.worker, "PUT", "/api/artifacts", params={"name": name}, content=data)
        shas[name] = up.json()["sha256"]
    shown = coord.call(coord.admin, "GET", f"/api/artifacts/{shas['preview.png']}")
    assert shown.status_code == 200 and shown.content == png
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"].startswith("inline")
    for name in ("page.html", "x.png"):  # named .png, but not one: a download all the same
        got = coord.call(coord.admin, "GET", f"/api/artifacts/{shas[name]}")
        assert got.headers["content-type"] == "application/octet-stream", name
        assert got.headers["content-disposition"].startswith("attachment")
        assert got.headers["x-content-type-options"] == "nosniff"


def test_inspect_reads_a_designs_entry_points_without_running_it(
    coord: Coordinator, fleet: Fleet, tmp_path: Path
) -> None:
    def inspect(token: str, name: str, data: bytes):  # type: ignore[no-untyped-def]
        return coord.call(token, "POST", "/api/inspect", files={"file": (name, data)})

    source = (EXAMPLES / "bracket.py").read_bytes()
    found = inspect(fleet.alice, "bracket.py", source)
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entries"]
    assert entry["name"] == "bracket" and entry["kind"] == "function"
    assert {p["name"]: p["default"] for p in entry["params"]}["length"] == 40.0
    # Not run: a design that would write a file or loop for ever is only read.
    marker = tmp_path / "pwned"
    hostile = f"import os\nos.system('touch {marker}')\nwhile True:\n    pass\n".encode()
    assert inspect(fleet.alice, "evil.py", hostile).json() == {"entries": []}
    assert not marker.exists()
    assert inspect(fleet.viewer, "bracket.py", source).status_code == 403
    assert inspect(fleet.alice, "cube.stl", b"solid x\nendsolid x\n").status_code == 415
    broken = inspect(fleet.alice, "broken.py", b"def f(:\n")
    assert broken.status_code == 422 and "line 1" in broken.json()["detail"]
    assert inspect(fleet.alice, "nul.py", b"x = 1\x00\n").status_code == 422


CUSTOMIZABLE = """from enum import Enum
from typing import Literal

from build123d import Box
from mr import customizable
from pydantic import BaseModel, Field


class Finish(str, Enum):
    matte = "matte"
    glossy = "glossy"


class Params(BaseModel):
    width: float = Field(20, ge=5, le=100, description="Width, mm")
    count: int = Field(3, gt=0, lt=10)
    shape: Literal["round", "square"] = "square"
    finish: Finish = Finish.glossy


@customizable
def part(params: Params):
    return Box(params.width, 10, 10)
"""


def _project(files: dict[str, str]) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_inspect_gives_the_form_a_customizables_bounds_and_choices(coord: Coordinator, fleet: Fleet) -> None:
    found = coord.call(
        fleet.alice, "POST", "/api/inspect", files={"file": ("part.py", CUSTOMIZABLE.encode())}
    )
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entries"]
    params = {p["name"]: p for p in entry["params"]}
    assert entry["kind"] == "customizable"
    assert params["width"]["constraints"] == {"ge": 5, "le": 100} and params["width"]["default"] == 20
    assert params["width"]["description"] == "Width, mm"
    assert params["count"]["constraints"] == {"gt": 0, "lt": 10}
    assert params["shape"]["choices"] == ["round", "square"] and params["shape"]["default"] == "square"
    assert params["finish"]["choices"] == ["matte", "glossy"]  # an Enum: its values
    assert params["finish"]["default_source"] == "Finish.glossy"
    assert "choices" not in params["width"]


def test_inspect_reads_a_project_archive_and_its_imported_parameter_model(
    coord: Coordinator, fleet: Fleet
) -> None:
    main = CUSTOMIZABLE.split("\n\nclass Finish")[0].replace(
        "from pydantic import BaseModel, Field", "from parts.shape import Params"
    )
    main += "\n\n@customizable\ndef part(params: Params):\n    return Box(params.width, 10, 10)\n"
    model = CUSTOMIZABLE.split("@customizable")[0]
    archive = _project({"main.py": main, "parts/__init__.py": "", "parts/shape.py": model, "README.md": "hi"})

    def inspect(data: bytes, entry_file: str | None = None, name: str = "proj.tar.gz"):  # type: ignore[no-untyped-def]
        form = {"entry_file": entry_file} if entry_file is not None else {}
        return coord.call(fleet.alice, "POST", "/api/inspect", files={"file": (name, data)}, data=form)

    listed = inspect(archive)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"files": ["main.py", "parts/__init__.py", "parts/shape.py"], "entries": []}
    found = inspect(archive, "main.py")
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entries"]
    params = {p["name"]: p for p in entry["params"]}
    assert entry["model"] == "Params" and params["width"]["constraints"] == {"ge": 5, "le": 100}
    assert params["shape"]["choices"] == ["round", "square"]
    assert inspect(archive, "nothere.py").status_code == 422
    assert inspect(archive, "../main.py").status_code == 422
    assert inspect(b"not a tar", "main.py").status_code == 422
    assert inspect(CUSTOMIZABLE.encode(), "main.py", name="part.py").status_code == 422  # not an archive


def test_inspect_types_an_unannotated_parameter_by_its_default(coord: Coordinator, fleet: Fleet) -> None:
    """JSON writes 40.0 as 40: the form would take it for an int and cut 60.5 to 60."""
    source = (
        b"from build123d import Box\n\n"
        b"def part(length=40.0, count=3, hollow=True, label='x', w: float = 2):\n"
        b"    return Box(length, 1, 1)\n"
    )
    found = coord.call(fleet.alice, "POST", "/api/inspect", files={"file": ("part.py", source)})
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entries"]
    types = {p["name"]: (p.get("annotation"), p.get("type")) for p in entry["params"]}
    assert types == {
        "length": (None, "float"),
        "count": (None, "int"),
        "hollow": (None, "bool"),
        "label": (None, "str"),
        "w": ("float", None),
    }
