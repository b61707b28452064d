"""Chaos: a farm printing a batch while its parts are killed (kill -9) at random points.

    .venv/bin/python bench/chaos.py --jobs 200 [--seed 14] [--rounds N] [--speed 250]

Starts `farm up --sim prusalink=2,moonraker=1` (its embedded Valkey, so the queue's server can be
killed too) on a fresh data dir, submits a batch of at least `--jobs` jobs (slow and quick designs
(.py), a mesh (.stl) with copies, pre-sliced G-code (`farm slice`) for one model), and meanwhile,
at points a seeded generator picks, SIGKILLs:

    cad_worker     the worker while a build is in `cad` (mid-build)
    slice_worker   the worker while PrusaSlicer runs under it (mid-slice)
    coordinator    `farm server`
    agent_upload   a PrusaLink printer's agent while its job is `uploading` (the emulators take
                   uploads at FARM_SIM_UPLOAD_KBPS, as a real MINI does, so there is a "mid")
    agent_print    an agent while its job is `printing`
    redis          the embedded Valkey

each `--rounds` times. `farm up` restarts each killed part, as it does any part that dies (an
operator would do the same); nothing else is done for the farm. Then every job must end `done`,
no job may be printed twice (each emulator logs the prints it starts in `<storage>/.prints.jsonl`;
a job's file is `job<N>-...`), and no build may stay in a non-final stage, within `--bound-s`.

Figures: jobs, kills per component, done, lost (jobs not done), printed twice, longest recovery
(from a kill to the next progress of the work it hit). The last line is one JSON object.
tests/test_chaos.py runs the same code (`run_chaos`) with a 20-job batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
# The checkout first, even when it is on PYTHONPATH too: run as a script, bench/ leads sys.path
# and bench/farm.py would be `farm`.
sys.path.insert(0, str(REPO))

from farm.commands.up import started_at  # noqa: E402
from printers.emulators.common import read_print_log  # noqa: E402

KINDS = ("cad_worker", "slice_worker", "coordinator", "agent_upload", "agent_print", "redis")
SIM = "prusalink=2,moonraker=1"
FINAL_STAGES = ("ready", "failed")
TERMINAL_JOBS = ("done", "failed", "cancelled")
# Short leases, so a kill costs seconds, not the production minutes (the settings the lease work
# added; a farm without them ignores them).
CHAOS_ENV = {
    "FARM_WORK_LEASE_S": "6",
    "FARM_WORK_HEARTBEAT_S": "1",
    "FARM_WORK_RESEND_S": "20",
    "FARM_LEASE_S": "15",
    "FARM_RETRY_BACKOFF_S": "1",
    "FARM_JOB_ATTEMPTS": "3",
    "FARM_SIM_UPLOAD_KBPS": "300",
}
SLOW_DESIGN = '''"""A part that takes a while to build: the chaos run kills its CAD worker mid-build."""

import time

from build123d import Box, Cylinder, Mode


def part(size: float = 20.0, delay: float = 3.0):
    time.sleep(delay)
    return Box(size, size, 8) - Cylinder(size / 5, 8, mode=Mode.PRIVATE)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Kill:
    kind: str
    not_before: float  # seconds after the batch was submitted
    done_at: float | None = None
    target: str = ""
    affected: dict[str, Any] = field(default_factory=dict)  # what it hit, as it was
    recovered_after: float | None = None


@dataclass
class Result:
    jobs: int = 0
    builds: int = 0
    done: int = 0
    lost: int = 0
    printed_twice: int = 0
    never_printed_done: int = 0  # `done` without a print the emulators saw
    stuck_builds: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)  # kills whose moment never came
    longest_recovery_s: float | None = None
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    elapsed_s: float = 0.0
    bound_s: float = 0.0
    within_bound: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "builds": self.builds,
            "kills": self.kills,
            "missed_kills": self.missed,
            "done": self.done,
            "lost": self.lost,
            "printed_twice": self.printed_twice,
            "stuck_builds": self.stuck_builds,
            "longest_recovery_s": self.longest_recovery_s,
            "recovery_s": self.recovery_s,
            "elapsed_s": round(self.elapsed_s, 1),
            "bound_s": self.bound_s,
            "ok": self.ok,
            "problems": self.problems,
        }


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            with contextlib.suppress(OSError):
                found.append((pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
            todo.append(pid)
    return found


class Chaos:
    def __init__(
        self,
        data: Path,
        *,
        jobs: int,
        seed: int,
        rounds: int,
        speed: float,
        bound_s: float,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data = data
        self.want_jobs = jobs
        self.rng = random.Random(seed)
        self.rounds = rounds
        self.speed = speed
        self.bound_s = bound_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        self.env = env | CHAOS_ENV | (extra_env or {})
        self.env |= {"FARM_DATA_DIR": str(data), "FARM_URL": self.url, "PYTHONUNBUFFERED": "1"}
        self.up: subprocess.Popen[bytes] | None = None
        self.seen_pids: dict[int, int | None] = {}  # every part's pid, and its start time: ours to clean up
        self.orphans: dict[int, int | None] = {}  # what killed parts had started, likewise
        self.api: httpx.Client | None = None
        self.printers: list[dict[str, Any]] = []
        self.build_ids: list[int] = []
        self.t0 = 0.0

    # -- the farm -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        for _ in range(50):
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((self.data / "farm-up.json").read_text())
                for pid in state["children"].values():
                    self.seen_pids.setdefault(pid, started_at(pid))
                return dict(state)
            time.sleep(0.05)
        raise RuntimeError("farm-up.json is unreadable")

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "farm", "up", "--sim", SIM, "--port", str(self.port)]
        argv += ["--data-dir", str(self.data), "--speed", str(self.speed)]
        with (self.data / "farm-up.out").open("ab") as out:
            self.up = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self._wait(
            lambda: (self.data / "farm-up.json").exists() or self.up.poll() is not None, 180, "farm up"
        )
        if self.up.poll() is not None:
            raise RuntimeError("farm up exited:\n" + (self.data / "farm-up.out").read_text()[-3000:])
        self.printers = self.state()["printers"]
        token = (self.data / "admin.token").read_text().strip()
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self._wait(lambda: len(self._get("/api/printers") or []) == len(self.printers), 90, "the agents")

    def stop(self) -> None:
        """Ctrl-C to farm up, then SIGKILL to whatever of its parts (and what they started, such as
        a killed worker's PrusaSlicer) is still running: only processes this run started."""
        if self.api is not None:
            self.api.close()
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGINT)
            try:
                self.up.wait(60)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
        # A (pid, start time) pair names one process: a pid since given to another is left alone.
        for pid, since in [*self.seen_pids.items(), *self.orphans.items()]:
            if since is not None and started_at(pid) == since:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    # -- reading the farm ---------------------------------------------------------------------
    def _get(self, path: str, **params: Any) -> Any:
        assert self.api is not None
        try:
            resp = self.api.get(path, params=params)
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def jobs(self) -> list[dict[str, Any]] | None:
        return self._get("/api/jobs", limit=1000)

    def builds(self) -> list[dict[str, Any]] | None:
        return self._get("/api/builds", limit=1000)

    @staticmethod
    def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    # -- the batch ----------------------------------------------------------------------------
    def prepare_gcode(self) -> Path:
        """A pre-sliced G-code for the MINI, made with `farm slice` (no farm involved)."""
        out = self.data / "inputs" / "cube-mini.gcode"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            argv = [sys.executable, "-m", "farm", "slice", str(REPO / "examples" / "cube.stl")]
            argv += ["--printer-model", "MINI", "-o", str(out)]
            subprocess.run(argv, env=self.env, check=True, capture_output=True, cwd=REPO, timeout=300)
        return out

    def plan_wave(self, want: int, first_n: int) -> list[tuple[Path, dict[str, Any]]]:
        """Builds holding `want` jobs: designs, meshes, G-code, copies (one job per copy)."""
        inputs = self.data / "inputs"
        slow = inputs / "slow_part.py"
        if not slow.exists():
            slow.write_text(SLOW_DESIGN)
        gcode = self.prepare_gcode()
        models = sorted({p["model"] for p in self.printers})
        examples = REPO / "examples"
        total, wave = 0, []
        # Slow designs first: the CAD kill needs a build still in `cad` when its moment comes.
        plan = ["slow", "slow"] + ["slow", "design", "mesh", "gcode", "design", "mesh"] * (want + 1)
        for n, kind in enumerate(plan, first_n):
            if total >= want:
                break
            options: dict[str, Any] = {}
            if self.rng.random() < 0.5:  # the rest are sliced for every model in the farm
                options["printer_model"] = self.rng.choice(models)
            if kind == "slow":
                path = slow
                options |= {
                    "entry": "part",
                    "params": {"size": 10 + n % 20, "delay": round(self.rng.uniform(2, 5), 1) + n / 1000},
                }
            elif kind == "design":
                name = self.rng.choice(["bracket", "knob", "spacer"])
                path = examples / f"{name}.py"
                if name == "bracket":
                    options["params"] = {"length": 30 + n % 50}
            elif kind == "mesh":
                path = examples / "cube.stl"
                options |= {"copies": self.rng.randint(2, 4), "per_plate": 1, "infill": f"{10 + n % 30}%"}
            else:
                path = gcode
                options = {"copies": self.rng.randint(1, 2), "per_plate": 1}
            options["copies"] = min(options.get("copies", 1), max(1, want - total))
            total += options["copies"]
            wave.append((path, options))
        return wave

    def submit(self, path: Path, options: dict[str, Any]) -> int:
        """One build, sent again should the coordinator be down (restarting); its number of jobs."""
        assert self.api is not None
        for _ in range(300):
            try:
                with path.open("rb") as f:
                    resp = self.api.post(
                        "/api/builds", files={"file": (path.name, f)}, data={"options": json.dumps(options)}
                    )
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if resp.status_code >= 500:
                time.sleep(0.2)
                continue
            if resp.status_code >= 400:
                raise RuntimeError(f"submitting {path.name} {options}: {resp.status_code} {resp.text}")
            build = resp.json()
            self.build_ids.append(build["id"])
            return len(build.get("jobs") or []) or int(options["copies"])
        raise RuntimeError(f"could not submit {path.name}: the coordinator does not answer")

    # -- the kills ----------------------------------------------------------------------------
    def _kill_part(self, name: str) -> int:
        """SIGKILL one part of this farm. What it started (a build's sandbox, PrusaSlicer) is noted,
        so that whatever of it outlives the part is stopped at the end."""
        pid = int(self.state()["children"][name])
        for child, _ in _descendants(pid):
            self.orphans.setdefault(child, started_at(child))
        os.kill(pid, signal.SIGKILL)
        return pid

    def _restarted(self, name: str, old_pid: int) -> bool:
        return self.state()["children"].get(name) not in (None, old_pid)

    def _moment(
        self, kind: str, jobs: list[dict[str, Any]], builds: list[dict[str, Any]]
    ) -> tuple[str, dict[str, Any]] | None:
        """The part to kill now for `kind`, and what that hits; None while the moment has not come."""
        if kind == "cad_worker":
            in_cad = [b["id"] for b in builds if b["stage"] == "cad"]
            return ("worker", {"builds": in_cad}) if in_cad else None
        if kind == "slice_worker":
            slicing = [b["id"] for b in builds if b["stage"] == "slicing"]
            worker = int(self.state()["children"]["worker"])
            if slicing and any("prusa-slicer" in cmd for _, cmd in _descendants(worker)):
                return "worker", {"builds": slicing}
            return None
        if kind == "agent_upload":
            prusalink = {p["name"] for p in self.printers if p["protocol"] == "prusalink"}
            up = [j for j in jobs if j["state"] == "uploading" and j["printer"] in prusalink]
            return (f"agent-{up[0]['printer']}", {"jobs": [up[0]["id"]]}) if up else None
        if kind == "agent_print":
            printing = [j for j in jobs if j["state"] == "printing" and (j["progress"] or 0) < 60]
            return (f"agent-{printing[0]['printer']}", {"jobs": [printing[0]["id"]]}) if printing else None
        open_builds = [b["id"] for b in builds if b["stage"] not in FINAL_STAGES]
        open_jobs = [j["id"] for j in jobs if j["state"] not in TERMINAL_JOBS]
        name = "coordinator" if kind == "coordinator" else "valkey"
        return name, {"builds": open_builds, "jobs": open_jobs}

    @staticmethod
    def _snapshot(jobs: list[dict[str, Any]], builds: list[dict[str, Any]]) -> dict[str, Any]:
        snap: dict[str, Any] = {f"b{b['id']}": b["stage"] for b in builds}
        snap |= {f"j{j['id']}": (j["state"], j["progress"]) for j in jobs}
        return snap

    def _progressed(self, kill: Kill, snap: dict[str, Any]) -> bool:
        """Has the work the kill hit moved on since? (A build changed stage, a job state or progress.)"""
        keys = [f"b{b}" for b in kill.affected.get("builds", [])] + [
            f"j{j}" for j in kill.affected.get("jobs", [])
        ]
        if not keys:
            return True
        return any(snap.get(k) != kill.affected["before"].get(k) for k in keys)

    def run(self) -> Result:
        result = Result(bound_s=self.bound_s)
        self.start()
        log(f"farm up on {self.url}, data {self.data}")
        self.prepare_gcode()
        # The batch goes in one wave a round, each kind of kill once a round at a seeded time (the
        # CAD and slicing kills early in it, while its builds are being made).
        share = [
            self.want_jobs // self.rounds + (r < self.want_jobs % self.rounds) for r in range(self.rounds)
        ]
        waves, n = [], 0
        for want in share:
            waves.append(self.plan_wave(want, n))
            n += len(waves[-1])
        round_s = max(20.0, 2.5 * self.want_jobs / self.rounds)
        kills: list[Kill] = []
        for r in range(self.rounds):
            for kind in KINDS:
                span = 4.0 if kind in ("cad_worker", "slice_worker") else round_s / 2
                kills.append(Kill(kind, r * round_s + self.rng.uniform(0, span)))
        kills.sort(key=lambda k: k.not_before)
        self.t0 = time.monotonic()
        pending = list(kills)
        recovering: list[Kill] = []
        cooldown_until = 0.0
        deadline = self.t0 + self.bound_s
        mine = set(self.build_ids)
        while time.monotonic() < deadline:
            now = time.monotonic() - self.t0
            if waves and now >= (self.rounds - len(waves)) * round_s:
                wave = waves.pop(0)
                result.jobs += sum(self.submit(path, options) for path, options in wave)
                result.builds = len(self.build_ids)
                mine = set(self.build_ids)
                log(f"t={now:6.1f}s submitted a wave: {result.jobs} jobs in {result.builds} builds so far")
                continue
            jobs_all, builds_all = self.jobs(), self.builds()
            if jobs_all is None or builds_all is None:
                time.sleep(0.1)
                continue
            builds = [b for b in builds_all if b["id"] in mine]
            jobs = [j for j in jobs_all if j["build"] in mine]
            snap = self._snapshot(jobs, builds)
            for k in list(recovering):
                if self._progressed(k, snap):
                    k.recovered_after = round(now - k.done_at, 2)
                    recovering.remove(k)
            finished = all(b["stage"] in FINAL_STAGES for b in builds) and all(
                j["state"] in TERMINAL_JOBS for j in jobs
            )
            if finished and not waves and len(jobs) >= result.jobs:
                for k in pending:
                    result.missed.append(k.kind)
                pending = []
                if not recovering:
                    break
            if pending and time.monotonic() >= cooldown_until:
                for k in pending:
                    if k.not_before > now:
                        continue
                    moment = self._moment(k.kind, jobs, builds)
                    if moment is None:
                        continue
                    if k.kind in ("cad_worker", "agent_print"):
                        # A seeded point inside the build or print; is it still going on?
                        time.sleep(self.rng.uniform(0, 0.3))
                        fresh_jobs, fresh_builds = self.jobs(), self.builds()
                        if fresh_jobs is None or fresh_builds is None:
                            continue
                        jobs = [j for j in fresh_jobs if j["build"] in mine]
                        builds = [b for b in fresh_builds if b["id"] in mine]
                        moment = self._moment(k.kind, jobs, builds)
                        if moment is None:
                            continue
                    name, affected = moment
                    before = self._snapshot(jobs, builds)
                    old = self._kill_part(name)
                    k.done_at = time.monotonic() - self.t0
                    k.target, k.affected = name, affected | {"before": before}
                    log(f"t={k.done_at:6.1f}s kill -9 {name} (pid {old}) for {k.kind}: {affected}")
                    pending.remove(k)
                    recovering.append(k)
                    with contextlib.suppress(RuntimeError):
                        self._wait(lambda n=name, o=old: self._restarted(n, o), 20, f"{name} to restart", 0.1)
                    cooldown_until = time.monotonic() + 1.0
                    break
            time.sleep(0.1)
        result.elapsed_s = time.monotonic() - self.t0
        result.within_bound = result.elapsed_s < self.bound_s
        self._judge(result, kills)
        return result

    def _judge(self, result: Result, kills: list[Kill]) -> None:
        time.sleep(1.0)  # the last "done" reports and print-log lines
        mine = set(self.build_ids)
        jobs = [j for j in (self.jobs() or []) if j["build"] in mine]
        builds = [b for b in (self.builds() or []) if b["id"] in mine]
        result.done = sum(j["state"] == "done" for j in jobs)
        result.lost = result.jobs - result.done
        result.stuck_builds = sum(b["stage"] not in FINAL_STAGES for b in builds)
        prints: Counter[int] = Counter()
        for p in self.printers:
            for entry in read_print_log(self.data / "sim" / p["name"] / "usb"):
                if m := re.match(r"(?:.*/)?job(\d+)-", entry["file"]):
                    prints[int(m.group(1))] += 1
        ids = {j["id"] for j in jobs}
        twice = sorted(i for i, n in prints.items() if i in ids and n > 1)
        result.printed_twice = len(twice)
        unprinted = sorted(j["id"] for j in jobs if j["state"] == "done" and prints[j["id"]] == 0)
        result.never_printed_done = len(unprinted)
        result.kills = dict(Counter(k.kind for k in kills if k.done_at is not None))
        result.recovery_s = {}
        for k in kills:
            if k.done_at is not None:
                key = f"{k.kind}@{k.done_at:.0f}s"
                result.recovery_s[key] = k.recovered_after
        times = [k.recovered_after for k in kills if k.done_at is not None]
        result.longest_recovery_s = None if None in times or not times else max(times)  # type: ignore[type-var]
        if not result.within_bound:
            result.problems.append(f"not finished within {self.bound_s:.0f} s")
        if result.lost:
            states = Counter(j["state"] for j in jobs if j["state"] != "done")
            errors = sorted({str(j["error"])[:200] for j in jobs if j["error"] and j["state"] != "done"})
            result.problems.append(f"{result.lost} jobs not done: {dict(states)}; errors: {errors[:5]}")
        if len(jobs) < result.jobs:
            result.problems.append(f"only {len(jobs)} of {result.jobs} jobs exist")
        if result.stuck_builds:
            stuck = {b["id"]: b["stage"] for b in builds if b["stage"] not in FINAL_STAGES}
            result.problems.append(f"builds left in a non-final stage: {stuck}")
        failed = {b["id"]: str(b["error"])[:200] for b in builds if b["stage"] == "failed"}
        if failed:
            result.problems.append(f"builds failed: {failed}")
        if twice:
            result.problems.append(f"jobs printed twice: {twice} ({ {i: prints[i] for i in twice} })")
        if unprinted:
            result.problems.append(f"jobs done without a print on any printer: {unprinted}")
        unrecovered = [key for key, v in result.recovery_s.items() if v is None]
        if unrecovered:
            result.problems.append(f"no progress after kills: {unrecovered}")
        if result.missed:
            log(f"kills whose moment never came: {result.missed}")


def run_chaos(
    data: Path,
    *,
    jobs: int = 20,
    seed: int = 14,
    rounds: int = 1,
    speed: float = 250.0,
    bound_s: float = 300.0,
    extra_env: dict[str, str] | None = None,
) -> Result:
    chaos = Chaos(
        data, jobs=jobs, seed=seed, rounds=rounds, speed=speed, bound_s=bound_s, extra_env=extra_env
    )
    try:
        return chaos.run()
    finally:
        chaos.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--rounds", type=int, default=None, help="kills of each kind (default: 1 per 40 jobs)")
    ap.add_argument("--speed", type=float, default=250.0, help="how much faster the emulators print")
    ap.add_argument("--bound-s", type=float, default=None, help="default: 120 s + 6 s a job")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder")
    args = ap.parse_args()
    rounds = args.rounds or max(1, args.jobs // 40)
    bound = args.bound_s or 120.0 + 6.0 * args.jobs
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        data = args.data_dir or Path(tmp)
        result = run_chaos(
            data, jobs=args.jobs, seed=args.seed, rounds=rounds, speed=args.speed, bound_s=bound
        )
        figures = result.figures()
        print(f"jobs            {result.jobs} in {result.builds} builds, seed {args.seed}")
        print("kills           " + ", ".join(f"{k} {result.kills.get(k, 0)}" for k in KINDS))
        if result.missed:
            print(f"missed kills    {', '.join(result.missed)} (the batch ended before their moment)")
        print(f"done            {result.done}")
        print(f"lost            {result.lost}")
        print(f"printed twice   {result.printed_twice}")
        print(f"stuck builds    {result.stuck_builds}")
        print(f"longest recovery {result.longest_recovery_s} s (kill -> next progress of the work it hit)")
        print(f"elapsed         {result.elapsed_s:.1f} s (bound {bound:.0f} s)")
        for problem in result.problems:
            print(f"PROBLEM         {problem}")
        print(json.dumps(figures))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
