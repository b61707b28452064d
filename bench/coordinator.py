"""The coordinator under a fleet: N agents heartbeating every 2 s, some claiming from a deep queue.

For each database (SQLite in WAL mode, then a throwaway PostgreSQL), the coordinator runs as
`farm server` does (uvicorn, one process) on a free loopback port. The bench makes an agent token
for each of N printers (POST /api/tokens), registers them through the API, and queues 10,000 ready
jobs through the farm's own pipeline (create_build + slice_finished, as a mesh build would go).

Most agents hold a printing job (they claimed and reported it through the API before the run) and
send `heartbeat`, which extends their job's lease. The rest (`--claim-fraction`) cycle like an agent
with an auto-ejecting printer: `claim` from the queue, then `report` uploading, printing and done on
their next ticks, then claim again. Every agent sends one request per 2 s tick, agents' ticks spread
evenly over the 2 s, each over its own keep-alive HTTP/1.1 connection. The load generator is a raw
asyncio HTTP/1.1 client (a few µs per request) in `--procs` processes; its CPU use is reported.

Latency is from writing a request to reading its whole response. Errors are: a status other than
the expected one (200; 204 for an empty claim is counted apart), a dropped connection, no answer
in 10 s, or a heartbeat that finds its job gone. After the run, the database must agree: every
`done` the agents were told about is a done job, and no job is bound to two printers.

`--with-cad-load` (bench/cad_load.py) runs the same meanwhile beside a farm of real `farm worker`s
building and slicing heavy parts without a pause, at the batch priority the workers' settings give
them (`--with-cad-load normal`: at the priority they were started with, to compare); `cad_cpu`
says how many cores that load got, `cad_builds_per_min` how much it made.

Last line: one JSON object; `agents`, `p50_ms`, `p99_ms` (all requests), `errors`, `claim_p99_ms`
and `req_per_s` are the worse of the two databases, which are given in full under their names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from bench.cad_load import CadLoad

MODELS = ("MINI", "MK3S", "MK4S")
TARGETS = {"p99_ms": 50.0, "claim_p99_ms": 20.0, "errors": 0}
TIMEOUT_S = 10.0
KINDS = ("heartbeat", "claim", "report")
COPIES = 50  # jobs per queued build


# -- a raw HTTP/1.1 keep-alive client ----------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time: what an agent holds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.open = False

    @classmethod
    async def connect(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(loop), "127.0.0.1", port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.timer is not None:
            self.timer.cancel()

    def _timeout(self) -> None:
        self._fail(TimeoutError(f"no answer in {TIMEOUT_S:.0f} s"))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        if self.timer is not None:
            self.timer.cancel()
        if not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = self.loop.create_future()
        self.timer = self.loop.call_later(TIMEOUT_S, self._timeout)
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def post(port: int, path: str, token: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


# -- the simulated agents (in the load processes) ----------------------------------------------


class Agent:
    def __init__(self, spec: dict[str, Any], port: int) -> None:
        self.name: str = spec["name"]
        self.token: str = spec["token"]
        self.claims: bool = spec["claims"]
        self.job: int | None = spec.get("job")
        self.fence: int | None = spec.get("fence")
        self.index: int = spec["index"]
        self.next_report = 0  # claimers: which report comes next for the held job
        self.port = port
        self.conn: Conn | None = None
        self.heartbeat_raw = post(port, "/api/agents/heartbeat", self.token, self._status("printing"))
        self.claim_raw = post(port, "/api/agents/claim", self.token, self._status("idle"))

    def _status(self, state: str) -> dict[str, Any]:
        return {"printer": self.name, "state": state, "message": None, "progress": 42.0}

    def next_request(self) -> tuple[str, bytes]:
        if not self.claims:
            return "heartbeat", self.heartbeat_raw
        if self.job is None:
            return "claim", self.claim_raw
        state = ("uploading", "printing", "done")[self.next_report]
        body = {"printer": self.name, "fence": self.fence, "state": state, "progress": 0.0}
        return "report", post(self.port, f"/api/agents/jobs/{self.job}/report", self.token, body)

    def took(self, kind: str, status: int, body: bytes, stats: Stats) -> None:
        if kind == "heartbeat":
            if status != 200 or b'"job":null' in body:
                stats.error(f"heartbeat {self.name}: {status} {body[:200]!r}")
        elif kind == "claim":
            if status == 204:
                stats.empty_claims += 1
            elif status == 200:
                job = json.loads(body)
                self.job, self.fence, self.next_report = job["id"], job["fence"], 0
                stats.claimed.append(job["id"])
            else:
                stats.error(f"claim {self.name}: {status} {body[:200]!r}")
        elif status == 200:
            self.next_report += 1
            if self.next_report == 3:
                stats.done.append(self.job)  # type: ignore[arg-type]
                self.job = self.fence = None
        else:
            stats.error(f"report {self.name} job {self.job}: {status} {body[:200]!r}")


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors = 0
        self.messages: list[str] = []
        self.empty_claims = 0
        self.late = 0  # ticks sent > 100 ms after their time: the load generator fell behind
        self.slow: list[tuple[float, float]] = []  # (wall time sent, ms) of answers over 50 ms
        self.slow_claims: list[tuple[float, float]] = []  # the same for claims over 20 ms (the target)
        self.reconnects = 0
        self.claimed: list[int] = []
        self.done: list[int] = []

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < 20:
            self.messages.append(message)


async def run_agent(agent: Agent, start: float, interval: float, end: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    tick = start
    while tick < end:
        delay = tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.1:
            stats.late += 1
        if agent.conn is None or not agent.conn.open:
            if agent.conn is not None:
                stats.reconnects += 1
            try:
                agent.conn = await Conn.connect(agent.port)
            except OSError as exc:
                stats.error(f"connect {agent.name}: {exc}")
                tick += interval
                continue
        kind, raw = agent.next_request()
        sent = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
        try:
            status, body = await agent.conn.request(raw)
        except (ConnectionError, TimeoutError) as exc:
            stats.error(f"{kind} {agent.name}: {exc}")
            agent.conn.close()
        else:
            ms = (time.perf_counter() - sent) * 1000
            stats.latency[kind].append(ms)
            if ms > 50:
                stats.slow.append((time.time() - ms / 1000, ms))
            if kind == "claim" and ms > 20:
                stats.slow_claims.append((time.time() - ms / 1000, ms))
            agent.took(kind, status, body, stats)
        tick += interval


async def load_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One load process: connect its agents, say ready, wait for the start time, run."""
    loop = asyncio.get_running_loop()
    agents = [Agent(a, spec["port"]) for a in spec["agents"]]
    for i in range(0, len(agents), 100):
        conns = await asyncio.gather(*(Conn.connect(spec["port"]) for _ in agents[i : i + 100]))
        for agent, conn in zip(agents[i : i + 100], conns, strict=True):
            agent.conn = conn
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    wall_start = float(line)
    start = loop.time() + (wall_start - time.time())
    interval, total = spec["interval"], spec["total_agents"]
    end = start + spec["duration"]
    stats = Stats()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(
        *(run_agent(a, start + a.index * interval / total, interval, end, stats) for a in agents)
    )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for a in agents:
        if a.conn is not None:
            a.conn.close()
    return {
        "latency": stats.latency,
        "errors": stats.errors,
        "messages": stats.messages,
        "empty_claims": stats.empty_claims,
        "late": stats.late,
        "slow": stats.slow,
        "slow_claims": stats.slow_claims,
        "reconnects": stats.reconnects,
        "claimed": stats.claimed,
        "done": stats.done,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    }


def load_child(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(load_main(spec))
    Path(out_path).write_text(json.dumps(result))


# -- setup through the API ---------------------------------------------------------------------


def agent_tokens(port: int, admin: str, names: list[str]) -> list[str]:
    """An agent token per printer, bound to it, made with the `admin` token."""
    calls = [("/api/tokens", admin, {"name": f"agent {n}", "role": "agent", "printer": n}) for n in names]
    return [t["token"] for t in asyncio.run(api_calls(port, calls))]


async def api_calls(port: int, calls: list[tuple[str, str, dict[str, Any]]], width: int = 16) -> list[Any]:
    """POST each (path, token, body) over `width` keep-alive connections; JSON answers in order."""
    results: list[Any] = [None] * len(calls)
    todo = iter(range(len(calls)))

    async def worker() -> None:
        conn = await Conn.connect(port)
        for i in todo:
            path, token, body = calls[i]
            status, data = await conn.request(post(port, path, token, body))
            if status not in (200, 201):
                raise SystemExit(f"setup: POST {path} answered {status}: {data[:300]!r}")
            results[i] = json.loads(data)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(width)))
    return results


# -- the harness -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url_port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the coordinator exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", url_port), timeout=1) as s:
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the coordinator did not answer within {timeout:.0f} s")


@contextmanager
def redis_server() -> Iterator[str]:
    """`farm server` wants a broker (it re-sends unfinished work on start); nothing is sent to it here."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: run scripts/setup")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """A process and its children (`farm server --workers N` forks N uvicorn processes)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(k) for k in kids.read_text().split())] if kids.exists() else [pid]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # it ended
            total += cpu_seconds(pid)
    return total


def postgres_pids(db_url: str | None) -> list[int]:
    """The PostgreSQL server's processes (postmaster and its children), to count their CPU."""
    if db_url is None:
        return []
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        data = conn.execute(sa.text("SHOW data_directory")).scalar_one()
    engine.dispose()
    master = int(Path(data, "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass
    return [master, *children]


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine spent busy (for the noise context)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def queue_jobs(db_url: str, jobs: int) -> None:
    """Ready jobs as the pipeline makes them: mesh builds of 50 copies, sliced for every model.

    One build in 10 is PETG (no printer here has it loaded: claims must skip it) and one in 10
    has a higher priority.
    """
    from sqlalchemy import text
    from sqlmodel import Session, select

    from farm.coordinator import pipeline
    from farm.coordinator.db import make_engine
    from farm.coordinator.models import Slice

    engine = make_engine(db_url)
    with Session(engine) as session:
        for b in range(math.ceil(jobs / COPIES)):
            build, _jobs, _out = pipeline.create_build(
                session,
                source_name=f"part{b}.stl",
                source_sha256=f"{b:064x}",
                entry=None,
                params={},
                copies=min(COPIES, jobs - COPIES * b),
                material="PETG" if b % 10 == 3 else "PLA",
                quality="standard",
                color=None,
                printer_model=None,
                priority=1 if b % 10 == 7 else 0,
            )
            for sl in session.exec(select(Slice).where(Slice.build_id == build.id)).all():
                pipeline.slice_finished(
                    session, sl, error=None, gcode_sha256="1" * 64, meta={"print_time_s": 60}, seconds=1
                )
            if b % 20 == 19:
                session.commit()
        session.commit()
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk load: without row counts the planner
        # takes the claim query for a tiny table (a nested loop over every slice).
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()


def db_facts(db_url: str) -> dict[str, Any]:
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from farm.coordinator.db import make_engine
    from farm.coordinator.models import Job, Printer
    from farm.core.states import JobState

    engine = make_engine(db_url)
    with Session(engine) as session:
        by_state = dict(session.exec(select(Job.state, func.count()).group_by(Job.state)).all())
        done = set(session.exec(select(Job.id).where(Job.state == JobState.DONE)).all())
        bound = session.exec(select(Printer.job_id).where(col(Printer.job_id).is_not(None))).all()
    engine.dispose()
    return {"by_state": {str(k): v for k, v in by_state.items()}, "done": done, "bound": list(bound)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def run_db(
    kind: str, db_url: str | None, redis_url: str, args: argparse.Namespace, cad: CadLoad | None = None
) -> dict[str, Any]:
    n = args.agents
    claimers = round(n * args.claim_fraction)
    names = [f"p{i:05d}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-coord-") as tmp_name:
        tmp = Path(tmp_name)
        url = db_url or f"sqlite:///{tmp / 'farm.coordinator.db'}"
        t0 = time.perf_counter()
        port = free_port()
        env = {
            **os.environ,
            "FARM_DATA_DIR": str(tmp),
            "FARM_REDIS_URL": redis_url,
            "FARM_DATABASE_URL": url,
            "PYTHONUNBUFFERED": "1",
        }
        log = tmp / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [
                    *(sys.executable, "-m", "farm", "server", "--host", "127.0.0.1", "--port", str(port)),
                    *(("--workers", str(args.pg_workers)) if db_url else ()),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            wait_for(port, server, log)
            # An agent token per printer, bound to it, from the admin token the server wrote.
            tokens = agent_tokens(port, (tmp / "admin.token").read_text().strip(), names)
            # Register through the API, then queue the jobs (so builds are sliced for these models).
            register = [
                (
                    "/api/agents/register",
                    tok,
                    {
                        "printer": nm,
                        "model": MODELS[i % 3],
                        "protocol": "prusalink",
                        "agent_version": "bench",
                        "auto_eject": True,
                    },
                )
                for i, (nm, tok) in enumerate(zip(names, tokens, strict=True))
            ]
            asyncio.run(api_calls(port, register))
            holders = n - claimers
            print(f"{kind}: {n} agents registered ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            queue_jobs(url, args.jobs + holders)
            print(
                f"{kind}: {args.jobs + holders} jobs queued ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
            # Holders: claim one job each and bring it to printing, through the API.
            held = [i for i in range(n) if not is_claimer(i, n, claimers)]
            status = {"state": "idle", "message": None, "progress": None}
            claims = asyncio.run(
                api_calls(
                    port, [("/api/agents/claim", tokens[i], {"printer": names[i], **status}) for i in held]
                )
            )
            for state in ("uploading", "printing"):
                asyncio.run(
                    api_calls(
                        port,
                        [
                            (
                                f"/api/agents/jobs/{c['id']}/report",
                                tokens[i],
                                {"printer": names[i], "fence": c["fence"], "state": state},
                            )
                            for i, c in zip(held, claims, strict=True)
                        ],
                    )
                )
            jobs_of = {i: c for i, c in zip(held, claims, strict=True)}
            before = db_facts(url)
            setup_s = time.perf_counter() - t0

            agents = [
                {
                    "name": names[i],
                    "token": tokens[i],
                    "index": i,
                    "claims": i not in jobs_of,
                    "job": jobs_of[i]["id"] if i in jobs_of else None,
                    "fence": jobs_of[i]["fence"] if i in jobs_of else None,
                }
                for i in range(n)
            ]
            result = run_load(port, server.pid, postgres_pids(db_url), agents, args, tmp, cad)
            after = db_facts(url)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return summarize(kind, result, before, after, setup_s, args)


def is_claimer(i: int, n: int, claimers: int) -> bool:
    """Claimers spread evenly among the agents (so their ticks spread over the interval too)."""
    return claimers > 0 and (i * claimers) // n != ((i + 1) * claimers) // n


def run_load(
    port: int,
    server_pid: int,
    db_pids: list[int],
    agents: list[dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
    cad: CadLoad | None = None,
) -> dict[str, Any]:
    procs = []
    for p in range(args.procs):
        spec = {
            "port": port,
            "agents": agents[p :: args.procs],
            "interval": args.interval,
            "duration": args.duration,
            "total_agents": len(agents),
        }
        (tmp / f"load{p}.json").write_text(json.dumps(spec))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--load-child",
                    str(tmp / f"load{p}.json"),
                    str(tmp / f"out{p}.json"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a load process failed to connect its agents")
    start = time.time() + 0.5
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{start}\n")
        proc.stdin.flush()
    time.sleep(max(0.0, start - time.time()))
    servers = with_children(server_pid)
    server0, busy0, wall0 = cpu_of(servers), machine_busy_seconds(), time.perf_counter()
    db0 = cpu_of(db_pids)
    cad0, built0 = (cad.cpu_s(), cad.finished()) if cad else (0.0, 0)
    time.sleep(args.duration)
    server1, busy1, wall1 = cpu_of(servers), machine_busy_seconds(), time.perf_counter()
    db1 = cpu_of(db_pids)
    cad1, built1 = (cad.cpu_s(), cad.finished()) if cad else (0.0, 0)
    for proc in procs:
        if proc.wait(TIMEOUT_S + 30) != 0:
            raise SystemExit("a load process failed")
    outs = [json.loads((tmp / f"out{p}.json").read_text()) for p in range(args.procs)]
    merged: dict[str, Any] = {
        "latency": {k: [v for o in outs for v in o["latency"][k]] for k in KINDS},
        "wall_s": wall1 - wall0,
        "start": start,
        "server_cpu_s": server1 - server0,
        "db_cpu_s": db1 - db0,
        "machine_busy_s": busy1 - busy0,
        "cad_cpu_s": cad1 - cad0,
        "cad_built": built1 - built0,
    }
    for key in ("errors", "empty_claims", "late", "reconnects", "cpu_s"):
        merged[key] = sum(o[key] for o in outs)
    for key in ("messages", "claimed", "done", "slow", "slow_claims"):
        merged[key] = [v for o in outs for v in o[key]]
    return merged


def summarize(
    kind: str,
    r: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    setup_s: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    everything = [v for k in KINDS for v in r["latency"][k]]
    messages = list(r["messages"])
    errors = r["errors"]
    # The database must agree with what the agents were told.
    if not set(r["done"]) <= after["done"]:
        errors += 1
        messages.append(f"jobs reported done but not done in the database: {set(r['done']) - after['done']}")
    if len(set(r["claimed"])) != len(r["claimed"]):
        errors += 1
        messages.append("a job was handed out twice")
    if len(set(after["bound"])) != len(after["bound"]):
        errors += 1
        messages.append("a job is bound to two printers")
    wall = r["wall_s"]
    cores = os.cpu_count() or 1
    return {
        "agents": args.agents,
        "p50_ms": round(percentile(everything, 50), 2),
        "p99_ms": round(percentile(everything, 99), 2),
        "errors": errors,
        "claim_p99_ms": round(percentile(r["latency"]["claim"], 99), 2),
        "req_per_s": round(len(everything) / args.duration, 1),
        **{f"{k}_p50_ms": round(percentile(r["latency"][k], 50), 2) for k in KINDS},
        **{f"{k}_p99_ms": round(percentile(r["latency"][k], 99), 2) for k in KINDS},
        "max_ms": round(max(everything, default=0.0), 1),
        "requests": {k: len(r["latency"][k]) for k in KINDS},
        "empty_claims": r["empty_claims"],
        "late_ticks": r["late"],
        "reconnects": r["reconnects"],
        "queued_before": before["by_state"].get("ready", 0),
        "queued_after": after["by_state"].get("ready", 0),
        "server_cpu": round(r["server_cpu_s"] / wall, 3),  # cores
        "load_cpu": round(r["cpu_s"] / wall, 3),
        "db_cpu": round(r["db_cpu_s"] / wall, 3),  # the PostgreSQL server's processes
        "cad_cpu": round(r["cad_cpu_s"] / wall, 3),  # --with-cad-load: its workers, builds, slicers
        "cad_builds_per_min": round(r["cad_built"] * 60 / wall, 1),
        "other_cpu": round(
            max(0.0, r["machine_busy_s"] - r["server_cpu_s"] - r["db_cpu_s"] - r["cpu_s"] - r["cad_cpu_s"])
            / wall,
            3,
        ),
        "cores": cores,
        "setup_s": round(setup_s, 1),
        "messages": messages[:10],
        # When the slow answers (over 50 ms) were sent, by second of the run: stalls show as runs.
        "slow_by_second": dict(
            sorted(Counter(int(t - r["start"]) for t, _ in r["slow"]).items())  # type: ignore[arg-type]
        ),
        "slow_claims_by_second": dict(
            sorted(Counter(int(t - r["start"]) for t, _ in r["slow_claims"]).items())  # type: ignore[arg-type]
        ),
    }


def print_table(kind: str, s: dict[str, Any]) -> None:
    print(
        f"\n{kind}: {s['agents']} agents, {s['queued_before']} queued jobs "
        f"({s['queued_after']} after), setup {s['setup_s']} s"
    )
    print(f"  {'request':<10}{'count':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for k in KINDS:
        print(f"  {k:<10}{s['requests'][k]:>8}{s[f'{k}_p50_ms']:>9.2f}{s[f'{k}_p99_ms']:>9.2f}")
    total = sum(s["requests"].values())
    print(f"  {'all':<10}{total:>8}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}   max {s['max_ms']} ms")
    print(
        f"  {s['req_per_s']} req/s, errors {s['errors']}, empty claims {s['empty_claims']}, "
        f"late ticks {s['late_ticks']}, reconnects {s['reconnects']}"
    )
    print(
        f"  CPU (cores of {s['cores']}): coordinator {s['server_cpu']}, database server {s['db_cpu']}, "
        f"load generator {s['load_cpu']}, CAD load {s['cad_cpu']}, "
        f"everything else on the machine {s['other_cpu']}"
    )
    if s["cad_cpu"]:
        print(f"  CAD load: {s['cad_builds_per_min']} builds finished a minute (CAD and slicing)")
    if s["slow_by_second"]:
        slow = ", ".join(f"{sec}s: {n}" for sec, n in s["slow_by_second"].items())
        print(f"  answers over 50 ms, by second of the run they were sent in: {slow}")
    if s["slow_claims_by_second"]:
        slow = ", ".join(f"{sec}s: {n}" for sec, n in s["slow_claims_by_second"].items())
        print(f"  claims over 20 ms, by second: {slow}")
    for m in s["messages"]:
        print(f"  ! {m}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10_000, help="ready jobs in the queue at the start")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per database")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between an agent's requests")
    parser.add_argument(
        "--claim-fraction", type=float, default=0.1, help="agents that claim instead of print"
    )
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument(
        "--with-cad-load",
        choices=("batch", "normal"),
        nargs="?",
        const="batch",
        help="meanwhile, `farm worker`s build and slice heavy parts: at their batch priority "
        "(FARM_BATCH_*, the default) or at normal priority (nice 0), to compare",
    )
    parser.add_argument("--cad-workers", type=int, default=2, help="--with-cad-load: `farm worker` processes")
    parser.add_argument(
        "--cad-load-dir",
        help="--with-cad-load: where its farm keeps data and temporary files (default: TMPDIR)",
    )
    parser.add_argument(
        "--pg-workers", type=int, default=2, help="`farm server --workers` for PostgreSQL (SQLite: 1)"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.agents + 512
    if soft < need:  # the server and the load generator each hold one socket per agent
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        cad = None
        if args.with_cad_load:
            from bench.cad_load import cad_load

            cad = stack.enter_context(
                cad_load(redis_url, args.cad_workers, priority=args.with_cad_load, where=args.cad_load_dir)
            )
        for kind in args.db.split(","):
            if kind == "sqlite":
                results[kind] = run_db(kind, None, redis_url, args, cad)
            elif kind == "postgresql":
                from tests.pgserver import throwaway_postgres

                with throwaway_postgres() as pg_url:
                    results[kind] = run_db(kind, pg_url, redis_url, args, cad)
            else:
                raise SystemExit(f"--db: unknown database '{kind}' (sqlite, postgresql)")
            print_table(kind, results[kind])
    worst = {
        "agents": args.agents,
        "p50_ms": max(r["p50_ms"] for r in results.values()),
        "p99_ms": max(r["p99_ms"] for r in results.values()),
        "errors": sum(r["errors"] for r in results.values()),
        "claim_p99_ms": max(r["claim_p99_ms"] for r in results.values()),
        "req_per_s": min(r["req_per_s"] for r in results.values()),
    }
    met = (
        worst["p99_ms"] <= TARGETS["p99_ms"]
        and worst["claim_p99_ms"] <= TARGETS["claim_p99_ms"]
        and worst["errors"] <= TARGETS["errors"]
    )
    print(
        f"\ntargets: p99_ms <= {TARGETS['p99_ms']:.0f}, claim_p99_ms <= {TARGETS['claim_p99_ms']:.0f}, "
        "errors 0; top-level figures are the worse database's"
    )
    keep = (
        "p50_ms",
        "p99_ms",
        "errors",
        "claim_p99_ms",
        "req_per_s",
        "heartbeat_p99_ms",
        "report_p99_ms",
        "queued_before",
        "queued_after",
        "server_cpu",
        "db_cpu",
        "load_cpu",
        "cad_cpu",
        "cad_builds_per_min",
        "other_cpu",
    )
    detail = {k: {f: r[f] for f in keep} for k, r in results.items()}
    print(json.dumps({**worst, "cad_load": args.with_cad_load, **detail, "targets_met": met}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--load-child":
        load_child(sys.argv[2], sys.argv[3])
    else:
        main()
