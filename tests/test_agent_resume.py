"""An agent killed mid-upload: its restarted self must not fail (or send again) a job whose bytes are
still arriving at the printer from the dead process's socket. Found by tests/test_chaos.py: the job
was failed, then printed anyway by the printer, and left `ready` with its only printer excluded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from farm.core import wire
from farm.core.states import PrinterState
from printers.agent import UPLOAD_SETTLE_S, Agent
from printers.config import AgentConfig, CoordinatorConfig
from printers.drivers.base import DriverError, PrinterConfig, PrinterStatus

JOB = {"id": 8, "fence": 3, "gcode": "ab" * 32, "gcode_name": "job8-cube.gcode", "state": "uploading"}


class FakeClient:
    url = "http://farm.invalid"

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, Any]]] = []

    def heartbeat(self, body: wire.Heartbeat) -> wire.HeartbeatAnswer:
        self.reports.append(("/api/agents/heartbeat", wire.body(body)))
        return wire.HeartbeatAnswer(job=JOB["id"], fence=JOB["fence"])

    def report(self, job_id: int, body: wire.Report) -> wire.JobView:
        self.reports.append((f"/api/agents/jobs/{job_id}/report", wire.body(body)))
        return wire.JobView.model_validate({**JOB, "state": body.state})

    def download_artifact(self, sha256: str, dest: Path) -> Path:
        dest.write_text("G28\n")
        return dest


class FakeDriver:
    """The printer still takes the dead agent's upload, then starts it."""

    def __init__(self, refusal: DriverError) -> None:
        self.refusal = refusal
        self.status_now = PrinterStatus(PrinterState.IDLE)
        self.uploads = 0

    def status(self) -> PrinterStatus:
        return self.status_now

    def want_filament(self, material: str | None, color: str | None) -> None:
        self.filament = (material, color)

    def upload(self, path: Path, remote_name: str, *, start: bool, progress: Any = None) -> None:
        self.uploads += 1
        raise self.refusal

    def close(self) -> None:
        pass


def _agent(tmp_path: Path, driver: FakeDriver) -> tuple[Agent, FakeClient]:
    config = AgentConfig(
        coordinator=CoordinatorConfig(url="http://farm.invalid", token="t"),
        printer=PrinterConfig(name="mini-1", model="MINI", driver="prusalink", password="pw"),
        spool_dir=tmp_path / "spool",
    )
    client = FakeClient()
    return Agent(config, client, driver), client  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "refusal",
    [
        "the printer is already receiving another file; try again when that upload finishes",
        "cannot replace 'job8-cube.gcode': the printer is printing that file",
    ],
)
def test_a_restarted_agent_waits_for_the_upload_still_arriving(tmp_path: Path, refusal: str) -> None:
    driver = FakeDriver(DriverError(refusal))
    agent, client = _agent(tmp_path, driver)
    agent._settle_until = time.monotonic() + UPLOAD_SETTLE_S  # as run() sets it at a restart
    agent._reconcile(wire.Claim.model_validate(JOB))
    assert not any(body.get("state") == "failed" for _, body in client.reports), client.reports
    assert agent.job is None
    # The dead agent's bytes arrive; the printer starts the job: the next round adopts it.
    driver.status_now = PrinterStatus(PrinterState.PRINTING, progress=1.0, file="job8-cube.gcode")
    agent.tick()
    assert agent.job is not None and agent.job.id == JOB["id"]
    assert driver.uploads == 1
    assert [b["state"] for _, b in client.reports if "state" in b][-1] == "printing"
    assert not any(body.get("state") == "failed" for _, body in client.reports)


def test_a_refusal_that_lasts_fails_the_attempt(tmp_path: Path) -> None:
    driver = FakeDriver(DriverError("cannot store it: USB drive missing or full"))
    agent, client = _agent(tmp_path, driver)
    agent._settle_until = time.monotonic() - 1  # the settle window is over
    agent._reconcile(wire.Claim.model_validate(dict(JOB, material="PETG", color="red")))
    assert any(body.get("state") == "failed" for _, body in client.reports)
    assert driver.filament == ("PETG", "red")  # what a Bambu driver picks the AMS tray by
