"""`farm watch` at 80 columns (issue #14): less important columns go before any name is cut, so
each printer's name, model and state stay whole; a wide screen still shows every column."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from farm.commands.watch import render
from farm.core import wire
from farm.core.states import JobState

STATUS = wire.FarmStatus(
    jobs={"printing": 1, "ready": 3}, builds={"ready": 4}, printers={"printing": 1}, printer_count=4
)
PRINTERS = [
    {"name": "sim-mini-1", "model": "MINI", "state": "printing", "progress": 40.0, "message": None},
    {
        "name": "workshop-mk3s-02",
        "model": "MK3S",
        "state": "awaiting_clear",
        "progress": None,
        "message": "bed not cleared yet: remove the part, then farm printers clear",
    },
    {
        "name": "bench-coreone-1",
        "model": "COREONE",
        "state": "attention",
        "progress": None,
        "message": "runout",
    },
    {"name": "bambu-a1mini-1", "model": "A1MINI", "state": "idle", "progress": None, "message": ""},
]
JOBS = [
    wire.JobView(
        id=12,
        printer="sim-mini-1",
        source="bracket.py",
        state=JobState.PRINTING,
        progress=40.0,
        remaining_s=1500,
    )
]


def shown(width: int, printers: list[dict[str, Any]] = PRINTERS) -> str:
    """The screen, the printers as the API shows them (the rest of each view as a sim's)."""
    sim = {"protocol": "prusalink", "bed_clear": True, "auto_eject": False, "material": "PLA", "nozzle": 0.4}
    views = [wire.PrinterView.model_validate({**sim, **p}) for p in printers]
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render(STATUS, views, JOBS))
    return out.getvalue()


def cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def test_watch_at_80_columns_drops_columns_before_it_cuts_names_models_or_states() -> None:
    text = shown(80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text
    rows = cells(text)
    for p in PRINTERS:
        assert [p["name"], p["model"], p["state"]] in [r[:3] for r in rows], text
    printing = next(r for r in rows if r[0] == "sim-mini-1")
    assert "█" in printing[3] and "40.0%" in printing[3] and printing[4] == "25m00s", printing

    wide = shown(200)  # a wide terminal, or a pipe: every column, nothing dropped
    header = next(line for line in wide.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.split("┃")[1:-1]] == [
        "printer", "model", "state", "job", "progress", "ETA", "message",
    ]  # fmt: skip
    assert "12 bracket.py" in wide and "25m00s (at " in wide and "bed not cleared yet" in wide
