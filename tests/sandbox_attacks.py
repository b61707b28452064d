"""Hostile designs, run through a real CadRunner by `python -m tests.sandbox_attacks` (as any user).

The harness plays the worker: it holds a secret token in its environment and in a data dir, listens
on two TCP ports and a UDP "DNS server" on loopback, then builds each attack followed by a plain box.
It prints one JSON line: each attack's outcome, what the listeners received, which files appeared
outside the builds, and which of the build's processes outlived it. tests/test_sandbox.py judges it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SECRET = "s3cret-admin-token-7d41c9"
WORKER_SECRET = "s3cret-worker-token-a0b2"
MARKER = "other-build-private-1f3e"
LINGER_NAME = f"pf-linger-{os.getpid() % 100000}"  # what session_of_its_own's process calls itself
GOOD = "from build123d import Box\n\nresult = Box(10, 10, 10)\n"

# Each attack ends in `leak(found)`: it fails the build with what it learned, or, having learned
# nothing, builds a box. {names} are filled in by the harness.
PRELUDE = """\
import os, sys
from build123d import Box
def leak(found):
    found = [f for f in found if f]
    if found:
        raise RuntimeError("LEAKED " + repr(found))
    return Box(1, 1, 1)
def attempt(fn):
    try:
        return fn()
    except BaseException as error:
        return None
"""
ATTACKS: dict[str, str] = {
    "glob_admin_token": """\
        found = []
        for top, dirs, files in os.walk("/", onerror=None):
            if top in ("/proc", "/sys", "/usr", "/dev"):
                dirs[:] = []
                continue
            skip = (".venv", "site-packages", ".git", "node_modules", ".mirror")
            dirs[:] = [d for d in dirs if d not in skip]
            if "admin.token" in files:
                found.append(attempt(lambda: open(os.path.join(top, "admin.token")).read()))
        found.append(attempt(lambda: open({token_path!r}).read()))
        result = leak(found)
        """,
    "proc_environ": """\
        found = [attempt(lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read()),
                 attempt(lambda: open("/proc/{worker_pid}/environ", "rb").read()),
                 os.environ.get("FARM_TOKEN")]
        for pid in attempt(lambda: os.listdir("/proc")) or []:
            data = attempt(lambda: open(f"/proc/{{pid}}/environ", "rb").read()) or b""
            if b"FARM_TOKEN" in data or b"s3cret" in data:
                found.append(data)
        result = leak(found)
        """,
    "etc_shadow": """\
        result = leak([attempt(lambda: open("/etc/shadow").read())])
        """,
    "connect_coordinator": """\
        import socket
        result = leak([attempt(lambda: socket.create_connection(("127.0.0.1", {coordinator_port}), 2))])
        """,
    "connect_other_port": """\
        import socket
        result = leak([attempt(lambda: socket.create_connection(("127.0.0.1", {other_port}), 2)),
                       attempt(lambda: socket.create_connection(("::1", {other_port}), 2))])
        """,
    "udp_dns": """\
        import socket
        def send(host):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01",
                     (host, {dns_port} if host == "127.0.0.1" else 53))
            return "sent"
        result = leak([attempt(lambda: send("127.0.0.1")), attempt(lambda: send("8.8.8.8")),
                       attempt(lambda: socket.getaddrinfo("example.com", 80))])
        """,
    "write_outside": """\
        def write(path):
            with open(path, "w") as f:
                f.write("pwned")
        for path in ({outside!r}, {data_file!r}, "/tmp/pwned-by-a-build", os.path.expanduser("~/pwned")):
            attempt(lambda: write(path))
        result = leak([])
        """,
    "symlink_out": """\
        import tempfile
        link = os.path.join(tempfile.gettempdir(), "link")
        attempt(lambda: os.symlink({token_path!r}, link))
        attempt(lambda: os.symlink("/", os.path.join(tempfile.gettempdir(), "root")))
        via_root = os.path.join(tempfile.gettempdir(), "root", {token_rel!r})
        result = leak([attempt(lambda: open(link).read()), attempt(lambda: open(via_root).read())])
        """,
    "other_build_folder": """\
        import glob, time
        found = []
        deadline = time.time() + 6
        while time.time() < deadline and not found:
            for pattern in ("/tmp/cad-build-*/project/*", "/tmp/cad-build-*/src/*", {victim_glob!r}):
                for path in glob.glob(pattern, recursive=True):
                    text = attempt(lambda: open(path).read()) or ""
                    if {marker_head!r} + {marker_tail!r} in text:  # split: this file must not match
                        found.append(text)
            time.sleep(0.2)
        result = leak(found)
        """,
    "kill_parent": """\
        import signal
        for pid in (os.getppid(), {worker_pid}):
            attempt(lambda: os.kill(pid, signal.SIGKILL))
        attempt(lambda: os.killpg(os.getpgid({worker_pid}), signal.SIGKILL))
        attempt(lambda: os.kill(-1, signal.SIGKILL))
        result = leak([])
        """,
    "fork_bomb": """\
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
    "allocate_12gb": """\
        blob = bytearray(12 * 1024**3)
        result = leak([])
        """,
    "loop_forever": """\
        while True:
            pass
        """,
    "segfault": """\
        import ctypes
        ctypes.string_at(0)
        """,
    "inherited_fds": """\
        found = []
        for fd in range(3, 256):
            target = attempt(lambda: os.readlink(f"/proc/self/fd/{{fd}}")) or ""
            if target.endswith(".faulthandler"):
                continue  # the build's own crash trace
            if attempt(lambda: os.write(fd, b"REGISTER:/victim-shm:shared_memory\\n")):
                found.append(f"wrote to fd {{fd}} ({{target}})")
        result = leak(found)
        """,
    "shared_memory": """\
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        found = []
        if attempt(lambda: os.memfd_create("hoard")) is not None:
            found.append("memfd")
        if libc.shmget(0, 64 << 20, 0o1600) >= 0:  # IPC_PRIVATE, IPC_CREAT
            found.append("shmget")
        result = leak(found)
        """,
    "deep_folders": """\
        import glob
        for out in glob.glob("/tmp/cad-build-*/out") + glob.glob(os.path.join(os.getcwd(), "..", "out")):
            path = out
            for _ in range(3000):
                path = os.path.join(path, "d")
                if attempt(lambda: os.mkdir(path)) is False:
                    break
        result = leak([])
        """,
    "forged_result": """\
        import glob, json
        for out in glob.glob("/tmp/cad-build-*/out"):
            attempt(lambda: open(os.path.join(out, "result.json"), "w").write(json.dumps({{"ok": True}})))
        os._exit(0)
        """,
    "new_syscalls": """\
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        found = []
        for number in (467, 470, 500):  # open_tree_attr, and calls newer than the filter
            refused = libc.syscall(number, -1, 0, 0, 0, 0) != 0
            if not refused or ctypes.get_errno() not in (errno.EPERM, errno.ENOSYS):
                found.append(f"syscall {{number}} reached the kernel: errno {{ctypes.get_errno()}}")
        result = leak(found)
        """,
    "session_of_its_own": """\
        import ctypes, time
        if os.fork() == 0:  # a grandchild in a session of its own: out of the build's process group
            os.setsid()
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, {linger_name!r}.encode(), 0, 0, 0)  # PR_SET_NAME
                time.sleep(300)
            os._exit(0)
        time.sleep(0.5)
        result = leak([])
        """,
    "session_then_hang": """\
        import ctypes, time
        if os.fork() == 0:  # the same, then the build outlives its wall clock: the runner stops it
            os.setsid()
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, {linger_name!r}.encode(), 0, 0, 0)
                time.sleep(300)
            os._exit(0)
        while True:
            time.sleep(1)
        """,
    "ptrace_worker": """\
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(16, {worker_pid}, 0, 0)  # PTRACE_ATTACH
        result = leak(["attached"] if rc == 0 else [])
        """,
}
VICTIM = f"""\
import time
SECRET = "{MARKER}"
time.sleep(5)
from build123d import Box
result = Box(2, 2, 2)
"""


class Listener:
    """Counts whatever reaches a loopback TCP port or UDP port."""

    def __init__(self, kind: int) -> None:
        self.hits = 0
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        threading.Thread(target=self._serve, args=(kind,), daemon=True).start()

    def _serve(self, kind: int) -> None:
        while True:
            try:
                if kind == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.close()
                else:
                    self.sock.recvfrom(4096)
            except OSError:
                return
            self.hits += 1


def run(names: list[str], sandboxed: bool = True) -> dict[str, Any]:
    from workers.cad_runner import CadRunner
    from workers.cad_types import CadError, CadLimits, CadRequest
    from workers.sandbox import Policy

    os.environ["FARM_TOKEN"] = WORKER_SECRET  # what a worker holds; its builds must not
    with contextlib.suppress(OSError):
        Path("/tmp/pwned-by-a-build").unlink()  # left by an interrupted control run
    home = Path(tempfile.mkdtemp(prefix="attack-harness-"))
    data = home / "data"
    data.mkdir(mode=0o700)
    token = data / "admin.token"
    token.write_text(SECRET)
    token.chmod(0o600)
    coordinator, other, dns = (
        Listener(socket.SOCK_STREAM),
        Listener(socket.SOCK_STREAM),
        Listener(socket.SOCK_DGRAM),
    )
    outside = home / "outside.txt"
    values = {
        "token_path": str(token),
        "token_rel": str(token).lstrip("/"),
        "worker_pid": os.getpid(),
        "coordinator_port": coordinator.port,
        "other_port": other.port,
        "dns_port": dns.port,
        "outside": str(outside),
        "data_file": str(data / "pwned"),
        "marker_head": MARKER[:8],
        "marker_tail": MARKER[8:],
        "victim_glob": str(home / "**" / "victim.py"),
        "linger_name": LINGER_NAME,
    }
    limits = {
        "fork_bomb": CadLimits(wall_s=6),
        "loop_forever": CadLimits(wall_s=4, cpu_s=2),
        "session_then_hang": CadLimits(wall_s=4),
        "other_build_folder": CadLimits(wall_s=30),
    }
    # FARM_CAD_SANDBOX_DISABLE forces layers off, as a host without them would be (Docker: namespaces).
    disabled = tuple(n for n in os.environ.get("FARM_CAD_SANDBOX_DISABLE", "").split(",") if n)
    runner = CadRunner(policy=Policy(enabled=sandboxed, disabled=disabled))
    _record_build_pids(runner)
    mine = f"/tmp/cad-build-{os.getpid()}-*"  # this harness's builds' folders, not another worker's
    folders_before = set(glob.glob(mine))
    results: dict[str, Any] = {}

    def build(name: str, source: str, project_dir: Path) -> dict[str, Any]:
        project_dir.mkdir(parents=True, exist_ok=True)
        script = project_dir / f"{name}.py"
        script.write_text(source)
        started = time.monotonic()
        try:
            runner.build(
                CadRequest(source=script, outdir=project_dir / "out"), limits.get(name, CadLimits(wall_s=60))
            )
            outcome: dict[str, Any] = {"built": True, "kind": None, "message": ""}
        except CadError as error:
            outcome = {"built": False, "kind": error.kind, "message": error.message}
        log = project_dir / "out" / "build.log"
        outcome["log"] = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        outcome["seconds"] = round(time.monotonic() - started, 2)
        return outcome

    try:
        runner.start()
        for name in names:
            source = PRELUDE + textwrap.dedent(ATTACKS[name]).format(**values)
            if name == "other_build_folder":  # a victim builds at the same time, with a secret in its files
                with ThreadPoolExecutor(2) as pool:
                    victim = pool.submit(build, "victim", VICTIM, home / "victim")
                    time.sleep(1.0)
                    outcome = build(name, source, home / name)
                    outcome["victim"] = victim.result()
            else:
                outcome = build(name, source, home / name)
            outcome["next"] = build("good", GOOD, home / f"{name}-next")
            outcome["worker_alive"] = True  # we are still here to say so
            results[name] = outcome
    finally:
        runner.close()
    leftovers = [str(p) for p in (outside, data / "pwned", Path("/tmp/pwned-by-a-build")) if p.exists()]
    build_folders = sorted(set(glob.glob(mine)) - folders_before)
    with contextlib.suppress(OSError):
        Path("/tmp/pwned-by-a-build").unlink()  # the unsandboxed control run writes it
    return {
        "stray": _stray_build_processes(),
        "build_folders_left": build_folders,
        "results": results,
        "hits": {"coordinator": coordinator.hits, "other": other.hits, "dns": dns.hits},
        "files_outside": leftovers,
        "secrets": [SECRET, WORKER_SECRET, MARKER],
        "uid": os.getuid(),
        "layers": [layer.name for layer in runner.sandbox.layers if layer.active] if runner.sandbox else [],
    }


BUILD_PIDS: list[int] = []  # this harness's build processes (as root, build uid = UID_BASE + pid)


def _record_build_pids(runner: Any) -> None:
    start = runner._run

    def run(job: dict[str, Any], limits: Any) -> Any:
        from workers import cad_runner

        original = cad_runner._start_process

        def record(proc: Any) -> None:
            original(proc)
            BUILD_PIDS.append(proc.pid)

        cad_runner._start_process = record  # builds run one at a time but for the victim's pair
        try:
            return start(job, limits)
        finally:
            cad_runner._start_process = original

    runner._run = run


def _stray_build_processes(grace_s: float = 5.0) -> list[int]:
    """Processes still running under one of this harness's builds' uids (as root, each build runs
    as a uid of its own), or called what session_of_its_own's process calls itself (whatever uid:
    as an unprivileged worker, builds share its uid). Other sessions' builds are none of these.

    A PID namespace dies with its init, but its other processes take a moment to go: `grace_s`.
    """
    deadline = time.monotonic() + grace_s
    while (stray := _build_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in stray:  # reported; not left to run on
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return stray


def _build_processes() -> list[int]:
    from workers.sandbox import UID_BASE

    since = _start_time(os.getpid())
    uids = {UID_BASE + pid for pid in BUILD_PIDS}
    stray = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            uid = int(fields["Uid"].split()[0])
            pid = int(status.parent.name)
            alive = fields["State"].split()[0] not in ("Z", "X")
            ours = uid in uids or fields["Name"].strip() == LINGER_NAME
            if alive and ours and _start_time(pid) >= since:
                stray.append(pid)
    return stray


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def main() -> None:
    unsandboxed = "--unsandboxed" in sys.argv  # the control: the same attacks must then succeed
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(ATTACKS)
    report = run(names, sandboxed=not unsandboxed)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
