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
