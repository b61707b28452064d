"""The files one job passes through, measured: `python scripts/job_path.py [--json] [--root DIR]`.

Starts `farm up` with one simulated PrusaLink MK4S in a scratch folder, every Python process of it
(coordinator, workers, agent, and the `farm submit` that follows; not `farm up` itself, which only
starts and stops them, nor the emulated printer) under a profiler hook that notes each project file
in which a function runs. The notes start when the job is submitted and stop when
the printer has the G-code and prints it (the agent's upload), so they hold the path of that one job:
the CLI, the coordinator's routes and pipeline, the CAD and slicing workers, the agent and its
driver, and what the coordinator does as the job moves (events, hooks, metrics). Functions run while
a module is imported are not counted (that is starting up, not the job's path). The CAD
child runs in the sandbox with a scrubbed environment and is not traced; the files it runs are
listed from workers/cad_cache.py's EXPORTER (the files whose bytes make its meshes).

`--root` measures another checkout of printfarm (e.g. a `git worktree` of an older commit) with
this venv: its folder goes first on PYTHONPATH. Issue #16 counted 38 files (20 farm/, 12 workers/,
6 printers/) by hand before the redesign.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "workers", "printers")

# Loaded by every Python process started with PYTHONPATH=<this folder>. Cheap until the mark
# file appears: a thread looks for it twice a second, then the hook writes each new file once.
SITECUSTOMIZE = """
import os, sys, threading, time
_out = os.environ.get("JOB_PATH_OUT")
if _out and sys.argv[1:2] not in (["up"], ["emulate"]):  # the supervisor and the printer
    _roots = tuple(os.environ["JOB_PATH_ROOTS"].split(os.pathsep))
    _mark = os.environ["JOB_PATH_MARK"]
    _seen = set()
    _state = {"on": os.path.exists(_mark)}
    def _watch():
        while not _state["on"]:
            time.sleep(0.5)
            _state["on"] = os.path.exists(_mark)
    def _hook(frame, event, arg):
        if event != "call" or not _state["on"]:
            return
        code = frame.f_code
        name = code.co_filename
        if name in _seen or code.co_name == "<module>" or not name.startswith(_roots):
            return
        caller = frame.f_back
        while caller is not None:  # run while importing: not the job's path
            if caller.f_code.co_filename.startswith("<frozen importlib"):
                return
            caller = caller.f_back
        _seen.add(name)
        try:  # the sandboxed CAD child sees no notes folder: it stays untraced
            with open(os.path.join(_out, f"{os.getpid()}-{id(_seen)}.txt"), "a") as f:
                f.write(name + "\\n")
        except OSError:
            sys.setprofile(None)
    threading.Thread(target=_watch, daemon=True).start()
    sys.setprofile(_hook)
    threading.setprofile(_hook)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(root: Path = ROOT) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="job-path-") as tmp:
        scratch = Path(tmp)
        site, notes, data = scratch / "site", scratch / "notes", scratch / "data"
        for folder in (site, notes, data):
            folder.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        mark, port = scratch / "mark", free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(site), str(root))),
            "JOB_PATH_OUT": str(notes),
            "JOB_PATH_MARK": str(mark),
            "JOB_PATH_ROOTS": os.pathsep.join(str(root / p) + os.sep for p in PACKAGES),
            "FARM_DATA_DIR": str(data),
            "FARM_URL": f"http://127.0.0.1:{port}",
        }
        farm = str(Path(sys.executable).with_name("farm"))
        cmd = [farm, "up", "--sim", "prusalink:MK4S=1", "--port", str(port), "--data-dir", str(data)]
        log = (scratch / "up.log").open("w")
        up = subprocess.Popen(cmd, env=env, cwd=scratch, stdout=log, stderr=subprocess.STDOUT)
        try:
            token = _wait_ready(port, data)
            mark.touch()
            time.sleep(1.0)  # every process's watcher has seen the mark
            subprocess.run(
                [farm, "submit", str(root / "examples" / "bracket.py"), "--printer-model", "MK4S"],
                env={**env, "FARM_TOKEN": token},
                cwd=scratch,  # `python -m farm` children put their folder first on sys.path
                check=True,
                capture_output=True,
                timeout=300,
            )
            _wait_printing(port, token)
        except BaseException:
            print((scratch / "up.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
        traced = {line for f in notes.glob("*.txt") for line in f.read_text().splitlines()}
    files = sorted(Path(p).relative_to(root).as_posix() for p in traced)
    files = [f for f in files if not f.startswith("printers/emulators/")]  # the printer itself
    child = _cad_child_files(root, env)
    every = sorted(set(files) | set(child))
    return {
        "files": len(every),
        "by_package": {p: sum(f.startswith(p + "/") for f in every) for p in PACKAGES},
        "folders": len({str(Path(f).parent) for f in every}),
        "traced": files,
        "cad_child": child,
    }


def _cad_child_files(root: Path, env: dict[str, str]) -> list[str]:
    """The files the sandboxed CAD child runs (it is untraced): cad_cache's EXPORTER in `root`."""
    probe = "from workers.cad_cache import EXPORTER; print('\\n'.join(str(p) for p in EXPORTER))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "PYTHONPATH": str(root)},
        cwd=root,
        capture_output=True,
        text=True,
    )
    return sorted(Path(p).resolve().relative_to(root).as_posix() for p in out.stdout.split())


def _wait_ready(port: int, data: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        token_file = data / "admin.token"
        try:
            if token_file.exists():
                token = token_file.read_text().strip()
                printers = httpx.get(
                    f"http://127.0.0.1:{port}/api/printers", headers={"Authorization": f"Bearer {token}"}
                )
                if printers.status_code == 200 and any(p["state"] == "idle" for p in printers.json()):
                    return token
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("farm up did not come up with an idle printer in 120 s")


def _wait_printing(port: int, token: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = httpx.get(
            f"http://127.0.0.1:{port}/api/jobs", headers={"Authorization": f"Bearer {token}"}
        ).json()
        if any(j["state"] in ("printing", "done") for j in jobs):
            return
        if any(j["state"] in ("failed", "cancelled") for j in jobs):
            break
        time.sleep(0.5)
    raise SystemExit(f"the job did not reach the printer: {[j['state'] for j in jobs]}")


if __name__ == "__main__":
    where = Path(sys.argv[sys.argv.index("--root") + 1]).resolve() if "--root" in sys.argv else ROOT
    result = measure(where)
    if "--json" in sys.argv:
        print(json.dumps(result))
    else:
        print(f"files on the path of one job: {result['files']} {result['by_package']}")
        print(f"folders: {result['folders']}")
        print("traced:", *result["traced"], sep="\n  ")  # type: ignore[arg-type]
        print("CAD child (untraced, its files):", *result["cad_child"], sep="\n  ")  # type: ignore[arg-type]
