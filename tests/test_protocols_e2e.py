"""Every protocol end to end: an OctoPrint and a Moonraker emulator, each with its agent, print a job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import EXAMPLES, RunningFarm, running_farm


@pytest.fixture(scope="module")
def mixed_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(
        redis_url, tmp_path_factory.mktemp("mixed"), "octoprint=1,moonraker=1", redis_db=1
    ) as running:
        yield running


@pytest.mark.parametrize(("model", "printer"), [("MK3S", "sim-octoprint-1"), ("MK4S", "sim-moonraker-1")])
def test_a_job_prints_through_each_protocol(mixed_farm: RunningFarm, model: str, printer: str) -> None:
    code, build = mixed_farm.cli_json(
        "submit", str(EXAMPLES / "cube.stl"), "--printer-model", model, "--wait"
    )
    job = build["jobs"][0]
    assert code == 0 and job["state"] == "done" and job["printer"] == printer, build
    received = [p for p in mixed_farm.received(printer) if p.name.startswith(f"job{job['id']}-")]
    assert len(received) == 1 and f'M862.3 P "{model}"' in received[0].read_text()
    code, printers = mixed_farm.cli_json("printers")
    assert {p["name"]: p["protocol"] for p in printers} == {
        "sim-octoprint-1": "octoprint",
        "sim-moonraker-1": "moonraker",
    }
