"""What an operator types, against a running farm: pin, nozzle, job, jobs explain, jobs retry, watch,
tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

from printers.config import AgentConfig
from tests.conftest import EXAMPLES, RunningFarm, wait_until


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


def test_tables_piped_to_a_script_keep_whole_printer_names(farm: RunningFarm) -> None:
    """A pipe has no width: rich would assume 80 columns and cut names to 'workshop-lef…'."""
    name = "workshop-left-bench-prusa-mk3s-07"
    reg = {"printer": name, "model": "MK3S", "protocol": "prusalink"}
    headers = farm.admin_headers()
    assert httpx.post(f"{farm.url}/api/agents/register", json=reg, headers=headers).status_code == 200
    try:
        listed = farm.cli("printers")
        assert listed.returncode == 0, listed.stderr
        for printer in [*farm.printers, {"name": name}]:
            assert f" {printer['name']} " in listed.stdout, listed.stdout
    finally:
        removed = farm.cli("printers", "remove", name)  # the other tests count the printers
        assert removed.returncode == 0, removed.stderr


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

    code, dora = farm.cli_json("tokens", "create", "dora", "--role", "viewer", "--expires", "30d")
    left = datetime.fromisoformat(dora["expires_at"]) - datetime.now(UTC)
    assert code == 0 and timedelta(days=29, hours=23) < left <= timedelta(days=30), dora
    bad = farm.cli("tokens", "create", "dora2", "--role", "viewer", "--expires", "soon")
    assert bad.returncode != 0 and "neither a duration" in bad.stderr
    with as_(dora["token"]) as viewer:
        assert viewer.get("/api/status").status_code == 200
        assert viewer.post("/api/jobs/1/cancel").status_code == 403
        revoked = farm.cli("tokens", "revoke", "dora")
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        refused = viewer.get("/api/status")
        assert refused.status_code == 401 and "token 'dora' was revoked" in refused.json()["detail"]
    again = farm.cli("tokens", "revoke", "dora")
    assert again.returncode != 0 and "already revoked" in again.stderr
    listed = {t["name"]: t for t in farm.cli_json("tokens", "list")[1]}
    assert listed["dora"]["revoked_at"] and listed["dora"]["expires_at"]


def test_farm_up_gives_each_part_its_own_token_not_the_admin_one(farm: RunningFarm) -> None:
    admin = (farm.data_dir / "admin.token").read_text().strip()
    tokens = {t["name"]: t for t in farm.cli_json("tokens", "list")[1] if not t["revoked_at"]}
    assert tokens["worker-farm-up"]["role"] == "worker"
    for printer in farm.printers:
        name = printer["name"]
        config = AgentConfig.load(farm.data_dir / "sim" / name / "agent.toml")
        assert config.coordinator.token != admin
        assert (tokens[f"agent-{name}"]["role"], tokens[f"agent-{name}"]["printer"]) == ("agent", name)
        others = [p["name"] for p in farm.printers if p["name"] != name]
        beat = {"printer": others[0], "state": "idle"}
        headers = {"Authorization": f"Bearer {config.coordinator.token}"}
        refused = httpx.post(f"{farm.url}/api/agents/heartbeat", json=beat, headers=headers)
        assert refused.status_code == 403 and f"bound to printer '{name}'" in refused.json()["detail"]


def test_next_gcode_is_fetched_while_the_bed_waits_to_be_cleared(farm: RunningFarm) -> None:
    token = (farm.data_dir / "admin.token").read_text().strip()
    api = httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert api.patch("/api/printers/sim-mini-1", json={"auto_eject": False}).status_code == 200
    try:
        code, first = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--printer", "sim-mini-1", "--wait")
        assert code == 0 and first["jobs"][0]["state"] == "done", first
        waiting = next(p for p in farm.cli_json("printers")[1] if p["name"] == "sim-mini-1")
        assert waiting["state"] == "awaiting_clear", waiting

        code, second = farm.cli_json("submit", str(EXAMPLES / "spacer.py"), "--printer", "sim-mini-1")
        job_id = second["jobs"][0]["id"]

        def gcode() -> str | None:
            build = api.get(f"/api/builds/{second['id']}").json()
            return next((s["gcode"] for s in build.get("slices", []) if s["gcode"]), None)

        sha = wait_until(gcode, 180, "the second job's G-code")
        spool = farm.data_dir / "sim" / "sim-mini-1" / "spool"
        wait_until(lambda: (spool / f"{sha}.gcode").exists(), 60, "the agent to prefetch the G-code")
        assert api.get(f"/api/jobs/{job_id}").json()["state"] == "ready"  # not printed on a full bed

        assert farm.cli("printers", "clear", "sim-mini-1").returncode == 0
        done = wait_until(
            lambda: (j := api.get(f"/api/jobs/{job_id}").json())["state"] == "done" and j, 120, "the print"
        )
        assert done["printer"] == "sim-mini-1"
        log = (farm.data_dir / "logs" / "agent-sim-mini-1.log").read_text()
        assert "prefetched the next G-code" in log
    finally:
        api.patch("/api/printers/sim-mini-1", json={"auto_eject": True})
        farm.cli("printers", "clear", "sim-mini-1")


def test_copies_on_one_plate_with_slicer_choices(farm: RunningFarm) -> None:
    code, build = farm.cli_json(
        "submit", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "--copies", "3", "--per-plate", "3",
        "--infill", "35", "--set", "perimeters=3", "--wait",
    )  # fmt: skip
    assert code == 0 and len(build["jobs"]) == 1, build
    job = build["jobs"][0]
    assert (job["state"], job["copies"]) == ("done", 3), job
    sent = [p for p in farm.received(job["printer"]) if p.name.startswith(f"job{job['id']}-")]
    text = sent[0].read_text()
    assert len(set(re.findall(r"^; printing object (.+)$", text, re.MULTILINE))) == 3  # three on one plate
    assert "; fill_density = 35%" in text and "; perimeters = 3" in text

    bad = farm.cli("submit", str(EXAMPLES / "cube.stl"), "--infill", "150")
    assert bad.returncode != 0 and "infill must be a percentage" in bad.stderr
