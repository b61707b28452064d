"""The printer agent's footprint on a Raspberry Pi: idle memory, memory while uploading, throughput.

A PrusaLink emulator runs in its own process (`farm emulate prusalink`) so its memory is not
counted. A child process imports what an agent imports, reads its own idle RSS, resets its peak
RSS, streams a 200 MB G-code with `PrusaLinkDriver.upload(..., start=False)` and reports the peak
growth and the upload time. curl uploads the same file to the same endpoint, alternating with
the agent to share machine noise; medians. Last line: one JSON object with `idle_rss_mb`,
`rss_growth_mb`, `upload_vs_curl` (curl's time / the agent's: 1.0 means as fast as curl).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "pw"
SIZE_MB = 200
RUNS = 5
REMOTE = "bench.gcode"
TARGETS = {"idle_rss_mb": 60.0, "rss_growth_mb": 10.0, "upload_vs_curl": 0.9}


# -- the agent side (runs in a child process) ------------------------------------------------


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: Path, port: int) -> None:
    """Import only what an agent imports, then measure one upload from inside the process."""
    sys.path.insert(0, str(REPO))
    import farm.core.client  # noqa: F401
    import printers.agent  # noqa: F401
    from printers.drivers.base import PrinterConfig
    from printers.drivers.prusalink import PrusaLinkDriver

    config = PrinterConfig(name="bench", model="MINI", driver="prusalink", port=port, password=PASSWORD)
    driver = PrusaLinkDriver(config)
    idle = _proc_status_mb("VmRSS")
    # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak is the upload's alone.
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    driver.upload(path, REMOTE, start=False)
    seconds = time.perf_counter() - start
    peak = _proc_status_mb("VmHWM")
    driver.close()
    print(json.dumps({"idle_rss_mb": idle, "rss_growth_mb": peak - idle, "seconds": seconds}))


# -- the harness -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the emulator did not open port {port} within {timeout:.0f} s")


def write_gcode(path: Path, size_mb: int) -> None:
    """PrusaSlicer-like lines: model check up front, moves, the time estimate in the trailer."""
    head = b'; bench\nM862.3 P "MINI" ; printer model check\nM104 S210\nM140 S60\nG28\n'
    lines = [f"G1 X{i % 180}.{i % 10} Y{(i * 7) % 180}.5 E0.0512 F1800\n".encode() for i in range(30_000)]
    block = b"".join(lines)
    tail = b"M104 S0\n; estimated printing time (normal mode) = 10m 0s\n"
    target = size_mb * 1024 * 1024
    with path.open("wb") as f:
        f.write(head)
        written = len(head)
        while written + len(block) + len(tail) <= target:
            f.write(block)
            written += len(block)
        f.write(block[: target - written - len(tail)].rsplit(b"\n", 1)[0] + b"\n")
        f.write(tail)


def run_agent(path: Path, port: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path), str(port)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"agent upload failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_curl(path: Path, port: int) -> float:
    url = f"http://127.0.0.1:{port}/api/v1/files/usb/{REMOTE}"
    cmd = ["curl", "-sS", "--fail", "-o", "/dev/null", "--digest", "-u", f"maker:{PASSWORD}", "-T", str(path)]
    cmd += ["-H", "Overwrite: ?1", "-H", "Print-After-Upload: ?0", url]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"curl upload failed ({done.returncode}): {done.stderr}")
    return seconds


def main() -> None:
    port = free_port()
    # RAM-backed if possible: writeback of the emulator's 200 MB files would hit random runs.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bench-agent-", dir=shm) as tmp_name:
        tmp = Path(tmp_name)
        gcode = tmp / "big.gcode"
        write_gcode(gcode, SIZE_MB)
        emulate = [sys.executable, "-m", "farm", "emulate", "prusalink", "--port", str(port)]
        emulate += ["--password", PASSWORD, "--storage", str(tmp / "usb"), "--speed", "100000"]
        emulator = subprocess.Popen(emulate, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            agents, curls = [], []
            for _ in range(RUNS):  # alternate, so drift in machine load hits both sides alike
                agents.append(run_agent(gcode, port))
                curls.append(run_curl(gcode, port))
            stored = (tmp / "usb" / REMOTE).stat().st_size
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
        size = gcode.stat().st_size
    if stored != size:
        raise SystemExit(f"the emulator stored {stored} bytes of {size}")
    report(agents, curls, size)


def report(agents: list[dict[str, float]], curls: list[float], size: int) -> None:
    agent_s = statistics.median(a["seconds"] for a in agents)
    curl_s = statistics.median(curls)
    result = {
        "idle_rss_mb": round(statistics.median(a["idle_rss_mb"] for a in agents), 1),
        "rss_growth_mb": round(max(a["rss_growth_mb"] for a in agents), 2),  # worst run: a ceiling
        "upload_vs_curl": round(curl_s / agent_s, 3),
    }
    mb = size / 1e6
    print(f"{size / 2**20:.0f} MiB G-code, {len(agents)} runs each, alternating; medians\n")
    print(f"{'':<28}{'agent (PrusaLinkDriver)':>26}{'curl --digest -T':>20}")
    print(f"{'upload time':<28}{agent_s:>24.2f} s{curl_s:>18.2f} s")
    print(f"{'throughput':<28}{mb / agent_s:>21.0f} MB/s{mb / curl_s:>15.0f} MB/s")
    ratios = sorted(c / a["seconds"] for a, c in zip(agents, curls, strict=True))
    print(f"{'curl/agent per run':<28}{' '.join(f'{r:.2f}' for r in ratios):>26}")
    print(f"{'idle RSS after imports':<28}{result['idle_rss_mb']:>23.1f} MB")
    print(f"{'RSS growth while uploading':<28}{result['rss_growth_mb']:>23.2f} MB")
    met = {
        "idle_rss_mb": result["idle_rss_mb"] <= TARGETS["idle_rss_mb"],
        "rss_growth_mb": result["rss_growth_mb"] <= TARGETS["rss_growth_mb"],
        "upload_vs_curl": result["upload_vs_curl"] >= TARGETS["upload_vs_curl"],
    }
    print("\ntargets: idle_rss_mb <= 60, rss_growth_mb <= 10, upload_vs_curl >= 0.9")
    print(json.dumps({**result, "targets_met": all(met.values())}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
