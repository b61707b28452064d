"""The dashboard under a big farm: 100 printers, 10,000 queued jobs, the coordinator as `farm server`
runs it (uvicorn, one process, SQLite in WAL mode) on a free loopback port.

Set-up as bench/coordinator.py does it: an agent token per printer, each registered through the
API, 10,000 ready jobs through the farm's own pipeline, and every printer holding one printing job
(claimed and reported through the API). Then, with Debian's chromium driven by Playwright:

- first page: a fresh browser context opens the sign-in link and the clock runs until all 100
  printer cards are drawn (HTML, script, styles, /api/me, the snapshot, drawing); median and worst
  of five, each in a new context (nothing cached);
- report to page: every agent reports its job's progress every 2 s (one new integer percentage
  each time, agents spread over the 2 s: 50 reports a second) for `--seconds`; the page records,
  on each animation frame, when each card first shows each value; latency is from just before the
  report is sent to that frame (both clocks are this machine's);
- idle cost: 20 open pages' streams (plain SSE readers: the page holds only its stream while idle)
  and the coordinator's CPU time over 30 s, first with every agent silent, then with every agent
  heartbeating every 2 s with nothing changed (what a quiet farm does); the same two with no
  stream open give the baseline. Percent of one core.

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.coordinator import (  # noqa: E402 - after the path is set
    MODELS,
    agent_tokens,
    api_calls,
    cpu_seconds,
    free_port,
    percentile,
    queue_jobs,
    redis_server,
    wait_for,
)

TARGETS = {"first_page_s": 1.0, "report_p99_s": 1.0, "idle_pct_core": 5.0}
PAGES = 20

# In the page: on every frame, note when each card first shows each progress value.
WATCH = """() => {
  window.seen = {};
  const tick = () => {
    const now = Date.now();
    for (const card of document.querySelectorAll('#printers article.card')) {
      const bar = card.querySelector('[role=progressbar]');
      if (!bar) continue;
      const key = card.dataset.printer + ':' + bar.getAttribute('aria-valuenow');
      if (!(key in window.seen)) window.seen[key] = now;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def sign_in_link(base: str, admin: str) -> str:
    made = httpx.post(f"{base}/api/signin-links", headers={"Authorization": f"Bearer {admin}"})
    made.raise_for_status()
    return base + made.json()["path"]


def first_pages(browser: Any, base: str, admin: str, printers: int, rounds: int = 5) -> list[float]:
    times = []
    for _ in range(rounds):
        link = sign_in_link(base, admin)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        began = time.perf_counter()
        page.goto(link)
        page.wait_for_function(
            f"() => document.querySelectorAll('#printers article.card').length === {printers}"
        )
        times.append(time.perf_counter() - began)
        context.close()
    return times


async def report_loop(
    base: str, agents: list[tuple[str, str, dict[str, Any]]], seconds: float, sent: dict[str, float]
) -> int:
    """Each agent reports a new progress every 2 s, the agents spread evenly over the 2 s."""
    errors = 0
    start = time.time() + 0.5
    end = start + seconds

    async def agent(i: int, name: str, token: str, claim: dict[str, Any]) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            step, at = 0, start + 2.0 * i / len(agents)
            while at < end:
                await asyncio.sleep(max(0.0, at - time.time()))
                step += 1
                body = {"printer": name, "fence": claim["fence"], "state": "printing", "progress": step}
                sent[f"{name}:{step}"] = time.time()
                try:
                    resp = await http.post(f"/api/agents/jobs/{claim['id']}/report", json=body)
                    errors += resp.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                at += 2.0

    await asyncio.gather(*(agent(i, *a) for i, a in enumerate(agents)))
    return errors


async def heartbeat_loop(base: str, agents: list[tuple[str, str, dict[str, Any]]], seconds: float) -> None:
    """Every agent heartbeats every 2 s with what it said last: nothing changes."""
    start = time.time()
    end = start + seconds

    async def agent(i: int, name: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            at = start + 2.0 * i / len(agents)
            while at < end:
                await asyncio.sleep(max(0.0, at - time.time()))
                await http.post("/api/agents/heartbeat", json={"printer": name, "state": "printing"})
                at += 2.0

    await asyncio.gather(*(agent(i, name, token) for i, (name, token, _c) in enumerate(agents)))


class StreamWatch:
    """One event stream read in a thread: when each printer's progress value first arrives (the
    server's part of the latency, before any browser draws it)."""

    def __init__(self, base: str, cookie: str) -> None:
        self.seen: dict[str, float] = {}
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60), cookies={"farm_session": cookie})
        self._thread = threading.Thread(target=self._read, args=(base,), daemon=True)
        self._thread.start()

    def _read(self, base: str) -> None:
        try:
            with self._client.stream("GET", f"{base}/api/events") as resp:
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.time()
                    for p in json.loads(line[5:])["printers"]:
                        current = p.get("current") or {}
                        self.seen.setdefault(f"{p['name']}:{current.get('progress')}", now)
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self._client.close()


class Streams:
    """`n` open event streams read by raw sockets in one thread, as idle pages hold them."""

    def __init__(self, port: int, cookie: str, n: int) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: farm_session={cookie}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            self.socks.append(s)
        self.bytes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in sel.select(0.5):
                self.bytes += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for s in self.socks:
            s.close()


def shown_at(seen: dict[str, int], key: str) -> int | None:
    """When the page first showed report `key` ("printer:value"), or a newer value of that printer
    (the page goes straight to the newer one when two reports come within one burst): ms."""
    printer, value = key.rsplit(":", 1)
    times = [at for v, at in _by_printer(seen).get(printer, []) if v >= int(value)]
    return min(times) if times else None


_INDEX: dict[int, dict[str, list[tuple[int, int]]]] = {}


def _by_printer(seen: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    if id(seen) not in _INDEX:
        index: dict[str, list[tuple[int, int]]] = {}
        for k, at in seen.items():
            printer, value = k.rsplit(":", 1)
            if value.isdigit():
                index.setdefault(printer, []).append((int(value), at))
        _INDEX[id(seen)] = index
    return _INDEX[id(seen)]


def in_thread(coro: Any) -> Any:
    """asyncio.run in a thread of its own: Playwright's sync API holds this thread's event loop."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    worker.start()
    worker.join()
    return out[0]


def cpu_pct(pid: int, seconds: float, during: Any = None) -> float:
    before = cpu_seconds(pid)
    began = time.monotonic()
    if during is None:
        time.sleep(seconds)
    else:
        asyncio.run(during)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--printers", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long agents report")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is missing: run scripts/setup")
    names = [f"p{i:03d}" for i in range(args.printers)]
    with redis_server() as redis_url, tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'farm.coordinator.db'}"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FARM_DATA_DIR": str(tmp), "FARM_REDIS_URL": redis_url, "FARM_DATABASE_URL": url}
        log = tmp / "server.log"
        with log.open("wb") as out:
            argv = [sys.executable, "-m", "farm", "server", "--host", "127.0.0.1", "--port", str(port)]
            server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for(port, server, log)
            admin = (tmp / "admin.token").read_text().strip()
            tokens = agent_tokens(port, admin, names)
            register = [
                (
                    "/api/agents/register",
                    tok,
                    {"printer": nm, "model": MODELS[i % 3], "protocol": "prusalink"},
                )
                for i, (nm, tok) in enumerate(zip(names, tokens, strict=True))
            ]
            asyncio.run(api_calls(port, register))
            queue_jobs(url, args.jobs + args.printers)
            idle = {"state": "idle", "message": None, "progress": None}
            claims = asyncio.run(
                api_calls(
                    port,
                    [
                        ("/api/agents/claim", t, {"printer": n, **idle})
                        for n, t in zip(names, tokens, strict=True)
                    ],
                )
            )
            for state in ("uploading", "printing"):
                asyncio.run(
                    api_calls(
                        port,
                        [
                            (
                                f"/api/agents/jobs/{c['id']}/report",
                                t,
                                {"printer": n, "fence": c["fence"], "state": state},
                            )
                            for n, t, c in zip(names, tokens, claims, strict=True)
                        ],
                    )
                )
            agents = list(zip(names, tokens, claims, strict=True))
            print(f"set up: {args.printers} printers printing, {args.jobs} jobs queued", file=sys.stderr)

            with sync_playwright() as p:
                browser_args = ["--no-sandbox"] if os.geteuid() == 0 else []
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=browser_args)
                firsts = first_pages(browser, base, admin, args.printers)
                print(f"first page: {[round(t, 3) for t in firsts]} s", file=sys.stderr)

                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                page = context.new_page()
                page.goto(sign_in_link(base, admin))
                page.wait_for_selector("#live.on")
                page.evaluate(WATCH)
                sent: dict[str, float] = {}
                watch = StreamWatch(base, httpx.get(sign_in_link(base, admin)).cookies["farm_session"])
                errors = in_thread(report_loop(base, agents, args.seconds, sent))
                time.sleep(2)
                seen: dict[str, int] = page.evaluate("window.seen")
                watch.close()
                context.close()
                browser.close()
            latencies = [
                shown / 1000 - t for k, t in sent.items() if (shown := shown_at(seen, k)) is not None
            ]
            superseded = sum(1 for k in sent if k not in seen and shown_at(seen, k) is not None)
            streamed = [
                watch.seen[k.rsplit(":", 1)[0] + f":{float(k.rsplit(':', 1)[1])}"] - t
                for k, t in sent.items()
                if k.rsplit(":", 1)[0] + f":{float(k.rsplit(':', 1)[1])}" in watch.seen
            ]
            missed = len(sent) - len(latencies)
            print(
                f"reports: {len(sent)} sent, {superseded} shown only through a newer one, "
                f"{missed} never shown",
                file=sys.stderr,
            )

            cookie_link = sign_in_link(base, admin)
            cookie = httpx.get(cookie_link).cookies["farm_session"]
            quiet = cpu_pct(server.pid, args.idle_seconds)
            beating = cpu_pct(server.pid, args.idle_seconds, heartbeat_loop(base, agents, args.idle_seconds))
            streams = Streams(port, cookie, PAGES)
            time.sleep(2)  # each has its first snapshot
            quiet_pages = cpu_pct(server.pid, args.idle_seconds)
            beating_pages = cpu_pct(
                server.pid, args.idle_seconds, heartbeat_loop(base, agents, args.idle_seconds)
            )
            streams.close()
        finally:
            server.terminate()
            server.wait(30)

    result = {
        "printers": args.printers,
        "jobs": args.jobs,
        "first_page_s": round(max(firsts), 3),
        "first_page_median_s": round(sorted(firsts)[len(firsts) // 2], 3),
        "reports": len(sent),
        "report_errors": errors,
        "reports_superseded": superseded,
        "reports_never_shown": missed,
        "report_p50_s": round(percentile(latencies, 50), 3),
        "report_p99_s": round(percentile(latencies, 99), 3),
        "report_max_s": round(max(latencies), 3) if latencies else None,
        "stream_p50_s": round(percentile(streamed, 50), 3),
        "stream_p99_s": round(percentile(streamed, 99), 3),
        "stream_missed": len(sent) - len(streamed),
        "idle_pct_core": round(quiet_pages - quiet, 2),
        "cpu_pct_core": {
            "no_pages_silent_agents": round(quiet, 2),
            "no_pages_heartbeating_agents": round(beating, 2),
            f"{PAGES}_pages_silent_agents": round(quiet_pages, 2),
            f"{PAGES}_pages_heartbeating_agents": round(beating_pages, 2),
        },
        "heartbeating_pages_extra_pct_core": round(beating_pages - beating, 2),
    }
    result["met"] = {k: result[k] is not None and result[k] <= v for k, v in TARGETS.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
