"""`farm watch`: one screen with every printer, its job's progress bar and ETA, and the queue."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from farm.core import wire
from farm.core.client import FarmClient, FarmError

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


def bar(progress: float | None, width: int = BAR_WIDTH) -> str:
    """A bar `width` cells long and the percentage; width 0: the percentage only."""
    if progress is None:
        return ""
    if not width:
        return f"{progress:.0f}%"
    filled = round(width * max(0.0, min(progress, 100.0)) / 100)
    return "█" * filled + "░" * (width - filled) + f" {progress:5.1f}%"


def eta(remaining_s: int | None, now: datetime, *, clock: bool = True) -> str:
    if remaining_s is None:
        return ""
    h, rest = divmod(int(remaining_s), 3600)
    left = f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
    return f"{left} (at {(now + timedelta(seconds=remaining_s)):%H:%M})" if clock else left


COLUMNS = ("printer", "model", "state", "job", "progress", "ETA", "message")


@dataclass(frozen=True)
class Layout:
    """What the table shows: the columns, the progress bar's width (0: the percentage only) and
    whether an ETA also says the time of day."""

    columns: tuple[str, ...]
    bar: int = BAR_WIDTH
    clock: bool = True


# Best first. A narrow terminal loses what matters least (the message, then the job, then detail
# of the bar and the ETA) before any cell is cut: a printer's name, model and state stay whole.
LAYOUTS = (
    Layout(COLUMNS),
    Layout(COLUMNS[:-1]),
    Layout(COLUMNS[:-1], bar=12),
    Layout(("printer", "model", "state", "progress", "ETA"), bar=12),
    Layout(("printer", "model", "state", "progress", "ETA"), bar=12, clock=False),
    Layout(("printer", "model", "state", "progress", "ETA"), bar=6, clock=False),
    Layout(("printer", "model", "state", "progress", "ETA"), bar=0, clock=False),
    Layout(("printer", "model", "state", "progress"), bar=0),
)
MESSAGE_MIN = 20  # a message wraps; it needs only this much to be read
JOB_MAX = 24  # a long file name may be cut, past its id


def _cells(layout: Layout, p: wire.PrinterView, job: wire.JobView | None, now: datetime) -> dict[str, str]:
    progress = job.progress if job else p.progress
    return {
        "printer": p.name,
        "model": p.model,
        "state": p.state,
        "job": f"{job.id} {job.source or ''}" if job else "",
        "progress": bar(progress, layout.bar),
        "ETA": eta(job.remaining_s, now, clock=layout.clock) if job else "",
        "message": p.message or "",
    }


def _width(layout: Layout, rows: list[dict[str, str]]) -> int:
    """The table's width in cells: a border, then each column's widest cell, padding and border."""
    total = 1
    for column in layout.columns:
        widest = max([cell_len(column), *(cell_len(r[column]) for r in rows)])
        if column == "message":
            widest = min(widest, MESSAGE_MIN)
        elif column == "job":
            widest = min(widest, JOB_MAX)
        total += widest + 3
    return total


def render(status: wire.FarmStatus, printers: list[wire.PrinterView], jobs: list[wire.JobView]) -> Screen:
    return Screen(status, printers, jobs, datetime.now())


@dataclass
class Screen:
    """The whole view. It picks its layout when drawn, from the width it is given (a terminal's,
    however it was resized; a pipe's), the richest of LAYOUTS that fits."""

    status: wire.FarmStatus
    printers: list[wire.PrinterView]
    jobs: list[wire.JobView]
    now: datetime

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)
        queue = ", ".join(f"{state} {n}" for state, n in self.status.jobs.items() if n) or "no jobs"
        builds = ", ".join(f"{stage} {n}" for stage, n in self.status.builds.items() if n) or "no builds"
        yield Text(f"jobs: {queue}\nbuilds: {builds}")

    def table(self, width: int) -> Table:
        by_printer = {j.printer: j for j in self.jobs if j.printer}
        for layout in LAYOUTS:
            rows = [_cells(layout, p, by_printer.get(p.name), self.now) for p in self.printers]
            if _width(layout, rows) <= width:
                break
        table = Table(title=f"printfarm at {self.now:%H:%M:%S}", expand=True)
        widest = {c: max([cell_len(c), *(cell_len(r[c]) for r in rows)]) for c in layout.columns}
        for column in layout.columns:
            whole = column in ("printer", "model", "state")  # never cut: the others are squeezed first
            table.add_column(column, no_wrap=column != "message", min_width=widest[column] if whole else None)
        for row, p in zip(rows, self.printers, strict=True):
            cells: list[str | Text] = [row[c] for c in layout.columns]
            if "state" in layout.columns:
                cells[layout.columns.index("state")] = Text(p.state, style=STATE_STYLE.get(p.state, ""))
            table.add_row(*cells)
        return table


ACTIVE = ("claimed", "uploading", "printing")


def snapshot(client: FarmClient) -> Screen:
    # Only the jobs on printers, each state by itself: however many jobs are queued or done.
    active = [j for state in ACTIVE for j in client.jobs(state)]
    return render(client.status(), client.printers(), active)


def stdout_console() -> Console:
    """Piped output (a script, a log) has no width of its own: rich would assume 80 and cut
    printer names."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def events(client: FarmClient) -> Iterator[dict[str, Any]]:
    """The farm's snapshots from its event stream (farm/coordinator/api/events.py), one each time it changes.
    Raises FarmError if the coordinator has no stream (an older one) or it ends."""
    try:
        with client._http.stream("GET", "/api/events", timeout=httpx.Timeout(10, read=60)) as resp:
            if resp.status_code != 200:
                resp.read()
                raise FarmError(f"no event stream (HTTP {resp.status_code})", resp.status_code)
            kind = ""
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "farm":
                    yield json.loads(line[5:])
                elif not line:
                    kind = ""
    except httpx.HTTPError as exc:
        raise FarmError(f"the event stream broke off ({exc.__class__.__name__})") from exc
    raise FarmError("the event stream ended")


def from_event(snap: dict[str, Any]) -> Screen:
    """The dashboard's snapshot (api/dashboard.py): each printer holds its job as `current`."""
    printers = [wire.PrinterView.model_validate(p) for p in snap["printers"]]
    active = [wire.JobView.model_validate(p["current"]) for p in snap["printers"] if p.get("current")]
    return render(wire.FarmStatus.model_validate(snap["status"]), printers, active)


def run_watch(client: FarmClient, *, interval: float, once: bool) -> None:
    """Redrawn from the coordinator's event stream as the farm changes; polled every `interval`
    seconds if the stream is not there or breaks, until it can be opened again."""
    console = stdout_console()
    if once:
        console.print(snapshot(client))
        return
    with Live(snapshot(client), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                try:
                    for snap in events(client):
                        live.update(from_event(snap))
                except FarmError:
                    pass
                time.sleep(interval)
                live.update(snapshot(client))
        except KeyboardInterrupt:
            pass
