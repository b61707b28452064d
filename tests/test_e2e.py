"""The whole path on real parts: farm up (real Redis, Dramatiq, build123d, PrusaSlicer, PrusaLink over
HTTP), then `farm submit --wait --json` as a user would run it."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, RunningFarm, wait_until


def only_job(build: dict) -> dict:
    assert len(build["jobs"]) == 1, build
    return build["jobs"][0]


def gcode_for_job(farm: RunningFarm, job: dict) -> str:
    files = [p for p in farm.received(job["printer"]) if p.name.startswith(f"job{job['id']}-")]
    assert len(files) == 1, f"printer {job['printer']} received {farm.received(job['printer'])}"
    return files[0].read_text()


def test_python_part_prints_on_a_simulated_prusalink_printer(farm: RunningFarm) -> None:
    code, build = farm.cli_json(
        "submit", str(EXAMPLES / "bracket.py"), "--printer-model", "MINI", "--param", "length=50", "--wait"
    )
    job = only_job(build)
    assert code == 0, build
    assert job["state"] == "done" and job["error"] is None
    assert job["printer"].startswith("sim-mini-")
    assert build["bbox"][1][0] - build["bbox"][0][0] == pytest.approx(50, abs=0.01)
    gcode = gcode_for_job(farm, job)
    assert 'M862.3 P "MINI"' in gcode
    estimate = re.search(r"^; estimated printing time \(normal mode\) = (.+)$", gcode, re.M)
    grams = re.search(r"^; total filament used \[g\] = ([\d.]+)$", gcode, re.M)
    assert estimate and grams and float(grams.group(1)) > 0
    assert (
        job["print_time_s"]
        and job["print_time_s"] > 60
        and job["filament_g"] == pytest.approx(float(grams.group(1)), rel=0.01)
    )


def test_show_script_and_stl_print_on_any_model(farm: RunningFarm) -> None:
    for path in (EXAMPLES / "knob.py", EXAMPLES / "cube.stl"):
        code, build = farm.cli_json("submit", str(path), "--wait")
        job = only_job(build)
        assert code == 0 and job["state"] == "done", build
        # No model asked for: G-code was made for every model in the farm, and the printer got its own.
        assert {s["printer_model"] for s in build["slices"]} == {"MINI", "MK3S"}
        model = "MINI" if job["printer"].startswith("sim-mini") else "MK3S"
        assert f'M862.3 P "{model}"' in gcode_for_job(farm, job)


def test_copies_become_separate_jobs(farm: RunningFarm) -> None:
    code, build = farm.cli_json(
        "submit", str(EXAMPLES / "spacer.py"), "--copies", "2", "--printer-model", "MK3S", "--wait"
    )
    assert code == 0
    assert [j["state"] for j in build["jobs"]] == ["done", "done"]
    assert all(j["printer"].startswith("sim-mk3s-") for j in build["jobs"])


def test_status_counts_builds_jobs_and_printers(farm: RunningFarm) -> None:
    code, status = farm.cli_json("status")
    assert code == 0
    assert set(status) >= {"builds", "jobs", "printers"}
    assert set(status["builds"]) == {"queued", "cad", "slicing", "ready", "failed"}
    assert "done" in status["jobs"] and "printing" in status["jobs"]
    assert sum(status["printers"].values()) == 2
    code, printers = farm.cli_json("printers")
    assert sorted(p["model"] for p in printers) == ["MINI", "MK3S"]
    code, jobs = farm.cli_json("jobs")
    assert code == 0 and all({"id", "state", "printer", "error"} <= set(j) for j in jobs)


def _failed(farm: RunningFarm, *args: str) -> dict:
    code, build = farm.cli_json("submit", *args, "--wait")
    job = only_job(build)
    assert code == 1, build
    assert job["state"] == "failed" and job["error"], build
    return job


def test_syntax_error_names_file_and_line(farm: RunningFarm, tmp_path: Path) -> None:
    src = tmp_path / "broken_part.py"
    src.write_text("from build123d import Box\n\npart = Box(10, 10\nresult = part\n")
    job = _failed(farm, str(src))
    assert "broken_part.py" in job["error"] and "line 3" in job["error"], job["error"]


def test_unknown_artifact_lists_the_real_ones(farm: RunningFarm) -> None:
    # Refused at submit (exit 2, nothing queued), naming the real entry points.
    done = farm.cli("submit", str(EXAMPLES / "bracket.py"), "--artifact", "gadget", "--wait", "--json")
    assert done.returncode == 2, done.stdout
    assert "gadget" in done.stderr and "bracket" in done.stderr and "Traceback" not in done.stderr


def test_unknown_printer_model_lists_known_models(farm: RunningFarm) -> None:
    done = farm.cli("submit", str(EXAMPLES / "cube.stl"), "--printer-model", "ENDER9", "--wait", "--json")
    assert done.returncode == 2, done.stdout
    assert "ENDER9" in done.stderr and "MINI" in done.stderr and "MK3S" in done.stderr


def test_part_too_large_for_the_bed_says_so(farm: RunningFarm, tmp_path: Path) -> None:
    big = tmp_path / "big.stl"
    big.write_bytes((EXAMPLES / "cube.stl").read_bytes())
    data = bytearray(big.read_bytes())
    for facet in range(12):  # scale the 20 mm cube's X by 15: 300 mm
        for vertex in range(3):
            off = 84 + facet * 50 + 12 + vertex * 12
            x = struct.unpack_from("<f", data, off)[0]
            struct.pack_into("<f", data, off, x * 15)
    big.write_bytes(bytes(data))
    job = _failed(farm, str(big), "--printer-model", "MINI")
    assert "300" in job["error"] and "bed" in job["error"] and "MINI" in job["error"], job["error"]


def test_missing_file_is_refused_before_anything_is_sent(farm: RunningFarm) -> None:
    done = farm.cli("submit", "no/such/part.py", "--wait", "--json")
    assert done.returncode != 0
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_farm_keeps_serving_after_bad_input(farm: RunningFarm, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    _failed(farm, str(bad))
    code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "--wait")
    assert code == 0 and only_job(build)["state"] == "done"


def test_builds_submitted_together_all_print(farm: RunningFarm) -> None:
    """The worker runs CAD builds in parallel threads; none may wait on another."""
    ids = []
    for name in ("knob.py", "bracket.py", "spacer.py"):
        code, build = farm.cli_json("submit", str(EXAMPLES / name))
        assert code == 0 and build["stage"] == "queued"
        ids.append(build["id"])
    token = (farm.data_dir / "admin.token").read_text().strip()

    def all_done() -> bool:
        builds = [
            httpx.get(f"{farm.url}/api/builds/{i}", headers={"Authorization": f"Bearer {token}"}).json()
            for i in ids
        ]
        return all(j["state"] == "done" for b in builds for j in b["jobs"])

    wait_until(all_done, 180, "three builds submitted together to print")


def test_presliced_gcode_goes_only_to_its_model(farm: RunningFarm, tmp_path: Path) -> None:
    gcode = tmp_path / "cube_mk3s.gcode"
    sliced = farm.cli("slice", str(EXAMPLES / "cube.stl"), "--printer-model", "MK3S", "-o", str(gcode))
    assert sliced.returncode == 0, sliced.stderr
    code, build = farm.cli_json("submit", str(gcode), "--wait")
    job = only_job(build)
    assert code == 0 and job["state"] == "done" and job["printer"].startswith("sim-mk3s-"), build
    assert job["print_time_s"] and job["print_time_s"] > 0
    assert gcode_for_job(farm, job) == gcode.read_text()  # sent as it was, not re-sliced

    job = _failed(farm, str(gcode), "--printer-model", "MINI")
    assert "sliced for MK3S" in job["error"] and "--printer-model MK3S" in job["error"], job["error"]


def test_cancel_stops_the_print_on_the_printer(farm: RunningFarm) -> None:
    code, build = farm.cli_json(
        "submit",
        str(EXAMPLES / "bracket.py"),
        "--param",
        "length=150",
        "--param",
        "width=80",
        "--printer-model",
        "MINI",
    )
    job_id = build["jobs"][0]["id"]

    def job() -> dict:
        return next(j for j in farm.cli_json("jobs")[1] if j["id"] == job_id)

    printing = wait_until(lambda: (j := job())["state"] == "printing" and j, 180, "the job to print", 0.5)
    code, cancelled = farm.cli_json("cancel", str(job_id))
    assert code == 0 and cancelled["state"] == "cancelled"

    def stopped() -> bool:
        printer = next(p for p in farm.cli_json("printers")[1] if p["name"] == printing["printer"])
        return printer["state"] != "printing"

    wait_until(stopped, 30, "the agent to stop the print on the printer", 0.5)
    log = (farm.data_dir / "logs" / f"emu-{printing['printer']}.log").read_text()
    assert f"job{job_id}-" in log  # it had really started there
    code, after = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "--wait")
    assert code == 0 and after["jobs"][0]["state"] == "done"  # the printer carries on


def test_printers_set_material_routes_jobs(farm: RunningFarm) -> None:
    code, printer = farm.cli_json("printers", "set", "sim-mini-1", "--material", "PETG", "--color", "red")
    assert code == 0 and printer["material"] == "PETG" and printer["color"] == "red"
    try:
        code, build = farm.cli_json(
            "submit", str(EXAMPLES / "cube.stl"), "--material", "PETG", "--color", "red", "--wait"
        )
        assert code == 0 and build["jobs"][0]["printer"] == "sim-mini-1", build
    finally:
        farm.cli_json("printers", "set", "sim-mini-1", "--material", "PLA", "--color", "")
    bad = farm.cli("printers", "set", "sim-mini-1", "--material", "WOOD")
    assert bad.returncode != 0 and "unknown material" in bad.stderr
