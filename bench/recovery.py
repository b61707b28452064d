"""How long a build takes to recover when its CAD worker is SIGKILLed mid-build, with DEFAULT settings.

    .venv/bin/python bench/recovery.py [--sleep-s 10] [--runs 1]

Starts `farm up --sim 1` (embedded Redis, default work_lease_s and work_heartbeat_s: no FARM_WORK_*
in the environment), submits a design that sleeps `--sleep-s` seconds before building a box, waits
until a worker holds it in `cad`, SIGKILLs that worker (`farm up` starts a new one; the coordinator
is not restarted) and times kill -> `ready`. It also prints what the second run itself took (CAD +
slicing, as the farm recorded them): the rest is the wait for the lease to lapse and the worker to
come back. The bound (issue #14) is 120 s. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
# The checkout first: run as a script, bench/ leads sys.path and bench/farm.py would be `farm`.
sys.path.insert(0, str(REPO))
BOUND_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def one_run(data: Path, sleep_s: float) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}  # defaults only
    env |= {"FARM_DATA_DIR": str(data), "FARM_URL": f"http://127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"}
    log = (data / "farm-up.out").open("wb")
    argv = [sys.executable, "-m", "farm", "up", "--sim", "1", "--port", str(port), "--data-dir", str(data)]
    up = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    state = data / "farm-up.json"
    try:
        wait(lambda: state.exists() or up.poll() is not None, 120, "farm up")
        if up.poll() is not None:
            raise SystemExit((data / "farm-up.out").read_text())
        token = (data / "admin.token").read_text().strip()
        api = httpx.Client(base_url=env["FARM_URL"], headers={"Authorization": f"Bearer {token}"}, timeout=30)
        design = data / "slow_box.py"
        design.write_text(
            f"import time\n\nfrom build123d import Box\n\ntime.sleep({sleep_s})\nresult = Box(20, 20, 10)\n"
        )
        with design.open("rb") as f:
            resp = api.post("/api/builds", files={"file": (design.name, f)}, data={"options": "{}"})
        resp.raise_for_status()
        build_id = resp.json()["id"]

        def build() -> dict[str, Any]:
            return dict(api.get(f"/api/builds/{build_id}").json())

        wait(lambda: (b := build())["stage"] == "cad" and b["cad_worker"], 180, "a worker to take the build")
        children = json.loads(state.read_text())["children"]
        os.kill(children["worker"], signal.SIGKILL)
        killed_at = time.monotonic()
        done = wait(
            lambda: (b := build())["stage"] in ("ready", "failed") and b, 600, "the build to end", 0.2
        )
        recovery = time.monotonic() - killed_at
        if done["stage"] != "ready":
            raise SystemExit(f"the build failed: {done['error']}")
        if json.loads(state.read_text())["children"]["coordinator"] != children["coordinator"]:
            raise SystemExit("the coordinator was restarted: this bench measures recovery without one")
        rerun = (done["cad_seconds"] or 0.0) + sum(s["seconds"] or 0.0 for s in done["slices"])
        return {
            "recovery_s": round(recovery, 1),
            "rerun_s": round(rerun, 1),
            "waiting_s": round(recovery - rerun, 1),
        }
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sleep-s", type=float, default=10.0, help="how long the design sleeps (its build time)"
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from farm.core.settings import Settings

    defaults = Settings.model_construct()
    print(f"defaults: work_lease_s={defaults.work_lease_s}, work_heartbeat_s={defaults.work_heartbeat_s}")
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="farm-recovery-") as tmp:
            r = one_run(Path(tmp), args.sleep_s)
        print(
            f"run {i + 1}: worker killed mid-CAD -> build ready in {r['recovery_s']} s "
            f"(the second run itself {r['rerun_s']} s; lease lapse and worker restart {r['waiting_s']} s)"
        )
        results.append(r)
    worst = max(r["recovery_s"] for r in results)
    print(json.dumps({"runs": results, "worst_s": worst, "bound_s": BOUND_S, "ok": worst <= BOUND_S}))
    sys.exit(0 if worst <= BOUND_S else 1)


if __name__ == "__main__":
    main()
