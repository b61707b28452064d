"""`farm printers snapshot NAME`: a fresh still from a printer's camera, asked of its agent.

The coordinator cannot reach a printer (its agent dials out), so it flags the printer; the answer
to the agent's next heartbeat or claim says a still is wanted, and the agent uploads one or says
why it cannot. This waits for either, a bounded time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from farm.commands.common import client, die, plain
from farm.core.client import FarmClient, FarmError
from farm.core.wire import SnapshotView

POLL_S = 0.3


def printers_snapshot(
    name: Annotated[str, typer.Argument(help="The printer whose camera to read.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to save the still [default: NAME-ID.jpg or .png here]."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, max=600, help="Seconds to wait for the printer's agent to answer.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Ask a printer's agent for a still from its camera now, and save it (submitter or admin)."""
    path = f"/api/printers/{quote(name, safe='')}"
    with client() as farm:
        try:
            asked = farm.request_snapshot(name)
            snap = _wait(farm, name, asked.after, timeout)
            image = farm.request("GET", f"{path}/snapshot", params={"id": snap.id})
        except FarmError as exc:
            die(str(exc), 2 if exc.status in (400, 422) else 1)
    ext = "png" if snap.media_type == "image/png" else "jpg"
    out = output or Path(f"{name}-{snap.id}.{ext}".replace("/", "_"))
    out.write_bytes(image.content)
    if as_json:
        typer.echo(json.dumps({**plain(snap), "saved": str(out)}))
    else:
        typer.echo(f"{name}: {snap.media_type} still taken at {snap.taken_at}, saved to {out}")


def _wait(client: FarmClient, name: str, after: int, timeout: float) -> SnapshotView:
    deadline = time.monotonic() + timeout
    while True:
        state = client.printer_snapshots(name, limit=1)
        newest = state.snapshots[0] if state.snapshots else None
        if newest is not None and newest.id > after:
            return newest
        if state.error:  # cleared when we asked: this is the agent's answer to us
            die(f"{name}: {state.error}")
        if time.monotonic() >= deadline:
            seen = state.agent_last_seen
            die(
                f"{name}: no still within {timeout:g} s: its agent has not answered "
                f"({'last heard from at ' + seen if seen else 'it has never called in'}). "
                "Is the agent running (`farm printers` shows its state)? The request stands: "
                "the agent takes the still when it next calls in."
            )
        time.sleep(POLL_S)
