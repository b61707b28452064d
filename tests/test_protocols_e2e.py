"""Every protocol end to end: OctoPrint, Moonraker and Bambu emulators, each with its agent, print a job."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import EXAMPLES, RunningFarm, running_farm, wait_until


@pytest.fixture(scope="module")
def mixed_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(
        redis_url, tmp_path_factory.mktemp("mixed"), "octoprint=1,moonraker=1,bambu=1", redis_db=1
    ) as running:
        yield running


@pytest.mark.parametrize(
    ("model", "printer"),
    [("MK3S", "sim-octoprint-1"), ("MK4S", "sim-moonraker-1"), ("X1C", "sim-bambu-1")],
)
def test_a_job_prints_through_each_protocol(mixed_farm: RunningFarm, model: str, printer: str) -> None:
    code, build = mixed_farm.cli_json(
        "submit", str(EXAMPLES / "cube.stl"), "--printer-model", model, "--wait"
    )
    job = build["jobs"][0]
    assert code == 0 and job["state"] == "done" and job["printer"] == printer, build
    usb = mixed_farm.data_dir / "sim" / printer / "usb"
    received = [p for p in usb.rglob("*") if p.name.startswith(f"job{job['id']}-")]
    assert len(received) == 1, received
    if model == "X1C":  # Bambu printers print only sliced .gcode.3mf packages
        assert received[0].name.endswith(".gcode.3mf") and zipfile.is_zipfile(received[0])
    else:
        assert f'M862.3 P "{model}"' in received[0].read_text()
    code, printers = mixed_farm.cli_json("printers")
    assert {p["name"]: p["protocol"] for p in printers} == {
        "sim-octoprint-1": "octoprint",
        "sim-moonraker-1": "moonraker",
        "sim-bambu-1": "bambu",
    }


def test_a_bambu_printer_reports_what_is_loaded(mixed_farm: RunningFarm) -> None:
    """The operator's word stands for printers that cannot tell; a Bambu printer's spool report wins."""

    def bambu() -> dict:
        return next(p for p in mixed_farm.cli_json("printers")[1] if p["name"] == "sim-bambu-1")

    assert (bambu()["material"], bambu()["color"]) == ("PLA", "white")  # the emulator's spool
    code, _ = mixed_farm.cli_json("printers", "set", "sim-bambu-1", "--material", "PETG")
    assert code == 0
    wait_until(lambda: bambu()["material"] == "PLA", 30, "the printer's own report to win")
    octo = next(p for p in mixed_farm.cli_json("printers")[1] if p["name"] == "sim-octoprint-1")
    assert octo["color"] is None  # nothing reported, nothing set


@pytest.fixture(scope="module")
def prusalink_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    # One PrusaLink printer, an MK3S: its sim answers as Prusa-Link on a Raspberry Pi.
    with running_farm(redis_url, tmp_path_factory.mktemp("link"), "prusalink:MK3S+=1", redis_db=7) as running:
        yield running


def test_an_mk3s_job_prints_through_prusa_link_on_its_local_storage(prusalink_farm: RunningFarm) -> None:
    """The MK3S sim answers as Prusa-Link on a Raspberry Pi (storages local + read-only sdcard, no
    usb): the agent's driver must find `local` in /api/v1/storage to get the job there."""
    sim = next(p for p in prusalink_farm.printers if p["model"] == "MK3S")
    code, build = prusalink_farm.cli_json(
        "submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MK3S", "--wait"
    )
    job = build["jobs"][0]
    assert code == 0 and job["state"] == "done" and job["printer"] == sim["name"] == "sim-mk3s-1", build
    received = [p for p in prusalink_farm.received(sim["name"]) if p.name.startswith(f"job{job['id']}-")]
    assert len(received) == 1 and 'M862.3 P "MK3S"' in received[0].read_text(), received
    auth = httpx.DigestAuth("maker", f"pw-{sim['name']}")  # farm/commands/up.py's sim password
    with httpx.Client(base_url=f"http://127.0.0.1:{sim['port']}", auth=auth, timeout=10) as printer:
        storages = printer.get("/api/v1/storage").json()["storage_list"]
        refused = printer.put("/api/v1/files/usb/x.gcode", content=b"G28\n")
    local = next(s for s in storages if s["path"] == "/local")
    assert local["print_files"] == received[0].stat().st_size  # the job's file, and only it, on local
    assert refused.status_code == 404 and refused.text.startswith("Location Not Found")
