"""`farm watch`: one screen with every printer, its job's progress bar and ETA, and the queue."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from farm.client import FarmClient

BAR_WIDTH = 24
PIPE_WIDTH = 200
STATE_STYLE = {
    "printing": "green",
    "idle": "cyan",
    "finished": "blue",
    "awaiting_clear": "yellow",
    "attention": "bold red",
    "failed": "red",
    "offline": "dim",
}


def bar(progress: float | None) -> str:
    if progress is None:
        return ""
    filled = round(BAR_WIDTH * max(0.0, min(progress, 100.0)) / 100)
    return "█" * filled + "░" * (BAR_WIDTH - filled) + f" {progress:5.1f}%"


def eta(remaining_s: int | None, now: datetime) -> str:
    if remaining_s is None:
        return ""
    h, rest = divmod(int(remaining_s), 3600)
    left = f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
    return f"{left} (at {(now + timedelta(seconds=remaining_s)):%H:%M})"


def render(status: dict[str, Any], printers: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> Group:
    now = datetime.now()
    by_printer = {j["printer"]: j for j in jobs if j["printer"]}
    table = Table(title=f"printfarm at {now:%H:%M:%S}", expand=True)
    # A narrow terminal (or a pipe: 80 columns) squeezes the other columns, never a printer's name.
    widest = max((len(p["name"]) for p in printers), default=7)
    for column in ("printer", "model", "state", "job", "progress", "ETA", "message"):
        table.add_column(
            column, no_wrap=column != "message", min_width=widest if column == "printer" else None
        )
    for p in printers:
        job = by_printer.get(p["name"])
        table.add_row(
            p["name"],
            p["model"],
            Text(p["state"], style=STATE_STYLE.get(p["state"], "")),
            f"{job['id']} {job['source'] or ''}" if job else "",
            bar(job["progress"] if job else p["progress"]),
            eta(job["remaining_s"], now) if job else "",
            p["message"] or "",
        )
    queue = ", ".join(f"{state} {n}" for state, n in status["jobs"].items() if n) or "no jobs"
    builds = ", ".join(f"{stage} {n}" for stage, n in status["builds"].items() if n) or "no builds"
    return Group(table, Text(f"jobs: {queue}\nbuilds: {builds}"))


ACTIVE = ("claimed", "uploading", "printing")


def snapshot(client: FarmClient) -> Group:
    # Only the jobs on printers, each state by itself: however many jobs are queued or done.
    active = [j for state in ACTIVE for j in client.get_all("/api/jobs", state=state)]
    return render(client.get("/api/status"), client.get_all("/api/printers"), active)


def stdout_console() -> Console:
    """Piped output (a script, a log) has no width of its own: rich would assume 80 and cut
    printer names."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def run_watch(client: FarmClient, *, interval: float, once: bool) -> None:
    console = stdout_console()
    if once:
        console.print(snapshot(client))
        return
    with Live(snapshot(client), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(snapshot(client))
        except KeyboardInterrupt:
            pass
