"""How close a whole farm runs its printers to 100 % busy, against the batch's lower bound.

A farm on this machine with its real parts and protocols: Valkey, the coordinator and a CAD +
slicing worker as `farm up` starts them (farm/commands/up.py), and N emulated printers (PrusaLink,
OctoPrint, Moonraker and Bambu; MINI, MK3S, MK4S, CORE One, X1C with an AMS, P1S; some loaded with
PETG or a colour) each with its own `printers.agent.Agent`, talking to its emulator over the
printer's protocol on loopback and to the coordinator over HTTP. So that N = 100 fits on 2 cores,
emulators run `--hosts` to a process (threads, each emulator on its own ports) and agents likewise
in processes of their own: the same classes `farm emulate` and `farm agent` run, in fewer
interpreters. Print clocks run `--speed` times faster than the G-code's estimate.

The batch (`--jobs` M prints): mostly pre-sliced G-code (`.gcode`, `.gcode.3mf` for Bambu) of known
durations, some copies and priorities; `--meshes` of them an STL sliced on the farm and
`--designs` a parametric build123d part (examples/bracket.py, each with its own length), CAD and
slicing included. Every job asks for its printers' model and material (and colour, where they
have one). A third of the printers need `farm printers clear` after each print, which a simulated
operator gives `--operator-delay` seconds after the bed needs it; the rest eject on their own.

The clock starts (t0) once every agent runs, with every pre-sliced job already queued. Measured
from the emulators' own print logs (start time and duration of every print) and the queue as the
coordinator's database shows it, read-only, every 0.2 s:

- `makespan_ratio`: last print end - t0, over the lower bound: for each set of printers that can
  take the same jobs, the larger of their jobs' total print time over the printers and the longest
  job; the batch's bound is the largest set's.
- `busy_fraction`: printing time over available time while work for that printer was queued
  (a printer is available from its previous print's end, or its bed's clearing, until the last
  job for it started; time waiting for the operator is not available time).
- `start_gap_p99_s`: printer ready (idle, bed clear) with a job for it queued, to its next print
  starting (`start_gap_after_clear_p99_s`: the same, counted only after an operator's clear). A
  printer's first print is not counted: it measures how fast the farm starts, not a gap.
- CPU seconds and RSS of the coordinator, the worker, and per agent and per emulator.

`--builds N`: instead, N distinct parametric builds (one `--matrix`) through CAD and slicing with
the default worker: `builds_per_min`, and `pipeline_ratio` against the floor set by this machine's
cores and the raw tools' CPU time for the same builds (`python bracket.py` and `prusa-slicer`,
measured on a sample); `warm_pipeline_ratio` against a stricter floor, build123d's CPU time in one
warm interpreter (no import, no per-build isolation: what no sandboxed worker can reach).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sim:
    name: str
    protocol: str
    model: str
    auto_eject: bool
    material: str = "PLA"
    color: str | None = None
    ams: bool = False
    port: int = 0
    ftps_port: int = 0
    camera_port: int = 0
    secret: str = ""
    storage: str = ""

    @property
    def kind(self) -> tuple[str, str, str | None]:
        """What a job must ask for to go to this printer: its set of interchangeable printers."""
        return (self.model, self.material, self.color)


# One farm's mix, repeated: 12 printers, 4 protocols, 6 models, PETG and a colour, 2 with an
# operator to clear the bed, 1 with an AMS.
MIX: list[tuple[str, str, bool, str, str | None, bool]] = [
    ("prusalink", "MK4S", True, "PLA", None, False),
    ("prusalink", "MINI", True, "PLA", None, False),
    ("prusalink", "MK4S", False, "PLA", None, False),
    ("octoprint", "MK3S", True, "PLA", None, False),
    ("moonraker", "MK4S", True, "PETG", None, False),
    ("bambu", "X1C", True, "PLA", None, True),
    ("prusalink", "COREONE", False, "PLA", "black", False),
    ("octoprint", "MK3S", False, "PLA", None, False),
    ("moonraker", "MK4S", True, "PLA", None, False),
    ("bambu", "P1S", True, "PLA", None, False),
    ("prusalink", "MINI", True, "PLA", None, False),
    ("prusalink", "COREONE", True, "PLA", "black", False),
]


def roster(n: int) -> list[Sim]:
    sims = []
    for i in range(n):
        protocol, model, eject, material, color, ams = MIX[i % len(MIX)]
        sims.append(
            Sim(f"b-{protocol[:4]}-{model.lower()}-{i + 1}", protocol, model, eject, material, color, ams)
        )
    return sims


# -- process accounting ----------------------------------------------------------------------


def cpu_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system, children included) and RSS in MB of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return 0.0, 0.0
    f = stat[stat.rindex(")") + 2 :].split()
    cpu = sum(int(x) for x in f[11:15]) / CLK  # utime stime cutime cstime
    return cpu, int(statm.split()[1]) * PAGE / 1e6


# -- printer hosts: many emulators, or many agents, in one process -----------------------------


def host_emulators(spec: dict[str, Any]) -> None:
    from printers.emulators.bambu import BambuEmulator
    from printers.emulators.moonraker import MoonrakerEmulator
    from printers.emulators.octoprint import OctoPrintEmulator
    from printers.emulators.prusalink import PrusaLinkEmulator

    logging.basicConfig(level=logging.WARNING)
    speed = spec["speed"]
    emus: list[Any] = []
    ports: dict[str, list[int]] = {}
    for raw in spec["sims"]:
        s = Sim(**raw)
        storage = Path(s.storage)
        if s.protocol == "prusalink":
            emu: Any = PrusaLinkEmulator(
                port=s.port, password=s.secret, model=s.model, storage_dir=storage, speed=speed
            )
        elif s.protocol == "octoprint":
            emu = OctoPrintEmulator(port=s.port, api_key=s.secret, storage_dir=storage, speed=speed)
        elif s.protocol == "moonraker":
            emu = MoonrakerEmulator(port=s.port, api_key=s.secret, storage_dir=storage, speed=speed)
        else:
            ams = [("PLA", "000000FF"), ("PLA", "FFFFFFFF"), ("PETG", "FF0000FF"), ("PLA", "00AE42FF")]
            emu = BambuEmulator(
                mqtt_port=s.port,
                ftps_port=s.ftps_port,
                serial=_serial(s),
                access_code=s.secret[-8:].rjust(8, "0"),
                model=s.model,
                storage_dir=storage,
                speed=speed,
                ams=ams if s.ams else None,
                camera_port=s.camera_port,
            )
        emus.append(emu.start())
        # Each on a port the kernel gave it at bind: ports picked ahead were taken by other sessions.
        s.port = emu.mqtt_port if s.protocol == "bambu" else emu.port
        if s.protocol == "bambu":
            s.ftps_port, s.camera_port = emu.ftps_port, emu.camera_port or 0
        ports[s.name] = [s.port, s.ftps_port, s.camera_port]
    print(json.dumps(ports), flush=True)
    _serve_until_stopped(lambda: [e.stop() for e in emus])


def _serial(s: Sim) -> str:
    return f"01S00A{int(s.name.rsplit('-', 1)[1]):09d}"


def host_agents(spec: dict[str, Any]) -> None:
    from farm.core.client import FarmClient
    from printers.agent import Agent
    from printers.config import AgentConfig, CoordinatorConfig
    from printers.drivers import make_driver
    from printers.drivers.base import PrinterConfig

    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()
    threads = []
    for raw, token in zip(spec["sims"], spec["tokens"], strict=True):
        s = Sim(**raw)
        auth: dict[str, Any]
        if s.protocol == "prusalink":
            auth = {"password": s.secret}
        elif s.protocol == "bambu":
            auth = {
                "serial": _serial(s),
                "access_code": s.secret[-8:].rjust(8, "0"),
                "ftps_port": s.ftps_port,
                "camera_port": s.camera_port or None,
            }
        else:
            auth = {"api_key": s.secret}
        printer = PrinterConfig(
            name=s.name, model=s.model, driver=s.protocol, port=s.port, auto_eject=s.auto_eject, **auth
        )
        cfg = AgentConfig(
            coordinator=CoordinatorConfig(url=spec["url"], token=token),
            printer=printer,
            spool_dir=Path(s.storage).parent / "spool",
            **({"poll_s": spec["poll_s"]} if spec.get("poll_s") else {}),
        )
        agent = Agent(cfg, FarmClient(spec["url"], token), make_driver(printer))
        t = threading.Thread(target=agent.run, args=(stop,), name=s.name, daemon=True)
        threads.append(t)
    for t in threads:
        t.start()
    _serve_until_stopped(stop.set)


def _serve_until_stopped(stop: Any) -> None:
    from farm.core.stopping import stop_on_signals

    done = stop_on_signals((signal.SIGTERM,))
    print("ready", flush=True)
    done.wait()
    stop()


# -- the batch ------------------------------------------------------------------------------


def prusa_gcode(model: str, estimate_s: int, tag: str) -> str:
    moves = "".join(f"G1 X{10 + i % 50} Y{10 + (i * 7) % 50} E0.05\n" for i in range(200))
    h, rest = divmod(estimate_s, 3600)
    m, s = divmod(rest, 60)
    return (
        f"; generated by PrusaSlicer 2.5.0\n; bench job {tag}\n"
        f'M862.3 P "{model}" ; printer model check\nM104 S215\nM140 S60\nG28\n{moves}M104 S0\n'
        f"; estimated printing time (normal mode) = {h}h {m}m {s}s\n; printer_model = {model}\n"
    )


def bambu_package(model: str, estimate_s: int, tag: str, out: Path) -> Path:
    from farm.core.printer_models import get_model
    from workers.bambu3mf import PlateInfo, package_gcode

    info = get_model(model)
    assert info is not None
    body = ["G28", "M104 S220", f"; bench job {tag}"]
    for layer in range(1, 11):
        body += [f"M73 L{layer}", f"M991 S0 P{layer - 1}", f"G1 Z{0.2 * layer:.1f}", "G1 X10 Y10 E0.5"]
    plain = out.with_suffix(".plain")
    plain.write_text("\n".join([*body, "M104 S0", ""]))
    plate = PlateInfo(
        printer_model=info.gcode_model or info.name,
        printer_model_id=info.bambu_model_id,
        print_time_s=estimate_s,
        layers=10,
        filament_type="PLA",
    )
    package_gcode(plain, out, plate, {"nozzle_diameter": "0.4"})
    plain.unlink()
    return out


@dataclass
class Planned:
    kind: tuple[str, str, str | None]
    source: str  # gcode | mesh | design
    copies: int
    priority: int
    wall_s: float  # for pre-sliced jobs: the print's length at --speed


def plan(sims: list[Sim], jobs: int, args: argparse.Namespace, rng: random.Random) -> list[Planned]:
    kinds = [s.kind for s in sims]
    bambu = {s.kind for s in sims if s.protocol == "bambu"}
    out: list[Planned] = []
    left = jobs
    n_mesh = round(jobs * args.meshes)
    n_design = round(jobs * args.designs)
    while left > 0:
        kind = kinds[len(out) % len(kinds)]  # each set's share of the work is its share of the printers
        if n_design > 0 and kind not in bambu:
            source, n_design = "design", n_design - 1
        elif n_mesh > 0:
            source, n_mesh = "mesh", n_mesh - 1
        else:
            source = "gcode"
        copies = min(left, rng.choice((1, 1, 1, 1, 2, 3))) if source == "gcode" else 1
        priority = 5 if rng.random() < 0.1 else 0
        out.append(Planned(kind, source, copies, priority, rng.uniform(args.min_s, args.max_s)))
        left -= copies
    rng.shuffle(out)
    return out


# -- the farm -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from farm.commands.up import Farm, free_port
        from farm.core.settings import Settings

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="farm-bench-"))
        port = free_port()
        os.environ.pop("FARM_TOKEN", None)
        self.settings = Settings(port=port, url=f"http://127.0.0.1:{port}", data_dir=self.tmp / "data")
        self.settings.data_dir.mkdir(parents=True)
        self.farm = Farm(self.settings, sims=[], speed=args.speed)
        self.hosts: list[subprocess.Popen[str]] = []
        self.sims: list[Sim] = []
        self.cleared: dict[str, list[float]] = {}
        self.ready_seen: dict[int, float] = {}
        self.job_rows: dict[int, tuple[str, str | None]] = {}
        self.stop = threading.Event()
        self.ports: dict[str, list[int]] = {}

    # parts
    def start(self) -> None:
        from farm.core.client import FarmClient

        self.farm.start()
        self.admin = self.settings.admin_token_file.read_text().strip()
        self.client = FarmClient(self.settings.url, self.admin)
        self.sims = roster(self.args.printers)
        for s in self.sims:
            s.secret = f"pw-{s.name}"
            s.storage = str(self.tmp / "sim" / s.name / "usb")
            # Registered (as its agent does on start) and set up before any agent claims: a PETG
            # printer must not take a PLA job while the bench is still loading its spool.
            self.client.post(
                "/api/agents/register",
                {"printer": s.name, "model": s.model, "protocol": s.protocol, "auto_eject": s.auto_eject},
            )
            settings: dict[str, Any] = {"material": s.material}
            if s.color:
                settings["color"] = s.color
            self.client.request("PATCH", f"/api/printers/{s.name}", json=settings)
        self.tokens = [
            self.farm.issue_token(self.admin, f"agent-{s.name}", "agent", s.name) for s in self.sims
        ]
        self.emu_hosts = self._spawn("emulators", self.sims, {})
        by_name = {s.name: s for s in self.sims}
        for name, (port, ftps, camera) in self.ports.items():
            by_name[name].port, by_name[name].ftps_port, by_name[name].camera_port = port, ftps, camera

    def _spawn(self, role: str, sims: list[Sim], extra: dict[str, Any]) -> list[subprocess.Popen[str]]:
        per = max(1, self.args.per_host)
        procs = []
        for k in range(0, len(sims), per):
            group = sims[k : k + per]
            spec = {"sims": [asdict(s) for s in group], "speed": self.args.speed, "url": self.settings.url}
            spec.update({key: (v[k : k + per] if isinstance(v, list) else v) for key, v in extra.items()})
            path = self.tmp / f"{role}-{k}.json"
            path.write_text(json.dumps(spec))
            log = (self.tmp / f"{role}-{k}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, __file__, f"--host-{role}", str(path)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO,
            )
            procs.append(proc)
            self.hosts.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith("{"):  # an emulator host says its ports first
                self.ports.update(json.loads(line))
                line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a {role} host did not start; see {self.tmp}/{role}-*.log")
        return procs

    def start_agents(self) -> None:
        extra = {"tokens": self.tokens, "poll_s": self.args.poll_s}
        self.agent_hosts = self._spawn("agents", self.sims, extra)

    def stop_all(self) -> None:
        self.stop.set()
        for proc in self.hosts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.hosts:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.farm.stop()

    # the batch
    def submit(self, planned: list[Planned]) -> list[dict[str, Any]]:
        from farm.core.wire import SubmitOptions

        src = self.tmp / "src"
        src.mkdir()
        builds = []
        for i, p in enumerate(planned):
            model, material, color = p.kind
            options: dict[str, Any] = {"copies": p.copies, "priority": p.priority, "material": material}
            if color:
                options["color"] = color
            if p.source == "gcode":
                estimate = max(1, round(p.wall_s * self.args.speed))
                from farm.core.printer_models import get_model

                info = get_model(model)
                if info is not None and info.protocol == "bambu":
                    path = bambu_package(model, estimate, str(i), src / f"part{i}.gcode.3mf")
                else:
                    path = src / f"part{i}.gcode"
                    path.write_text(prusa_gcode(model, estimate, str(i)))
            elif p.source == "mesh":
                path = REPO / "examples" / "cube.stl"
                options["printer_model"] = model
            else:
                path = REPO / "examples" / "bracket.py"
                options["printer_model"] = model
                options["params"] = {"length": 40 + i % 60, "thickness": 3 + (i // 60) % 4}
            builds.append(self.client.submit(path, SubmitOptions.model_validate(options)))
        return builds

    # watching the queue and the beds (read-only, from the coordinator's SQLite database)
    def watch(self) -> None:
        db = sqlite3.connect(f"file:{self.settings.sqlite_path}?mode=ro", uri=True, timeout=5)
        seen_bed: dict[str, float] = {}
        try:
            while not self.stop.wait(0.2):
                now = time.time()
                try:
                    rows = db.execute("SELECT id, state, printer FROM job").fetchall()
                    beds = db.execute("SELECT name FROM printer WHERE bed_clear = 0").fetchall()
                except sqlite3.OperationalError:
                    continue
                for job_id, raw_state, printer in rows:
                    state = str(raw_state).lower()  # stored as the enum's name
                    if state == "ready":
                        self.ready_seen.setdefault(job_id, now)
                    self.job_rows[job_id] = (state, printer)
                waiting = {name for (name,) in beds}
                for name in waiting:
                    seen_bed.setdefault(name, now)
                for name in list(seen_bed):
                    if name not in waiting:
                        del seen_bed[name]
                    elif now - seen_bed[name] >= self.args.operator_delay:
                        self.client.post(f"/api/printers/{name}/clear", {})
                        self.cleared.setdefault(name, []).append(time.time())
                        del seen_bed[name]
        finally:
            db.close()

    def settled(self) -> bool:
        return bool(self.job_rows) and all(
            s in ("done", "failed", "cancelled") for s, _ in self.job_rows.values()
        )


# -- figures --------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]


def job_id_of(file: str) -> int | None:
    stem = Path(file).name
    if not stem.startswith("job"):
        return None
    digits = stem[3:].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def figures(bench: Bench, t0: float, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    from printers.emulators.common import read_print_log

    kind_of_job: dict[int, tuple[str, str, str | None]] = {}
    for j in jobs:
        kind_of_job[j["id"]] = (j["printer_model"], j["material"], j["color"])
    sims_by_kind: dict[tuple[str, str, str | None], list[Sim]] = {}
    for s in bench.sims:
        sims_by_kind.setdefault(s.kind, []).append(s)
    prints: dict[str, list[tuple[float, float, int | None]]] = {}
    for s in bench.sims:
        log = read_print_log(Path(s.storage))
        prints[s.name] = sorted((e["at"], e.get("seconds") or 0.0, job_id_of(e["file"])) for e in log)
    queued_at = {j: max(t0, at) for j, at in bench.ready_seen.items()}
    # The lower bound, per set of interchangeable printers.
    bound, makespan = 0.0, 0.0
    per_kind = {}
    for kind, sims in sims_by_kind.items():
        durations = [d for s in sims for _, d, _ in prints[s.name]]
        if not durations:
            continue
        lb = max(sum(durations) / len(sims), max(durations))
        end = max(at + d for s in sims for at, d, _ in prints[s.name])
        per_kind["/".join(str(k) for k in kind if k)] = {
            "printers": len(sims),
            "prints": len(durations),
            "lower_bound_s": round(lb, 1),
            "makespan_s": round(end - t0, 1),
        }
        bound = max(bound, lb)
        makespan = max(makespan, end - t0)
    # Gaps and busy time: per printer, from each moment it was ready with work for it queued.
    gaps, gaps_after_clear = [], []
    busy = available = 0.0
    for kind, sims in sims_by_kind.items():
        kind_jobs = [j for j, k in kind_of_job.items() if k == kind]
        starts = [at for s in sims for at, _, _ in prints[s.name]]
        if not starts:
            continue
        last_start = max(starts)
        for s in sims:
            clears = sorted(bench.cleared.get(s.name, []))
            ready: float | None = None  # a printer's first print measures the farm's start, not a gap
            after_clear = False
            for at, dur, _job in prints[s.name]:
                first = ready is None
                if ready is None:
                    ready = at
                # The earliest moment a job for this set was queued and not yet started elsewhere.
                waiting = [
                    queued_at[j] for j in kind_jobs if j in queued_at and _started(bench, j, prints) >= ready
                ]
                first_queued = min(waiting, default=at)
                since = max(ready, first_queued)
                if at >= since and not first:
                    gaps.append(at - since)
                    if after_clear:
                        gaps_after_clear.append(at - since)
                    available += at - since
                end = at + dur
                busy += max(0.0, min(end, last_start) - max(at, t0))
                available += max(0.0, min(end, last_start) - max(at, t0))
                ready = end
                after_clear = False
                if not s.auto_eject:
                    cleared = next((c for c in clears if c >= end - 0.5), None)
                    if cleared is not None:
                        ready, after_clear = max(end, cleared), True
                if ready >= last_start:
                    break
    return {
        "makespan_s": round(makespan, 1),
        "lower_bound_s": round(bound, 1),
        "makespan_ratio": round(makespan / bound, 4) if bound else None,
        "busy_fraction": round(busy / available, 4) if available else None,
        "start_gap_p50_s": round(percentile(gaps, 0.5), 3),
        "start_gap_p99_s": round(percentile(gaps, 0.99), 3),
        "start_gap_max_s": round(max(gaps, default=0.0), 3),
        "start_gap_after_clear_p99_s": round(percentile(gaps_after_clear, 0.99), 3),
        "gaps": len(gaps),
        "sets": per_kind,
    }


def _started(bench: Bench, job: int, prints: dict[str, list[tuple[float, float, int | None]]]) -> float:
    """When a job's print started (on whichever printer), or +inf if never."""
    cache = bench.__dict__.setdefault("_start_of", {})
    if not cache:
        for entries in prints.values():
            for at, _, j in entries:
                if j is not None:
                    cache.setdefault(j, at)
    return float(cache.get(job, math.inf))


def all_jobs(bench: Bench) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        resp = bench.client.request("GET", "/api/jobs", params=params)
        out += resp.json()
        cursor = resp.headers.get("X-Next-Cursor")
        if not cursor:
            return out


def usage(bench: Bench) -> dict[str, Any]:
    children = {c.name: c.proc.pid for c in bench.farm.children if c.proc is not None}
    coord = cpu_rss(children["coordinator"])
    worker = cpu_rss(children["worker"])
    agents = [cpu_rss(p.pid) for p in bench.agent_hosts]
    emus = [cpu_rss(p.pid) for p in bench.emu_hosts]
    n = len(bench.sims)
    return {
        "coordinator_cpu_s": round(coord[0], 1),
        "coordinator_rss_mb": round(coord[1]),
        "worker_cpu_s": round(worker[0], 1),
        "agent_cpu_s_each": round(sum(c for c, _ in agents) / n, 3),
        "agent_rss_mb_each": round(sum(r for _, r in agents) / n, 1),
        "agent_host_rss_mb": round(max(r for _, r in agents)),
        "emulator_cpu_s_each": round(sum(c for c, _ in emus) / n, 3),
        "emulator_rss_mb_each": round(sum(r for _, r in emus) / n, 1),
    }


def idle_cost(bench: Bench, seconds: float) -> dict[str, float]:
    """CPU share while nothing prints: what an idle farm of this size costs."""
    pids = {
        "coordinator": [c.proc.pid for c in bench.farm.children if c.name == "coordinator" and c.proc],
        "agents": [p.pid for p in bench.agent_hosts],
        "emulators": [p.pid for p in bench.emu_hosts],
    }
    before = {k: sum(cpu_rss(p)[0] for p in v) for k, v in pids.items()}
    time.sleep(seconds)
    after = {k: sum(cpu_rss(p)[0] for p in v) for k, v in pids.items()}
    return {f"idle_{k}_cpu_pct": round(100 * (after[k] - before[k]) / seconds, 1) for k in pids}


def run_batch(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    bench = Bench(args)
    watcher = threading.Thread(target=bench.watch, daemon=True)
    try:
        t_setup = time.time()
        bench.start()
        planned = plan(bench.sims, args.jobs, args, rng)
        builds = bench.submit(planned)
        watcher.start()
        presliced = sum(p.copies for p in planned if p.source == "gcode")
        deadline = time.time() + 120
        while sum(1 for j in bench.ready_seen) < presliced and time.time() < deadline:
            time.sleep(0.2)  # every pre-sliced job queued before the printers start
        setup_s = time.time() - t_setup
        bench.start_agents()
        t0 = time.time()  # every agent's thread runs: from here on, a printer idle is a gap
        deadline = t0 + args.timeout
        while not bench.settled() and time.time() < deadline:
            time.sleep(0.5)
        settled = bench.settled()
        run_s = time.time() - t0
        jobs = all_jobs(bench)
        idle = idle_cost(bench, 5.0) if settled else {}
        result: dict[str, Any] = {
            "printers": len(bench.sims),
            "jobs": len(jobs),
            "builds": len(builds),
            "speed": args.speed,
            "poll_s": args.poll_s,
            "operator_delay_s": args.operator_delay,
            "done": sum(1 for j in jobs if j["state"] == "done"),
            "failed": sum(1 for j in jobs if j["state"] == "failed"),
            "settled": settled,
            "setup_s": round(setup_s, 1),
            "run_s": round(run_s, 1),
            **figures(bench, t0, jobs),
            **usage(bench),
            **idle,
            "errors": sorted({j["error"] for j in jobs if j.get("error")})[:5],
        }
        return result
    finally:
        bench.stop_all()
        if watcher.is_alive():
            watcher.join(5)
        if not args.keep:
            import shutil

            shutil.rmtree(bench.tmp, ignore_errors=True)
        else:
            print(f"kept {bench.tmp}", file=sys.stderr)


# -- --builds: a matrix of distinct parametric builds through CAD and slicing -------------------

RAW_CAD = """
import sys, time
sys.path.insert(0, {examples!r})
from build123d import export_stl
from bracket import bracket
{warm}
begun = time.process_time()
for length, thickness in {params!r}:
    export_stl(bracket(length=length, thickness=thickness), f"{out}/raw-{{length}}-{{thickness}}.stl")
print(time.process_time() - begun)
"""


def matrix(n: int) -> list[tuple[float, float]]:
    """n distinct (length, thickness) pairs of examples/bracket.py."""
    return [(40.0 + i % 50, 3.0 + (i // 50) * 0.5) for i in range(n)]


def raw_cpu_per_build(sample: list[tuple[float, float]], tmp: Path) -> dict[str, float]:
    """The raw tools' CPU seconds per build: build123d building and exporting each part as a user
    runs a design (one `python` per part, its import included: `cad_cold_cpu_s`) and in one warm
    interpreter (the import and a first part not counted: `cad_cpu_s`), then `prusa-slicer` on each
    STL with the farm's flattened MK4S profile."""
    from farm.core.printer_models import MODELS
    from workers.prusaslicer import find_slicer
    from workers.slicer_profiles import flatten_profile, write_profile

    def children_cpu() -> float:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    out = tmp / "raw"
    out.mkdir()

    def script(params: list[tuple[float, float]], warm: str = "") -> str:
        return RAW_CAD.format(examples=str(REPO / "examples"), params=params, out=str(out), warm=warm)

    # As a user runs a design (`python design.py`: one interpreter per part, its import included)...
    c0 = children_cpu()
    for one in sample:
        subprocess.run([sys.executable, "-c", script([one])], check=True, capture_output=True)
    cold = (children_cpu() - c0) / len(sample)
    # ...and inside one warm interpreter: the import and OCCT's first use (a first part) not timed.
    warm = f'export_stl(bracket(length=39.0, thickness=3.0), "{tmp}/warm.stl")'
    run = subprocess.run(
        [sys.executable, "-c", script(sample, warm)], check=True, capture_output=True, text=True
    )
    cad = float(run.stdout.split()[-1]) / len(sample)
    c2 = children_cpu()
    profile = write_profile(flatten_profile(MODELS["MK4S"]), tmp / "profile.ini")
    slicer = find_slicer()
    for stl in sorted(out.glob("*.stl")):
        cmd = [str(slicer), "--loglevel", "1", "--load", str(profile), "--export-gcode"]
        subprocess.run(
            [*cmd, "-o", str(stl.with_suffix(".gcode")), str(stl)], check=True, capture_output=True
        )
    c3 = children_cpu()
    return {
        "cad_cold_cpu_s": round(cold, 3),
        "cad_cpu_s": round(cad, 3),
        "slice_cpu_s": round((c3 - c2) / len(sample), 3),
    }


def run_builds(args: argparse.Namespace) -> dict[str, Any]:
    from farm.core.wire import SubmitOptions

    bench = Bench(args)
    try:
        bench.start()
        params = matrix(args.builds)
        floor_cpu = raw_cpu_per_build(params[: args.raw_sample], bench.tmp)
        cores = os.cpu_count() or 1
        floor_per_min = cores * 60.0 / (floor_cpu["cad_cold_cpu_s"] + floor_cpu["slice_cpu_s"])
        warm_floor_per_min = cores * 60.0 / (floor_cpu["cad_cpu_s"] + floor_cpu["slice_cpu_s"])
        db = sqlite3.connect(f"file:{bench.settings.sqlite_path}?mode=ro", uri=True, timeout=5)
        t0 = time.time()
        for length, thickness in params:
            options = {"printer_model": "MK4S", "params": {"length": length, "thickness": thickness}}
            bench.client.submit(REPO / "examples" / "bracket.py", SubmitOptions.model_validate(options))
        submitted = time.time() - t0
        deadline = t0 + args.timeout
        while time.time() < deadline:
            rows = db.execute("SELECT lower(stage), count(*) FROM build GROUP BY lower(stage)").fetchall()
            stages = dict(rows)
            if stages.get("ready", 0) + stages.get("failed", 0) >= len(params):
                break
            time.sleep(0.5)
        elapsed = time.time() - t0
        db.close()
        per_min = stages.get("ready", 0) * 60.0 / elapsed
        children = {c.name: c.proc.pid for c in bench.farm.children if c.proc is not None}
        return {
            "builds": len(params),
            "ready": stages.get("ready", 0),
            "failed": stages.get("failed", 0),
            "elapsed_s": round(elapsed, 1),
            "submit_s": round(submitted, 1),
            "builds_per_min": round(per_min, 1),
            "floor_builds_per_min": round(floor_per_min, 1),
            "pipeline_ratio": round(per_min / floor_per_min, 3),
            "warm_floor_builds_per_min": round(warm_floor_per_min, 1),
            "warm_pipeline_ratio": round(per_min / warm_floor_per_min, 3),
            "cores": cores,
            **floor_cpu,
            "worker_cpu_s": round(cpu_rss(children["worker"])[0], 1),
            "coordinator_cpu_s": round(cpu_rss(children["coordinator"])[0], 1),
        }
    finally:
        bench.stop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(bench.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--printers", type=int, default=12, help="emulated printers, each with its agent")
    ap.add_argument("--jobs", type=int, default=100, help="prints in the batch (copies count)")
    ap.add_argument(
        "--speed", type=float, default=60.0, help="printers print this much faster than the estimate"
    )
    ap.add_argument(
        "--min-s", type=float, default=10.0, help="shortest pre-sliced print, wall seconds at --speed"
    )
    ap.add_argument("--max-s", type=float, default=40.0, help="longest pre-sliced print, wall seconds")
    ap.add_argument("--meshes", type=float, default=0.03, help="share of jobs that are STL meshes to slice")
    ap.add_argument("--designs", type=float, default=0.03, help="share of jobs that are parametric designs")
    ap.add_argument("--operator-delay", type=float, default=3.0, help="seconds before a bed is cleared")
    ap.add_argument("--poll-s", type=float, default=None, help="agents' poll_s (default: the agent's own)")
    ap.add_argument("--per-host", type=int, default=25, help="emulators (and agents) per process")
    ap.add_argument("--timeout", type=float, default=1200.0, help="give up on the batch after this long")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    ap.add_argument(
        "--builds", type=int, default=0, help="instead: N distinct parametric builds (CAD + slicing)"
    )
    ap.add_argument("--raw-sample", type=int, default=5, help="--builds: builds timed with the raw tools")
    ap.add_argument("--host-emulators", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--host-agents", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.host_emulators:
        host_emulators(json.loads(args.host_emulators.read_text()))
        return
    if args.host_agents:
        host_agents(json.loads(args.host_agents.read_text()))
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = sys.stdout
    sys.stdout = sys.stderr  # the farm's parts (farm up copies their output to stdout): our JSON alone
    result = run_builds(args) if args.builds else run_batch(args)
    print(json.dumps(result), file=out, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
