"""A crash must lose no job and never print one twice."""

from __future__ import annotations

import json
import os
import signal

import httpx

from tests.conftest import EXAMPLES, RunningFarm, wait_until


def test_agent_killed_mid_print_finishes_the_job_exactly_once(farm: RunningFarm) -> None:
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    # A bigger bracket prints for several seconds even on a sped-up emulator.
    code, build = farm.cli_json(
        "submit",
        str(EXAMPLES / "bracket.py"),
        "--param",
        "length=140",
        "--param",
        "width=60",
        "--printer-model",
        "MK3S",
    )
    assert code == 0
    job_id = build["jobs"][0]["id"]

    def job() -> dict:
        return api.get(f"/api/jobs/{job_id}").json()

    printing = wait_until(lambda: (j := job())["state"] == "printing" and j, 180, "the job to print")
    agent = f"agent-{printing['printer']}"
    state_file = farm.data_dir / "farm-up.json"
    old_pid = json.loads(state_file.read_text())["children"][agent]
    os.kill(old_pid, signal.SIGKILL)

    # farm up restarts the agent; it asks the coordinator what it held, finds the printer printing
    # that file, and follows it to the end instead of sending it again.
    final = wait_until(lambda: (j := job())["state"] in ("done", "failed") and j, 180, "the job to end")
    assert final["state"] == "done", final
    assert json.loads(state_file.read_text())["children"][agent] != old_pid
    emulator_log = (farm.data_dir / "logs" / f"emu-{printing['printer']}.log").read_text()
    starts = [line for line in emulator_log.splitlines() if f"started: job{job_id}-" in line]
    assert len(starts) == 1, starts


def test_coordinator_killed_mid_run_loses_no_job(farm: RunningFarm) -> None:
    """SIGKILL the coordinator while builds are in CAD, slicing and printing; `farm up` restarts it.

    Job state is in SQLite (WAL, committed per step) and messages wait in Redis, so every job must
    still end done, each printed exactly once."""
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    job_ids = []
    for args in (
        [str(EXAMPLES / "bracket.py"), "--param", "length=120", "--printer-model", "MINI"],
        [str(EXAMPLES / "spacer.py"), "--printer-model", "MK3S"],
        [str(EXAMPLES / "cube.stl"), "--copies", "2"],
    ):
        code, build = farm.cli_json("submit", *args)
        assert code == 0, build
        job_ids += [j["id"] for j in build["jobs"]]

    def jobs() -> list[dict]:
        try:
            return [api.get(f"/api/jobs/{i}").json() for i in job_ids]
        except httpx.HTTPError:
            return []  # the coordinator is down or still starting

    wait_until(lambda: any(j["state"] == "printing" for j in jobs()), 180, "a job to print")
    state_file = farm.data_dir / "farm-up.json"
    old_pid = json.loads(state_file.read_text())["children"]["coordinator"]
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: json.loads(state_file.read_text())["children"]["coordinator"] != old_pid,
        30,
        "farm up to restart the coordinator",
    )

    final = wait_until(
        lambda: (js := jobs()) and all(j["state"] in ("done", "failed", "cancelled") for j in js) and js,
        300,
        "every job to end",
    )
    assert [j["state"] for j in final] == ["done"] * len(job_ids), final
    for j in final:
        log = (farm.data_dir / "logs" / f"emu-{j['printer']}.log").read_text()
        starts = [line for line in log.splitlines() if f"started: job{j['id']}-" in line]
        assert len(starts) == 1, (j, starts)
