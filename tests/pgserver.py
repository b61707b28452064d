"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temp dir, a free loopback port.

Debian's `postgresql` package is installed with apt-get when it is missing (as root; otherwise the
error says what to run). PostgreSQL refuses to run as root, so as root the cluster runs as the
package's `postgres` user. Everything lives in the temp dir and is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be installed or started here; the message says why."""


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def install() -> Path:
    """The directory of initdb/pg_ctl, installing Debian's postgresql package if needed."""
    if (bindir := _bindir()) is not None:
        return bindir
    if os.geteuid() != 0:
        raise PostgresUnavailable("PostgreSQL is not installed: run `apt-get install postgresql` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    if (bindir := _bindir()) is None:
        raise PostgresUnavailable("apt-get installed postgresql but initdb is nowhere to be found")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster: its URL, and what a test needs to crash and restart it."""

    url: str
    data: Path
    pg_ctl: list[str]
    options: str
    run_as: dict[str, Any]

    def start(self) -> None:
        log = self.data.parent / "server.log"
        _run([*self.pg_ctl, "-w", "-t", "60", "-o", self.options, "start"], self.run_as, log)

    def power_cut(self) -> None:
        """What a power cut does to the database: whatever WAL is only in PostgreSQL's memory is
        lost. The WAL writer is stopped first (left alone it hands commits that do not wait for the
        disk to the OS within milliseconds, where a killed server would not lose them), then
        every process of the cluster is killed."""
        lock = self.data / "postmaster.pid"
        postmaster = int(lock.read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)  # no new backends from here on
        kids = [int(k) for k in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()]
        for pid in kids:
            if "walwriter" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGSTOP)
        for pid in (postmaster, *kids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in (postmaster, *kids):
            while _state(pid) not in ("gone", "Z"):
                time.sleep(0.01)
        # As after a reboot: no process holds the lock files (a zombie's PID would look alive).
        for stale in (lock, *self.data.parent.glob(".s.PGSQL.*.lock")):
            stale.unlink()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@contextlib.contextmanager
def throwaway_postgres(settings: dict[str, str] | None = None) -> Iterator[str]:
    """Start a fresh cluster; yield its SQLAlchemy URL (database `postgres`, user `farm`, no password).

    `settings` are extra server settings (`-c name=value`), e.g. for a benchmark's tuning.
    """
    with throwaway_cluster(settings) as cluster:
        yield cluster.url


@contextlib.contextmanager
def throwaway_cluster(settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """throwaway_postgres, yielding the cluster itself."""
    bindir = install()
    run_as: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="farm-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` user") from None
            os.chown(tmp, user.pw_uid, user.pw_gid)
            run_as = {"user": user.pw_uid, "group": user.pw_gid}
        data = tmp / "data"
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "farm", "-A", "trust", "-E", "UTF8"]
        _run([*initdb, "--locale=C", "--no-sync"], run_as)
        port = _free_port()
        options = [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-k {tmp}", "-c timezone=UTC"]
        options += [f"-c {k}={v}" for k, v in (settings or {}).items()]
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log")]
        url = f"postgresql+psycopg://farm@127.0.0.1:{port}/postgres"
        cluster = Cluster(url, data, pg_ctl, " ".join(options), run_as)
        cluster.start()
        try:
            yield cluster
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, check=False, **run_as)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(argv: list[str], run_as: dict[str, Any], log: Path | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/", **run_as)
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        if log is not None and log.exists():
            detail += "\n" + log.read_text()[-1000:]
        raise PostgresUnavailable(f"{Path(argv[0]).name} failed ({done.returncode}): {detail}")
