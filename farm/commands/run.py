"""Running the farm's parts: `farm up` (all of it on one machine), `farm server`, `farm worker`.

Their libraries (uvicorn, the API, the workers) are imported inside each command: `farm agent` on a
Pi imports this module without them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.commands import extras
from farm.commands.common import JsonOpt, die, emit, setup_logging
from farm.commands.up import parse_sims, run_farm
from farm.core.settings import Settings, get_settings


def up(
    sim: Annotated[
        str,
        typer.Option(
            help="Simulated printers: a count of PrusaLink ones, or e.g. prusalink=2,octoprint=1,"
            "moonraker=1; a model as PROTOCOL:MODEL=N (prusalink:MK3S=1, bambu:A1MINI=1)."
        ),
    ] = "2",
    data_dir: Annotated[Path | None, typer.Option(help="Where the farm keeps its state.")] = None,
    port: Annotated[int, typer.Option(help="The coordinator's HTTP port.")] = 8000,
    demo: Annotated[bool, typer.Option(help="Submit the examples once the farm is up.")] = False,
    speed: Annotated[float, typer.Option(help="How much faster simulated printers print.")] = 120.0,
) -> None:
    """Run a whole farm on this machine: coordinator, Redis, CAD and slicing workers, printers.

    Everything runs in the foreground; Ctrl-C stops all of it. The parts stop with it however it
    ends (kill -9 included), and a `farm up` after a killed one stops whatever that one left.
    """
    extras.require("up", "server", "worker")

    setup_logging()
    overrides: dict[str, Any] = {"port": port, "url": f"http://127.0.0.1:{port}"}
    if data_dir:  # else the settings' own (FARM_DATA_DIR, farm.toml, the default) stands
        overrides["data_dir"] = data_dir
    settings = Settings(**overrides)
    try:
        sims = parse_sims(sim)
    except ValueError as exc:
        die(str(exc), 2)
    sys.exit(run_farm(settings, sims=sims, demo=demo, speed=speed))


def server(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="Server processes. More than 1 pays with PostgreSQL; SQLite has one writer."
        ),
    ] = 1,
) -> None:
    """Run the coordinator (HTTP API) alone. Needs FARM_REDIS_URL."""
    extras.require("server", "server")
    import uvicorn

    from farm.coordinator.api import create_app  # lazy: the server extra, checked just above

    setup_logging()
    s = get_settings()
    s = s.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if not s.redis_url:
        die("farm server needs FARM_REDIS_URL (or use `farm up`, which starts Redis for you)")
    if workers == 1:
        uvicorn.run(create_app(s), host=s.host, port=s.port, log_level="warning")
        return
    os.environ.update(FARM_HOST=s.host, FARM_PORT=str(s.port))  # each process reads its settings anew
    # API latency is kept per process: prometheus_client sums the processes' files at each scrape.
    multiproc = s.data_dir / f"metrics-{s.port}"
    shutil.rmtree(multiproc, ignore_errors=True)  # the last run's processes are gone
    multiproc.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    uvicorn.run(
        "farm.coordinator.api:app_from_env",
        factory=True,
        workers=workers,
        host=s.host,
        port=s.port,
        log_level="warning",
    )


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to serve: cad, slice.")] = "cad,slice",
    check_sandbox: Annotated[
        bool,
        typer.Option(
            "--check-sandbox",
            help="Try each layer of the CAD sandbox on this host, print which hold, and exit: "
            "1 if this worker would refuse CAD work.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a CAD and/or slicing worker. Needs FARM_REDIS_URL, FARM_URL and FARM_TOKEN.

    CAD builds run strangers' code, so each runs walled in (no network, a file system of its own, an
    unprivileged uid); a host that cannot isolate them gets no CAD work. FARM_CAD_SANDBOX=off lifts
    that, for designs you trust.
    """
    extras.require("worker", "worker")
    from workers.main import ALL_QUEUES, run  # lazy: the worker extra, checked just above

    if check_sandbox:
        _report_sandbox(as_json)
    setup_logging()
    wanted = {q.strip() for q in queues.split(",") if q.strip()}
    if not wanted or wanted - ALL_QUEUES:
        die(
            f"unknown queue(s) {', '.join(sorted(wanted - ALL_QUEUES)) or '(none)'}; "
            f"choose from {', '.join(sorted(ALL_QUEUES))}"
        )
    run(get_settings(), wanted)


def _report_sandbox(as_json: bool) -> None:
    """Which layers of the CAD sandbox hold on this host; exits 1 if it would refuse CAD work."""
    from workers.main import check_sandbox  # lazy: the worker extra, `farm worker` checked it

    report = check_sandbox(get_settings())
    if as_json:
        emit(report.to_dict())
    else:
        for layer in report.layers:
            typer.echo(f"{layer.name:9} {'on ' if layer.active else 'off'}  {layer.detail}")
        typer.echo(f"network   {'isolated' if report.network_isolated else 'NOT isolated'}")
        typer.echo(f"files     {'isolated' if report.filesystem_isolated else 'NOT isolated'}")
        if not report.enabled:
            typer.echo("FARM_CAD_SANDBOX=off: CAD builds run unsandboxed (only for trusted designs)")
        elif report.usable:
            typer.echo("CAD work: accepted")
        else:
            typer.echo("CAD work: REFUSED (this worker would not take CAD builds)")
    raise typer.Exit(0 if report.usable else 1)
