"""Batch load for `bench/coordinator.py --with-cad-load`: real `farm worker`s saturating the cores.

A farm of its own (its `farm server` on a free port, SQLite in a temporary folder, its own Redis
database) so the benched coordinator's database holds only the agents' jobs; `--cad-workers`
`farm worker` processes (each with FARM_WORKER_THREADS 2) and a queue of heavy parametric builds,
each a distinct part (no cache hit): seconds of B-rep booleans, then PrusaSlicer for a MINI. The
workers run at the batch priority their settings give them (FARM_BATCH_*; the defaults unless the
bench's environment says otherwise), or, with `priority="normal"`, as started (nice 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent

# A tall lattice: a boolean per window (CAD), 300 layers of holes and perimeters (slicing).
DESIGN = '''\
from build123d import Axis, Box, BuildPart, Cylinder, Locations, Mode, Rotation, fillet


def tower(rows: int = 8, seed: int = 0, side: float = 30.0, height: float = 60.0):
    """A hollow tower with a window per row and side: one boolean each."""
    pitch = height / (rows + 1)
    with BuildPart() as p:
        Box(side, side, height)
        fillet(p.edges().filter_by(Axis.Z), radius=3 + seed * 0.01)
        Box(side - 4, side - 4, height - 2, mode=Mode.SUBTRACT)
        for r in range(rows):
            z = -height / 2 + pitch * (r + 1)
            for angle in (0, 90):
                with Locations((0, 0, z)):
                    for k in range(3):
                        with Locations(Rotation(0, 90, angle)):
                            with Locations((0, (k - 1) * side / 4, 0)):
                                Cylinder(1.6 + 0.02 * (seed % 10), side + 2, mode=Mode.SUBTRACT)
    return p.part
'''


def _tree(pid: int) -> list[int]:
    found, todo = [pid], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def _cpu_with_reaped(pid: int) -> float:
    """utime + stime of the process and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class CadLoad:
    def __init__(self, url: str, admin: str, workers: list[subprocess.Popen[bytes]]) -> None:
        self.url, self.admin, self.workers = url, admin, workers

    def cpu_s(self) -> float:
        """CPU seconds the workers and everything under them (fork servers, builds, PrusaSlicer) used."""
        total = 0.0
        for worker in self.workers:
            for pid in _tree(worker.pid):
                with contextlib.suppress(OSError):  # it ended (its parent counts it once reaped)
                    total += _cpu_with_reaped(pid)
        return total

    def finished(self) -> int:
        """Builds through CAD and slicing (ready), or failed."""
        stages = self.builds()
        return stages.get("ready", 0) + stages.get("failed", 0)

    def builds(self) -> dict[str, int]:
        got = httpx.get(
            f"{self.url}/api/status", headers={"Authorization": f"Bearer {self.admin}"}, timeout=30
        )
        return dict(got.json()["builds"])


@contextlib.contextmanager
def cad_load(
    redis_url: str, workers: int = 2, builds: int = 150, priority: str = "batch", where: str | None = None
) -> Iterator[CadLoad]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-cadload-", dir=where) as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        port = _free_port()
        env = {
            **os.environ,
            "FARM_DATA_DIR": str(tmp),
            "FARM_REDIS_URL": f"{redis_url.rsplit('/', 1)[0]}/1",  # the benched coordinator has /0
            "FARM_DATABASE_URL": f"sqlite:///{tmp / 'farm.coordinator.db'}",
            "FARM_URL": f"http://127.0.0.1:{port}",
            "FARM_WORKER_THREADS": "2",
            "PYTHONUNBUFFERED": "1",
        }
        if where:  # its builds' temporary files too
            env["TMPDIR"] = where
        if priority == "normal":
            env |= {"FARM_BATCH_NICE": "0", "FARM_BATCH_IOPRIO": "normal", "FARM_BATCH_POLICY": "normal"}
        env.pop("FARM_TOKEN", None)
        log = (tmp / "server.log").open("wb")
        stack.callback(log.close)
        server = subprocess.Popen(
            [sys.executable, "-m", "farm", "server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        stack.callback(_stop, server, signal.SIGTERM)
        _wait_healthy(env["FARM_URL"], server, tmp / "server.log")
        admin = (tmp / "admin.token").read_text().strip()
        procs = []
        for i in range(workers):
            wlog = (tmp / f"worker{i}.log").open("wb")
            stack.callback(wlog.close)
            # Its own session, killed whole at the end: a stopping worker waits for its build.
            proc = subprocess.Popen(
                [sys.executable, "-m", "farm", "worker"],
                env={**env, "FARM_TOKEN": admin},
                stdout=wlog,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
            stack.callback(_stop, proc, signal.SIGKILL, True)
            procs.append(proc)
        design = tmp / "tower.py"
        design.write_text(DESIGN)
        seeds = ",".join(str(s) for s in range(builds // 5))
        submit = [
            sys.executable,
            "-m",
            "farm",
            "submit",
            str(design),
            "--no-project",
            "--printer-model",
            "MINI",
        ]
        done = subprocess.run(
            [*submit, "--matrix", "rows=6,7,8,9,10", "--matrix", f"seed={seeds}", "--json"],
            env={**env, "FARM_TOKEN": admin},
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"cad load: submit failed: {done.stderr[-2000:]}")
        load = CadLoad(env["FARM_URL"], admin, procs)
        # Under way when every worker has both threads building.
        deadline = time.monotonic() + 120
        while load.builds().get("cad", 0) < 2 * workers and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"cad load: a worker died; see {tmp}/worker*.log")
            time.sleep(0.5)
        print(f"cad load: {workers} workers at {priority} priority, {builds} builds queued", file=sys.stderr)
        yield load
        left = load.builds()
        if left.get("queued", 0) == 0:
            print(f"cad load: the queue ran dry ({json.dumps(left)}); raise builds", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cad load: its coordinator exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("cad load: its coordinator did not answer in 60 s")


def _stop(proc: subprocess.Popen[Any], sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
