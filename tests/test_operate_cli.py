"""What an operator types, against a running farm: pin, nozzle, job, jobs explain, jobs retry, watch."""

from __future__ import annotations

import httpx

from tests.conftest import EXAMPLES, RunningFarm


def test_pinned_job_prints_on_its_printer_and_explain_says_why(farm: RunningFarm) -> None:
    code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer", "sim-mk3s-1", "--wait")
    job = build["jobs"][0]
    assert code == 0 and (job["state"], job["printer"]) == ("done", "sim-mk3s-1"), build

    code, shown = farm.cli_json("job", str(job["id"]))
    assert code == 0 and shown["pinned_printer"] == "sim-mk3s-1" and shown["max_attempts"] == 2
    code, explained = farm.cli_json("jobs", "explain", str(job["id"]))
    verdicts = {e["printer"]: e for e in explained["printers"]}
    assert "pinned to sim-mk3s-1" in " ".join(verdicts["sim-mini-1"]["reasons"])
    text = farm.cli("jobs", "explain", str(job["id"]))
    assert text.returncode == 0 and f"job {job['id']} is done" in text.stdout

    unknown = farm.cli("submit", str(EXAMPLES / "cube.stl"), "--printer", "no-such-printer")
    assert unknown.returncode != 0 and "no printer 'no-such-printer'" in unknown.stderr


def test_nozzle_routes_jobs_and_retry_refuses_a_job_that_did_not_fail(farm: RunningFarm) -> None:
    code, printer = farm.cli_json("printers", "set", "sim-mini-1", "--nozzle", "0.6")
    assert code == 0 and printer["nozzle"] == 0.6
    try:
        code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--nozzle", "0.6", "--wait")
        assert code == 0 and build["jobs"][0]["printer"] == "sim-mini-1", build
    finally:
        farm.cli_json("printers", "set", "sim-mini-1", "--nozzle", "0.4")

    retry = farm.cli("jobs", "retry", str(build["jobs"][0]["id"]))
    assert retry.returncode != 0 and "only a failed job can be retried" in retry.stderr
    missing = farm.cli("job", "999999")
    assert missing.returncode != 0 and "no job 999999" in missing.stderr


def test_watch_once_shows_every_printer(farm: RunningFarm) -> None:
    shown = farm.cli("watch", "--once")
    assert shown.returncode == 0, shown.stderr
    for printer in farm.printers:
        assert printer["name"] in shown.stdout
    assert "jobs:" in shown.stdout and "builds:" in shown.stdout


def test_tokens_have_roles_and_an_agent_token_acts_for_one_printer(farm: RunningFarm) -> None:
    code, submitter = farm.cli_json("tokens", "create", "alice", "--role", "submitter")
    assert code == 0 and submitter["role"] == "submitter" and submitter["token"].startswith("pf_")
    code, agent = farm.cli_json(
        "tokens", "create", "agent-mini", "--role", "agent", "--printer", "sim-mini-1"
    )
    assert code == 0 and agent["printer"] == "sim-mini-1"
    unbound = farm.cli("tokens", "create", "loose-agent", "--role", "agent")
    assert unbound.returncode != 0 and "bound to one printer" in unbound.stderr
    code, listed = farm.cli_json("tokens", "list")
    assert {"alice", "agent-mini"} <= {t["name"] for t in listed} and all("token" not in t for t in listed)

    def as_(token: str) -> httpx.Client:
        return httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    with as_(submitter["token"]) as alice:
        assert alice.get("/api/jobs").status_code == 200
        refused = alice.post("/api/tokens", json={"name": "mallory", "role": "admin"})
        assert refused.status_code == 403 and "needs one of: admin" in refused.json()["detail"]
        beat = {"printer": "sim-mini-1", "state": "idle"}
        assert alice.post("/api/agents/heartbeat", json=beat).status_code == 403
    with as_(agent["token"]) as bound:
        other = bound.post("/api/agents/claim", json={"printer": "sim-mk3s-1", "state": "idle"})
        assert other.status_code == 403 and "bound to printer 'sim-mini-1'" in other.json()["detail"]
        assert bound.get("/api/jobs").status_code == 403  # an agent reads only what its printer needs
