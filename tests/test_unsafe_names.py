"""Hostile file names, submitted over HTTP and printed through real emulators: each file lands in
the printer's storage as `job<N>-<safe name>`, and nowhere else. Drivers refuse unsafe names
themselves, and a printer that refuses every upload fails the job after its attempts."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from farm.core.client import FarmClient
from farm.core.names import check_segment, safe_name
from printers.agent import Agent
from printers.config import AgentConfig, CoordinatorConfig
from printers.drivers import make_driver
from printers.drivers.base import DriverError, PrinterConfig
from printers.emulators.moonraker import MoonrakerEmulator
from printers.emulators.octoprint import OctoPrintEmulator
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import RunningFarm, wait_until

TAG = uuid.uuid4().hex[:8]
ESCAPE = f"pf-escape-{TAG}.gcode"  # what a traversal would have written outside the storage
# (name as sent, the safe name expected; None: whatever the multipart parser made of it, made safe)
HOSTILE: list[tuple[str, str | None]] = [
    (f"a/../../../../../../tmp/{ESCAPE}", ESCAPE),
    ("../../api/v1/job.gcode", "job.gcode"),
    (f"/tmp/{ESCAPE}", ESCAPE),
    (f"..\\..\\..\\tmp\\{ESCAPE}", None),  # a quoted-string may unescape backslashes
    ("nul\x00byte.gcode", "nulbyte.gcode"),
    ("x" * 300 + ".gcode", "x" * 90 + ".gcode"),
    ("Würfel—日本.gcode", "Wurfel_.gcode"),
    (".gcode", "upload.gcode"),
    ("-rf --no-preserve-root.gcode", "rf_--no-preserve-root.gcode"),
    ("%2e%2e%2fpart?x=1#y.gcode", "2e_2e_2fpart_x_1_y.gcode"),
]


def tiny_gcode(model: str, marker: str) -> bytes:
    """A G-code the MK3S takes (its model check) that prints in a moment; `marker` makes it unique,
    so that no two submissions share an artifact (and its first name)."""
    return f'; {marker}\nM862.3 P "{model}"\nG28\nG1 X10 Y10 F3000\nM84\n'.encode()


def submit_raw(api: httpx.Client, filename: str, data: bytes, options: dict[str, Any]) -> httpx.Response:
    """A multipart submit with the file name exactly as given (httpx would escape some of it)."""
    disposition = b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"'
    body = b"".join(
        [
            b'--B\r\nContent-Disposition: form-data; name="options"\r\n\r\n',
            json.dumps(options).encode(),
            b"\r\n--B\r\n" + disposition + b"\r\nContent-Type: application/octet-stream\r\n\r\n",
            data,
            b"\r\n--B--\r\n",
        ]
    )
    return api.post("/api/builds", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})


@pytest.fixture
def api(farm: RunningFarm) -> Iterator[httpx.Client]:
    token = (farm.data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


@dataclass
class LocalPrinter:
    name: str
    storage: Path
    emulator: Any


@contextlib.contextmanager
def local_printer(
    farm: RunningFarm, api: httpx.Client, root: Path, name: str, protocol: str
) -> Iterator[LocalPrinter]:
    """An emulated MK3S outside the farm's own, with a real agent (in a thread) dialling the farm."""
    storage = root / name / "usb"
    emulator: Any
    if protocol == "prusalink":
        emulator = PrusaLinkEmulator(password="pw", model="MK3S", storage_dir=storage, speed=600).start()
        auth = {"password": "pw"}
    else:
        emulator = OctoPrintEmulator(api_key="key", storage_dir=storage, speed=600).start()
        auth = {"api_key": "key"}
    token = (farm.data_dir / "admin.token").read_text().strip()
    printer = PrinterConfig(
        name=name, model="MK3S", driver=protocol, port=emulator.port, auto_eject=True, **auth
    )
    config = AgentConfig(
        coordinator=CoordinatorConfig(url=farm.url, token=token),
        printer=printer,
        poll_s=0.2,
        spool_dir=root / name / "spool",
    )
    client = FarmClient(farm.url, token)
    stop = threading.Event()
    thread = threading.Thread(
        target=Agent(config, client, make_driver(printer)).run, args=(stop,), daemon=True
    )
    thread.start()
    try:
        wait_until(
            lambda: any(p["name"] == name for p in api.get("/api/printers").json()), 30, f"{name} to register"
        )
        yield LocalPrinter(name, storage, emulator)
    finally:
        stop.set()
        thread.join(30)
        emulator.stop()
        client.close()
        removed = farm.cli("printers", "remove", name)  # the other tests count the farm's printers
        assert removed.returncode == 0, removed.stderr


def files_under(root: Path) -> set[Path]:
    # The emulator's own log of prints started (.prints.jsonl) is not a file anyone sent it.
    return {p for p in root.rglob("*") if p.is_file() and p.name != ".prints.jsonl"}


def wait_for_jobs(api: httpx.Client, job_ids: list[int], timeout: float) -> list[dict]:
    def ended() -> list[dict] | None:
        jobs = [api.get(f"/api/jobs/{j}").json() for j in job_ids]
        return jobs if all(j["state"] in ("done", "failed", "cancelled") for j in jobs) else None

    return wait_until(ended, timeout, "every job to end", interval=0.5)  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", ["prusalink", "octoprint"])
def test_hostile_names_land_in_the_printers_storage_as_job_files(
    farm: RunningFarm, api: httpx.Client, tmp_path: Path, protocol: str
) -> None:
    name = f"names-{protocol}"
    outside_before = files_under(tmp_path)
    with local_printer(farm, api, tmp_path, name, protocol) as printer:
        submitted = []
        for i, (raw, expected) in enumerate(HOSTILE):
            resp = submit_raw(api, raw, tiny_gcode("MK3S", f"{TAG} {protocol} {i}"), {"printer": name})
            assert resp.status_code == 201, (raw, resp.text)
            build = resp.json()
            source = build["source"]
            assert source == (expected or safe_name(source)) and check_segment(source) == source, (
                raw,
                source,
            )
            submitted.append((build["jobs"][0]["id"], source))
        jobs = wait_for_jobs(api, [job_id for job_id, _ in submitted], 240)
        assert [j["state"] for j in jobs] == ["done"] * len(jobs), jobs
        landed = files_under(printer.storage)
    assert landed == {printer.storage / f"job{job_id}-{source}" for job_id, source in submitted}
    new_outside = files_under(tmp_path) - outside_before - landed
    assert all((tmp_path / name / "spool") in p.parents for p in new_outside), new_outside
    assert not Path("/tmp", ESCAPE).exists() and not Path("/api").exists()


def test_names_in_json_fields_and_artifact_uploads_are_made_safe(api: httpx.Client) -> None:
    resp = submit_raw(api, "p.tar.gz", b"x", {"entry_file": "../../etc/x.py"})
    assert resp.status_code == 422 and "entry_file" in resp.json()["detail"]
    for entry in ("/abs/x.py", "a/../x.py", "-x.py", "a\\x.py", "x\x00.py"):
        resp = submit_raw(api, "p.tar.gz", b"x", {"entry_file": entry})
        assert resp.status_code == 422 and "relative path inside the project" in resp.json()["detail"], entry
    put = api.put("/api/artifacts", params={"name": "../../x/../evil.gcode"}, content=f"; {TAG}".encode())
    got = api.get(f"/api/artifacts/{put.json()['sha256']}")
    assert got.status_code == 200 and 'filename="evil.gcode"' in got.headers["content-disposition"]


@pytest.mark.parametrize("protocol", ["prusalink", "octoprint", "moonraker"])
def test_drivers_refuse_unsafe_remote_names(tmp_path: Path, protocol: str) -> None:
    """Defence in depth: a name the farm did not make never becomes a path on the printer."""
    storage = tmp_path / "storage"
    emulator: Any
    if protocol == "prusalink":
        emulator = PrusaLinkEmulator(password="pw", model="MK3S", storage_dir=storage, speed=600).start()
        auth: dict[str, Any] = {"password": "pw"}
    elif protocol == "octoprint":
        emulator = OctoPrintEmulator(api_key="key", storage_dir=storage, speed=600).start()
        auth = {"api_key": "key"}
    else:
        emulator = MoonrakerEmulator(storage_dir=storage, speed=600).start()
        auth = {}
    driver = make_driver(PrinterConfig(name="p", model="MK3S", driver=protocol, port=emulator.port, **auth))
    gcode = tmp_path / "part.gcode"
    gcode.write_bytes(tiny_gcode("MK3S", "driver"))
    try:
        for remote in (
            "../../x.gcode",
            "a/../../x.gcode",
            "..\\x.gcode",
            "x\x00.gcode",
            "-x.gcode",
            "x?y=1.gcode",
        ):
            with pytest.raises(DriverError, match="refusing to send"):
                driver.upload(gcode, remote, start=False)
            with pytest.raises(DriverError, match="refusing to send"):
                driver.start(remote)
        assert files_under(tmp_path) == {gcode}
        driver.upload(gcode, "job7-cube_MK3S+.gcode", start=False)  # quoted on the wire, stored as named
        assert files_under(storage) == {storage / "job7-cube_MK3S+.gcode"}
    finally:
        driver.close()
        emulator.stop()


def test_a_printer_refusing_uploads_fails_the_job_after_its_attempts(
    farm: RunningFarm, api: httpx.Client, tmp_path: Path
) -> None:
    """Two printers with full USB drives (507 for every upload), a job with two attempts: it fails
    on each once, then stays failed, where it used to go back to the queue forever, `attempts 0`."""
    tag = f"full-{TAG}"
    with (
        local_printer(farm, api, tmp_path, "refusing-1", "prusalink") as one,
        local_printer(farm, api, tmp_path, "refusing-2", "prusalink") as two,
    ):
        for printer in (one, two):
            printer.emulator.fill_usb()
            done = farm.cli("printers", "set", printer.name, "--tag", tag)  # only these two may take it
            assert done.returncode == 0, done.stderr
        resp = submit_raw(
            api, "part.gcode", tiny_gcode("MK3S", f"{TAG} refused"), {"tags": [tag], "attempts": 2}
        )
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["jobs"][0]["id"]
        (job,) = wait_for_jobs(api, [job_id], 180)  # the retry waits out the farm's 30 s back-off
        assert job["state"] == "failed" and job["attempts"] == 2, job
        assert "upload to refusing-" in job["error"] and "USB" in job["error"], job["error"]
        assert one.emulator.received == [] and two.emulator.received == []
        threading.Event().wait(3)  # and it stays failed: no printer takes it again
        again = api.get(f"/api/jobs/{job_id}").json()
        assert (again["state"], again["attempts"]) == ("failed", 2), again


def test_failed_uploads_count_as_attempts_and_a_pinned_job_is_retried_on_its_printer(tmp_path: Path) -> None:
    """dispatch.report, on a real SQLite database: the agent reports `failed` from `uploading`."""
    from sqlmodel import Session

    from farm.coordinator import dispatch
    from farm.coordinator.db import make_engine
    from farm.core.states import JobState
    from tests.coordinator_fixtures import add_printer, ready_build

    engine = make_engine(f"sqlite:///{tmp_path / 'farm.coordinator.db'}")
    with Session(engine, expire_on_commit=False) as s:
        printer = add_printer(s, "a", "MINI")
        (job,) = ready_build(s, models=["MINI"])
        job.pinned_printer, job.max_attempts = "a", 2
        s.add(job)
        s.commit()
        for attempt in (1, 2):
            claimed = dispatch.claim(s, printer, lease_s=60)
            assert claimed is not None and claimed.id == job.id, attempt
            dispatch.report(s, claimed, printer, fence=claimed.fence, state=JobState.UPLOADING, lease_s=60)
            failed = dispatch.report(  # the first as older agents sent it: back to `ready`, with the error
                s,
                claimed,
                printer,
                fence=claimed.fence,
                state=JobState.READY if attempt == 1 else JobState.FAILED,
                lease_s=60,
                error="upload to a failed: 507",
                backoff_s=0,
            )
            assert failed.attempts == attempt and printer.bed_clear  # nothing reached the bed
        assert failed.state == JobState.FAILED and "507" in (failed.error or "")
        assert dispatch.claim(s, printer, lease_s=60) is None  # no third go
    engine.dispose()
