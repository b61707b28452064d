"""The `farm` command. Heavy imports stay inside commands: `farm agent` must run on a Pi without them."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from farm import extras
from farm.client import FarmClient, FarmError
from farm.commands import agent_tools, cad, ci, dashboard, enroll, revisions, slicing
from farm.commands import snapshot as snapshot_cmd
from farm.commands.notify import notify_app
from farm.commands.options import BrimOpt, InfillOpt, SetOpt, SupportsOpt, parse_settings
from farm.commands.projects import projects_app
from farm.settings import Settings, get_settings

app = typer.Typer(
    help="printfarm: build123d code in, printed parts out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
emulate_app = typer.Typer(
    help="Run a printer emulator that speaks a real printer protocol.", no_args_is_help=True
)
app.add_typer(emulate_app, name="emulate")
cad.register(app)
slicing.register(app)
dashboard.register(app)
ci.register(app)
revisions.register(app)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
TERMINAL = {"done", "failed", "cancelled"}


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    # One line per HTTP request buries what the farm itself says; failures are logged by us anyway.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _die(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


USAGE_STATUSES = (400, 413, 415, 422)  # the coordinator refused what was typed: exit 2, as a bad option


def _die_farm(exc: FarmError) -> None:
    _die(str(exc), 2 if exc.status in USAGE_STATUSES else 1)


def _client(settings: Settings | None = None) -> FarmClient:
    s = settings or get_settings()
    token = s.resolved_token()
    if not token:
        _die(
            f"no token: set FARM_TOKEN, or run this on the coordinator's machine "
            f"(it reads {s.admin_token_file})"
        )
    return FarmClient(s.url, token)


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, default=str))


def _wait_for_stop() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


# -- running the farm ---------------------------------------------------------------------------
@app.command()
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
    from farm.up import run_farm

    _setup_logging()
    settings = Settings(
        port=port, url=f"http://127.0.0.1:{port}", **({"data_dir": data_dir} if data_dir else {})
    )
    from farm.up import parse_sims

    try:
        sims = parse_sims(sim)
    except ValueError as exc:
        _die(str(exc), 2)
    sys.exit(run_farm(settings, sims=sims, demo=demo, speed=speed))


@app.command()
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
    import os

    import uvicorn

    from farm.api import create_app

    _setup_logging()
    s = get_settings()
    s = s.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if not s.redis_url:
        _die("farm server needs FARM_REDIS_URL (or use `farm up`, which starts Redis for you)")
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
        "farm.api:app_from_env", factory=True, workers=workers, host=s.host, port=s.port, log_level="warning"
    )


@app.command()
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
    from workers.main import ALL_QUEUES, run
    from workers.main import check_sandbox as probe_sandbox

    if check_sandbox:
        report = probe_sandbox(get_settings())
        if as_json:
            _emit(report.to_dict())
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
    _setup_logging()
    wanted = {q.strip() for q in queues.split(",") if q.strip()}
    if not wanted or wanted - ALL_QUEUES:
        _die(
            f"unknown queue(s) {', '.join(sorted(wanted - ALL_QUEUES)) or '(none)'}; "
            f"choose from {', '.join(sorted(ALL_QUEUES))}"
        )
    run(get_settings(), wanted)


agent_app = typer.Typer(
    help="Run the agent beside a printer (farm agent --config agent.toml), or set one up."
)
app.add_typer(agent_app, name="agent")
agent_tools.register(agent_app)
enroll.register(agent_app)


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The agent's TOML config file.")
    ] = None,
) -> None:
    """Run the agent for one printer: claim jobs, send them to the printer, report progress.

    `farm agent --config agent.toml` runs it; `farm agent check` and `farm agent print` help set it up.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        _die("farm agent needs --config agent.toml (see the README: An agent beside a real printer)", 2)
    from printers.agent import Agent, ConfigMistake
    from printers.config import AgentConfig
    from printers.drivers import make_driver

    _setup_logging()
    try:  # configuration mistakes: one line each, exit 2, no traceback
        cfg = AgentConfig.load(config)
        token, source = cfg.token()
    except SystemExit as exc:
        _die(str(exc), 2)
    try:
        driver = make_driver(cfg.printer)
    except ValueError as exc:
        _die(str(exc), 2)
    client = FarmClient(cfg.coordinator.url, token)
    try:
        Agent(cfg, client, driver, token_source=source).run(_wait_for_stop())
    except ConfigMistake as exc:
        _die(str(exc), 2)


StorageOpt = Annotated[
    Path | None,
    typer.Option(help="Where received files are kept (default: a temporary folder, removed on exit)."),
]


def emulated_model(name: str, *, bambu: bool) -> str:
    """The model an emulator claims to be, by the farm's name when `name` is one of its models or
    aliases ("MK3S+" and "mk3s" are MK3S, "Core One" COREONE, "A1 mini" A1MINI): the PrusaLink
    emulator compares it with the G-code's `M862.3 P`, which uses those names, and a mismatch
    leaves the print waiting at the screen. Other names (MK3, MK2.5) are kept as given."""
    from farm.printer_models import find_model

    model = find_model(name)
    if model is not None and (model.protocol == "bambu") == bambu:
        return model.name
    return name.strip()


@contextlib.contextmanager
def _emulator_storage(storage: Path | None, kind: str) -> Iterator[Path]:
    """The folder an emulator keeps received files in: `storage`, or a temporary one that goes when
    the emulator does (never the current directory: an emulator run from a checkout must not
    litter it)."""
    if storage is not None:
        yield storage
        return
    with tempfile.TemporaryDirectory(prefix=f"farm-emulate-{kind}-") as tmp:
        yield Path(tmp)


@emulate_app.command("prusalink")
def emulate_prusalink(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    password: Annotated[str, typer.Option(help="The PrusaLink password (user 'maker').")] = "maker",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    model: Annotated[
        str,
        typer.Option(
            help="The printer model it claims to be. MK3/MK3S/MK2.5: Prusa-Link on a Raspberry Pi "
            "(storages local and read-only sdcard); others: Buddy firmware (storage usb)."
        ),
    ] = "MINI",
    storage: StorageOpt = None,
    speed: Annotated[
        float, typer.Option(help="How much faster than the G-code's estimate it prints.")
    ] = 60.0,
    upload_kbps: Annotated[
        float | None, typer.Option(help="Receive uploads at this many kB/s, like a real printer.")
    ] = None,
) -> None:
    """Emulate a Prusa printer's PrusaLink API (digest auth, uploads, jobs) over HTTP."""
    from printers.emulators.prusalink import PrusaLinkEmulator

    _setup_logging()
    model = emulated_model(model, bambu=False)
    with _emulator_storage(storage, "prusalink") as files:
        emu = PrusaLinkEmulator(
            host=host,
            port=port,
            password=password,
            model=model,
            storage_dir=files,
            speed=speed,
            upload_bytes_per_s=upload_kbps * 1000 if upload_kbps else None,
        )
        _serve_emulator(f"PrusaLink {model}", emu, files, after_url=" (user maker)")


@emulate_app.command("octoprint")
def emulate_octoprint(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 5000,
    api_key: Annotated[str, typer.Option(help="The API key clients must send as X-Api-Key.")] = "printfarm",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    storage: StorageOpt = None,
    speed: Annotated[
        float, typer.Option(help="How much faster than the G-code's estimate it prints.")
    ] = 60.0,
) -> None:
    """Emulate an OctoPrint server (REST API, uploads, job control) with a connected printer."""
    from printers.emulators.octoprint import OctoPrintEmulator

    with _emulator_storage(storage, "octoprint") as files:
        _serve_emulator(
            "OctoPrint",
            OctoPrintEmulator(host=host, port=port, api_key=api_key, storage_dir=files, speed=speed),
            files,
        )


@emulate_app.command("moonraker")
def emulate_moonraker(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 7125,
    api_key: Annotated[str | None, typer.Option(help="Require this X-Api-Key (default: trust all).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    storage: StorageOpt = None,
    speed: Annotated[
        float, typer.Option(help="How much faster than the G-code's estimate it prints.")
    ] = 60.0,
) -> None:
    """Emulate Moonraker (the Klipper API server): uploads, print_stats, pause/resume/cancel."""
    from printers.emulators.moonraker import MoonrakerEmulator

    with _emulator_storage(storage, "moonraker") as files:
        _serve_emulator(
            "Moonraker",
            MoonrakerEmulator(host=host, port=port, api_key=api_key, storage_dir=files, speed=speed),
            files,
        )


@emulate_app.command("bambu")
def emulate_bambu(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="MQTT over TLS port (8883 on a printer; 0: any).")] = 8883,
    ftps_port: Annotated[int, typer.Option(help="Implicit FTPS port (990 on a printer; 0: any).")] = 990,
    camera_port: Annotated[
        int,
        typer.Option(
            help="The camera: a P1/A1's JPEG stream over TLS (6000 on a printer), an X1's RTSPS (322); 0: any"
        ),
    ] = 6000,
    serial: Annotated[str, typer.Option(help="The printer's serial number.")] = "01S00A000000001",
    access_code: Annotated[str, typer.Option(help="The LAN access code (user bblp).")] = "12345678",
    model: Annotated[str, typer.Option(help="X1C, P1S, A1 or A1MINI.")] = "X1C",
    storage: StorageOpt = None,
    speed: Annotated[
        float, typer.Option(help="How much faster than the G-code's estimate it prints.")
    ] = 60.0,
    developer_mode: Annotated[
        bool, typer.Option(help="LAN-only Developer Mode (off: commands refused).")
    ] = True,
) -> None:
    """Emulate a Bambu Lab printer in LAN mode: MQTT over TLS and implicit FTPS."""
    from printers.emulators.bambu import BambuEmulator

    model = emulated_model(model, bambu=True)
    with _emulator_storage(storage, "bambu") as files:
        emu = BambuEmulator(
            host=host,
            mqtt_port=mqtt_port,
            ftps_port=ftps_port,
            camera_port=camera_port,
            serial=serial,
            access_code=access_code,
            model=model,
            storage_dir=files,
            speed=speed,
            developer_mode=developer_mode,
        )
        _serve_emulator(f"Bambu {model}", emu, files)


def _serve_emulator(kind: str, emu: Any, storage: Path, after_url: str = "") -> None:
    _setup_logging()
    # Ctrl-C is ours before anyone is told the emulator is up: a SIGINT just after that line used to
    # raise KeyboardInterrupt past emu.stop(), and its server threads kept the process alive.
    stop = _wait_for_stop()
    emu.start()
    try:
        typer.echo(f"{kind} emulator on {emu.url}{after_url}, files in {storage}", err=True)
        stop.wait()
    finally:
        emu.stop()


# -- using the farm -----------------------------------------------------------------------------
@app.command()
def submit(
    source: Annotated[
        str,
        typer.Argument(
            help="A build123d .py file (sent with its project: the nearest folder up with pyproject.toml, "
            "requirements.txt or .git; with none, its own folder), an .stl/.3mf mesh, a ready "
            ".gcode/.bgcode/.gcode.3mf, or a git URL."
        ),
    ],
    file: Annotated[
        str | None, typer.Option("--file", help="With a git URL: the .py file in the repository to build.")
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(help="With a git URL: the branch, tag or commit (default: its default branch)."),
    ] = None,
    artifact: Annotated[
        str | None, typer.Option(help="The function to build (default: the only one).")
    ] = None,
    param: Annotated[list[str] | None, typer.Option(help="A parameter NAME=VALUE; repeat for more.")] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="Parameters from a JSON object file; --param overrides.")
    ] = None,
    matrix: Annotated[
        list[str] | None,
        typer.Option(help="NAME=A,B,C: one build per value; several make every combination."),
    ] = None,
    no_project: Annotated[
        bool, typer.Option("--no-project", help="Send the .py file alone, without its project.")
    ] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Rebuild even if the CAD cache has it.")
    ] = False,
    step: Annotated[
        bool, typer.Option("--step", help="Also export a STEP file (a .py design); listed on the build.")
    ] = False,
    copies: Annotated[int, typer.Option(min=1, max=100, help="How many to print.")] = 1,
    per_plate: Annotated[
        int, typer.Option(min=1, max=100, help="Copies arranged on one plate; one job per plate.")
    ] = 1,
    infill: InfillOpt = None,
    supports: SupportsOpt = None,
    brim: BrimOpt = None,
    setting: SetOpt = None,
    material: Annotated[str, typer.Option(help="PLA, PETG, ABS, ASA or TPU.")] = "PLA",
    quality: Annotated[str, typer.Option(help="draft, standard or fine.")] = "standard",
    color: Annotated[str | None, typer.Option(help="Filament colour wanted.")] = None,
    printer_model: Annotated[str | None, typer.Option(help="Print only on this model (e.g. MINI).")] = None,
    priority: Annotated[int, typer.Option(help="Higher prints first.")] = 0,
    printer: Annotated[str | None, typer.Option(help="Print only on this printer (by name).")] = None,
    nozzle: Annotated[float | None, typer.Option(help="Only printers with this nozzle (mm).")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only printers with this tag (repeatable), e.g. enclosed.")
    ] = None,
    attempts: Annotated[
        int | None, typer.Option(min=1, max=10, help="Prints to try before the job stays failed (default 2).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every job has ended.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a design to the farm. With --wait, follow it to the end (exit 1 if a job failed).

    With --matrix, --json prints a list of builds (one per parameter set) instead of one build.
    """
    import tempfile

    from farm.commands.params import ParamError, combine

    try:
        param_sets = combine(param or [], params_file, matrix)
    except ParamError as exc:
        _die(str(exc), 2)
    options = {
        "entry": artifact,
        "no_cache": no_cache,
        "step": step,
        "copies": copies,
        "material": material,
        "quality": quality,
        "color": color,
        "printer_model": printer_model,
        "priority": priority,
        "printer": printer,
        "nozzle": nozzle,
        "attempts": attempts,
        "tags": tag or [],
        "per_plate": per_plate,
        "infill": infill,
        "supports": supports,
        "brim": brim,
        "settings": parse_settings(setting),
    }
    with tempfile.TemporaryDirectory(prefix="farm-submit-") as tmp, _client() as client:
        upload = _prepare_upload(source, file, ref, no_project, Path(tmp), options)
        if len(param_sets) > 1:  # the coordinator's checks first: a matrix is queued whole or not at all
            _check_param_sets(upload, options, param_sets)
        try:
            builds = [client.submit(upload, {**options, "params": p}) for p in param_sets]
        except FarmError as exc:
            _die_farm(exc)
        try:
            if wait:
                builds = _follow(client, builds, quiet=as_json)
        except FarmError as exc:
            _die(str(exc))
    if as_json:
        _emit(builds if matrix else builds[0])
    else:
        for build in builds:
            _print_build(build)
    if wait and any(j["state"] != "done" for b in builds for j in b["jobs"]):
        raise typer.Exit(1)


def _check_param_sets(upload: Path, options: dict[str, Any], param_sets: list[dict[str, Any]]) -> None:
    """Each parameter set checked as the coordinator will check it (farm/sources.py), before
    any is sent: otherwise the builds before a bad one would be queued and the rest refused."""
    from farm.pipeline import source_kind
    from farm.sources import SourceProblem, check_cad_source

    entry_file = options.get("entry_file")
    if source_kind(entry_file or upload.name) != "cad":
        return
    for params in param_sets:
        try:
            check_cad_source(upload, entry_file, options["entry"], params, name=upload.name)
        except SourceProblem as exc:
            _die(f"{exc} (with {json.dumps(params)}); nothing was submitted", 2)


def _prepare_upload(
    source: str, file: str | None, ref: str | None, no_project: bool, tmp: Path, options: dict[str, Any]
) -> Path:
    """The file to upload: the design itself, or its project (a local folder or a git commit) packed."""
    from farm.project import ProjectError, is_git_url, pack_file, pack_git

    try:
        if is_git_url(source):
            if not file:
                _die("a git URL needs --file: the .py file in the repository to build", 2)
            packed = pack_git(source, ref, file, tmp, schemes=get_settings().git_schemes)
            options["git"] = {"url": source, "ref": ref, "commit": packed.git_commit}
        else:
            if file or ref:
                _die("--file and --ref go with a git URL", 2)
            path = Path(source)
            if not path.exists():
                _die(f"{path} does not exist", 2)
            if not path.is_file():
                _die(f"{path} is not a file; submit a .py, .stl or .3mf file", 2)
            packed = pack_file(path, tmp) if path.suffix == ".py" and not no_project else None
            if packed is None:
                return path
    except ProjectError as exc:
        _die(str(exc), 2)
    options["entry_file"] = packed.entry
    return packed.archive


def _follow(client: FarmClient, builds: list[dict[str, Any]], *, quiet: bool) -> list[dict[str, Any]]:
    """Follow every job of every build at once (a --matrix is many builds) until all have ended.

    On a terminal: one progress bar per job with its ETA (the agent's `remaining_s` while it
    prints, else the slicer's estimate of the print). Piped (a log, CI): a line per change.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )
    said: dict[int, tuple[str, str]] = {}
    with progress:
        tasks = {j["id"]: progress.add_task("", total=100, eta="") for b in builds for j in b["jobs"]}
        while True:
            for b in builds:
                for j in b["jobs"]:
                    text, eta = _job_line(b, j), _job_eta(b, j, datetime.now())
                    progress.update(tasks[j["id"]], description=text, completed=j["progress"] or 0, eta=eta)
                    seen = (text, _bucket(j))  # a new line for a new state or quarter, not a new ETA
                    if not quiet and not console.is_terminal and said.get(j["id"]) != seen:
                        said[j["id"]] = seen
                        typer.echo(", ".join(filter(None, [*seen, eta])), err=True)
            going = [i for i, b in enumerate(builds) if not all(j["state"] in TERMINAL for j in b["jobs"])]
            if not going:
                return builds
            time.sleep(0.5)
            for i in going:
                builds[i] = client.get(f"/api/builds/{builds[i]['id']}")


def _job_line(build: dict[str, Any], job: dict[str, Any]) -> str:
    where = f" on {job['printer']}" if job["printer"] else ""
    state = build["stage"] if job["state"] == "waiting" else job["state"]
    return f"job {job['id']} ({build['source']}): {state}{where}"


def _job_eta(build: dict[str, Any], job: dict[str, Any], now: datetime) -> str:
    """When it should be done: from the printer while it prints, else the slicer's estimate (the
    longest, while it is not yet known which printer model takes it)."""
    from farm.watch import eta

    if job["state"] in TERMINAL:
        return ""
    if job.get("remaining_s") is not None:
        return f"ETA {eta(job['remaining_s'], now)}"
    estimates = [job["print_time_s"]] if job.get("print_time_s") else [
        s["print_time_s"]
        for s in build.get("slices", [])
        if s.get("print_time_s") and s.get("copies") == job.get("copies")
        and (not job.get("printer_model") or s.get("printer_model") == job["printer_model"])
    ]  # fmt: skip
    if estimates:
        return f"prints in about {eta(max(estimates), now).split(' ')[0]}"
    return ""


def _bucket(job: dict[str, Any]) -> str:
    """Progress in quarters, so that a piped log gets a few lines per print, not one a second."""
    if job["progress"] is None or job["state"] in TERMINAL:
        return ""
    return f"{int(job['progress'] // 25 * 25)}%"


def _print_build(build: dict[str, Any]) -> None:
    typer.echo(f"build {build['id']} ({build['source']}): {build['stage']}")
    if build["error"]:
        typer.secho(f"  error: {build['error']}", fg="red")
    if build.get("skipped"):
        typer.echo(f"  skipped (shown, not printed): {', '.join(build['skipped'])}")
    for j in build["jobs"]:
        line = f"  job {j['id']}: {j['state']}"
        if j["printer"]:
            line += f" on {j['printer']}"
        if j["error"] and j["error"] != build["error"]:
            line += f" - {j['error']}"
        typer.echo(line)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    from farm.watch import stdout_console

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r])
    stdout_console().print(table)


def _get(path: str, **params: Any) -> Any:
    with _client() as client:
        try:
            return client.get(path, **params)
        except FarmError as exc:
            _die(str(exc))


def _get_all(path: str, most: int | None = None, **params: Any) -> list[Any]:
    """Every item of a list endpoint (or the first `most`), following its pages."""
    with _client() as client:
        try:
            return client.get_all(path, most=most, **params)
        except FarmError as exc:
            _die(str(exc))
    return []  # not reached: _die exits


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Builds by stage, jobs by state and printers by state."""
    data = _get("/api/status")
    if as_json:
        _emit(data)
        return
    for section in ("builds", "jobs", "printers"):
        counts = ", ".join(f"{k} {v}" for k, v in data[section].items() if v) or "none"
        typer.echo(f"{section:9} {counts}")
    for worker in data.get("workers", []):
        walls = {"isolated": "sandboxed", "off": "UNSANDBOXED (FARM_CAD_SANDBOX=off)", "none": "no CAD"}
        queues = "+".join(worker["queues"])
        walled = walls.get(worker["sandbox"], worker["sandbox"])
        typer.echo(f"{'worker':9} {worker['name']} ({queues}): {walled}")


@app.command()
def history(
    printer: Annotated[str | None, typer.Option(help="Only jobs printed on this printer.")] = None,
    material: Annotated[str | None, typer.Option(help="Only jobs in this material, e.g. PETG.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only jobs of this token's builds.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs that ended at or after this UTC time, e.g. 2026-12-01.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only jobs that ended before this UTC time.")] = None,
    state: Annotated[str | None, typer.Option(help="done, failed or cancelled (default: all three).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the newest jobs to list.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Finished, failed and cancelled jobs, and totals per printer and material: prints, hours on
    the printer, filament (the slicer's estimate)."""
    given = {"printer": printer, "material": material, "owner": owner, "since": since, "until": until}
    params = {k: v for k, v in {**given, "state": state}.items() if v is not None}
    with _client() as client:
        try:
            data = client.get("/api/history", limit=limit, **params)
        except FarmError as exc:
            _die_farm(exc)
    if as_json:
        _emit(data)
        return
    for key in ("printer", "material"):
        rows = data["totals"][f"by_{key}"]
        _table(
            f"totals by {key}",
            [key, "done", "failed", "cancelled", "hours", "filament g"],
            [[r[key], r["done"], r["failed"], r["cancelled"], r["hours"], r["filament_g"]] for r in rows],
        )
    every = data["totals"]["all"]
    typer.echo(
        f"all: {every['done']} done, {every['failed']} failed, {every['cancelled']} cancelled, "
        f"{every['hours']} h printing, {every['filament_g']} g of filament"
    )
    _table(
        f"newest {len(data['jobs'])} jobs",
        ["id", "source", "state", "printer", "material", "ended", "error"],
        [
            [j["id"], j["source"], j["state"], j["printer"], j["material"], j["finished_at"], j["error"]]
            for j in data["jobs"]
        ],
    )


jobs_app = typer.Typer(help="List jobs (with no command), retry failed ones, explain where they go.")
app.add_typer(jobs_app, name="jobs")


@jobs_app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state, e.g. ready or failed.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the newest this many jobs (default: every one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    data = _get_all("/api/jobs", most=limit, **({"state": state} if state else {}))
    if as_json:
        _emit(data)
        return
    _table(
        "jobs",
        ["id", "source", "state", "printer", "progress", "error"],
        [
            [
                j["id"],
                j["source"],
                j["state"],
                j["printer"],
                f"{j['progress']:.0f}%" if j["progress"] is not None else "",
                j["error"],
            ]
            for j in data
        ],
    )


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[int, typer.Argument(help="The failed job to send back to the queue.")],
    as_json: JsonOpt = False,
) -> None:
    """Give a failed job one more attempt, on any printer that can take it; if its build failed, the
    part that failed (the CAD run or the slicing) is made again first."""
    data = _send("POST", f"/api/jobs/{job_id}/retry")
    if as_json:
        _emit(data)
    elif data["state"] == "waiting":
        typer.echo(f"job {job_id}: waiting while its build is made again (build {data['build']})")
    else:
        typer.echo(f"job {job_id}: back in the queue ({data['state']})")


@jobs_app.command("explain")
def jobs_explain(
    job_id: Annotated[int, typer.Argument(help="The job to explain.")], as_json: JsonOpt = False
) -> None:
    """Say why each printer would or would not take a job."""
    data = _get(f"/api/jobs/{job_id}/explain")
    if as_json:
        _emit(data)
        return
    job = data["job"]
    typer.echo(f"job {job_id} is {job['state']}" + (f" on {job['printer']}" if job["printer"] else ""))
    for entry in data["printers"]:
        if entry["eligible"]:
            place = f", next in its queue at #{entry['position']}" if entry.get("position") else ""
            typer.secho(f"  {entry['printer']}: can take it{place}", fg="green")
        else:
            typer.echo(f"  {entry['printer']}: " + "; ".join(entry["reasons"]))


@app.command("job")
def job(
    job_id: Annotated[int, typer.Argument(help="The job to show.")],
    snapshot: Annotated[
        Path | None, typer.Option(help="Save its printer camera's latest still here (see --moment).")
    ] = None,
    moment: Annotated[str, typer.Option(help="Which still: latest, start, end or failure.")] = "latest",
    as_json: JsonOpt = False,
) -> None:
    """One job: its state, printer, progress, attempts and error; its camera stills with --snapshot."""
    data = _get(f"/api/jobs/{job_id}")
    if snapshot is not None:
        with _client() as client:
            try:
                image = client.request("GET", f"/api/jobs/{job_id}/snapshot", params={"moment": moment})
            except FarmError as exc:
                _die_farm(exc)
                return
        snapshot.write_bytes(image.content)
        kind = image.headers.get("content-type")
        typer.echo(f"job {job_id}: {kind} snapshot saved to {snapshot}", err=True)
    if as_json:
        _emit(data)
        return
    for key in ("id", "source", "state", "printer", "printer_model", "material", "color", "nozzle",
                "priority", "progress", "remaining_s", "print_time_s", "filament_g", "attempts",
                "max_attempts", "retry_at", "error", "created_at", "started_at", "finished_at"):  # fmt: skip
        if data.get(key) not in (None, ""):
            typer.echo(f"{key:14} {data[key]}")


@app.command()
def watch(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option(help="Draw once and exit (for scripts and tests).")] = False,
) -> None:
    """A live view of printers and active jobs, with progress bars and ETAs. Ctrl-C ends it."""
    from farm.watch import run_watch

    with _client() as client:
        try:
            run_watch(client, interval=interval, once=once)
        except FarmError as exc:
            _die(str(exc))


printers_app = typer.Typer(help="List printers (with no command), set what is loaded, clear beds.")
app.add_typer(printers_app, name="printers")


@printers_app.callback(invoke_without_command=True)
def printers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List printers and what they are doing."""
    if ctx.invoked_subcommand is not None:
        return
    data = _get_all("/api/printers")
    if as_json:
        _emit(data)
        return
    _table(
        "printers",
        ["name", "model", "protocol", "state", "material", "job", "progress", "message"],
        [
            [
                p["name"],
                p["model"],
                p["protocol"],
                p["state"],
                " ".join(filter(None, [p["material"], p["color"]])),
                p["job"],
                f"{p['progress']:.0f}%" if p["progress"] is not None else "",
                p["message"],
            ]
            for p in data
        ],
    )


def _send(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with _client() as client:
        try:
            return client.request(method, path, json=body or {}).json()
        except FarmError as exc:
            _die_farm(exc)


printers_app.command("snapshot")(snapshot_cmd.printers_snapshot)


@printers_app.command("add")
def printers_add(
    name: Annotated[str, typer.Argument(help="The printer's name in the farm, e.g. mk4-1.")],
    model: Annotated[str, typer.Option(help="Its model, e.g. MK4, MINI, P1S (`farm profiles`).")],
    driver: Annotated[
        str, typer.Option(help="How its Pi talks to it: prusalink, octoprint, moonraker or bambu.")
    ] = "prusalink",
    expires: Annotated[str, typer.Option(help="How long the code stays valid: 30m, 2h, 1d.")] = "30m",
    url: Annotated[
        str | None, typer.Option(help="The coordinator's address as the Pi reaches it [default: FARM_URL].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a printer and print a one-time code, with the command that enrols its Pi (admin)."""
    m = _DURATION.fullmatch(expires.strip().lower())
    if m is None:
        raise typer.BadParameter(f"'{expires}' is not a duration (30m, 2h, 1d)", param_hint="--expires")
    body = {"printer": name, "model": model, "driver": driver, "ttl_s": int(m[1]) * _UNIT_S[m[2]]}
    data = _send("POST", "/api/printers/enrol", body)
    base = (url or get_settings().url).rstrip("/")
    command = f"farm agent enroll {base} {data['code']}"
    if as_json:
        _emit({**data, "command": command, "install": f"curl -fsSL {base}/agent/install.sh | sh"})
        return
    typer.echo(
        f"{name}: a {data['model']} ({data['driver']}); "
        f"enrolment code, single use, until {data['expires_at']}:\n"
        f"  {data['code']}\n"
        f"On its Pi, install the agent (if it is not yet) and enrol:\n"
        f"  curl -fsSL {base}/agent/install.sh | sh\n"
        f"  {command}\n"
        f"then: farm agent install-service"
    )


@printers_app.command("clear")
def printers_clear(
    name: Annotated[str, typer.Argument(help="The printer whose bed is now empty.")], as_json: JsonOpt = False
) -> None:
    """Confirm a printer's bed is empty, so it takes the next job."""
    data = _send("POST", f"/api/printers/{name}/clear")
    _emit(data) if as_json else typer.echo(f"{name}: bed clear, ready for the next job")


@printers_app.command("remove")
def printers_remove(
    name: Annotated[str, typer.Argument(help="The printer to take out of the farm.")],
    as_json: JsonOpt = False,
) -> None:
    """Take a printer out of the farm (its agent registers it again if it is still running)."""
    data = _send("DELETE", f"/api/printers/{name}")
    _emit(data) if as_json else typer.echo(f"{name}: removed")


@printers_app.command("set")
def printers_set(
    name: Annotated[str, typer.Argument(help="The printer to change.")],
    material: Annotated[str | None, typer.Option(help="Loaded: PLA, PETG, ABS, ASA or TPU.")] = None,
    color: Annotated[str | None, typer.Option(help="Its colour ('' for any).")] = None,
    nozzle: Annotated[float | None, typer.Option(help="The fitted nozzle's diameter in mm.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Its tags, replacing the old ones (repeatable); --tag '' clears.")
    ] = None,
    location: Annotated[str | None, typer.Option(help="Where it stands, e.g. 'shelf 2'.")] = None,
    power_group: Annotated[
        str | None, typer.Option(help="Its circuit: only so many printers of a group heat up at once.")
    ] = None,
    auto_eject: Annotated[bool | None, typer.Option(help="Whether it clears its own bed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Say what a printer has loaded: jobs go only to printers with their material and colour."""
    body = {
        k: v
        for k, v in {
            "material": material,
            "color": color,
            "nozzle": nozzle,
            "tags": [t for t in tag if t] if tag is not None else None,
            "location": location,
            "power_group": power_group,
            "auto_eject": auto_eject,
        }.items()
        if v is not None
    }
    if not body:
        _die("nothing to set: see `farm printers set --help` for what can be set", 2)
    data = _send("PATCH", f"/api/printers/{name}", body)
    if as_json:
        _emit(data)
    else:
        typer.echo(
            f"{name}: {data['material']} {data['color'] or '(any colour)'}, {data['nozzle']:g} mm nozzle, "
            f"auto-eject {'on' if data['auto_eject'] else 'off'}"
        )


app.add_typer(notify_app, name="notify")
app.add_typer(projects_app, name="projects")
tokens_app = typer.Typer(help="Tokens for people, workers and agents (admin only).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
_DURATION = re.compile(r"(\d+)\s*([mhdw])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _expiry(text: str) -> str:
    """`30d`, `12h`, `2w`, `90m` from now, or an ISO date/time (UTC unless it says otherwise)."""
    now = datetime.now(UTC)
    if m := _DURATION.fullmatch(text.strip().lower()):
        return (now + timedelta(seconds=int(m[1]) * _UNIT_S[m[2]])).isoformat()
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is neither a duration (30d, 12h, 2w, 90m) nor an ISO date (2027-01-31)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="A name to know it by, e.g. 'alice' or 'agent-mk4-1'.")],
    role: Annotated[
        str,
        typer.Option(
            help="admin (everything), submitter (submits; cancels and retries its own jobs), "
            "viewer (reads only), worker (CAD and slicing) or agent (one printer's agent)."
        ),
    ] = "submitter",
    printer: Annotated[
        str | None, typer.Option(help="For an agent token: the one printer it acts for.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="Refused after: a duration (30d, 12h, 2w) or an ISO date. Default: never."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a token. Its secret is printed once: give it to the person or machine as FARM_TOKEN."""
    body = {
        "name": name,
        "role": role,
        "printer": printer,
        "expires_at": _expiry(expires) if expires else None,
    }
    data = _send("POST", "/api/tokens", body)
    if as_json:
        _emit(data)
        return
    bound = f" for printer {data['printer']}" if data["printer"] else ""
    until = f", until {data['expires_at']}" if data["expires_at"] else ""
    typer.echo(f"{data['role']} token '{name}'{bound}{until} (shown only now):\n{data['token']}")


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """List tokens (names and roles; secrets are never shown again)."""
    data = _get_all("/api/tokens")
    if as_json:
        _emit(data)
        return
    _table(
        "tokens",
        ["name", "role", "printer", "created", "expires", "revoked"],
        [
            [t["name"], t["role"], t["printer"], t["created_at"], t["expires_at"], t["revoked_at"]]
            for t in data
        ],
    )


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="The token to revoke, by name.")], as_json: JsonOpt = False
) -> None:
    """Revoke a token for good: the coordinator refuses it from now on (its name may be given again)."""
    data = _send("DELETE", f"/api/tokens/{name}")
    _emit(data) if as_json else typer.echo(f"token '{name}': revoked")


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(help="The job to cancel.")], as_json: JsonOpt = False
) -> None:
    """Cancel a job: a queued one never prints; a printing one is stopped on its printer."""
    data = _send("POST", f"/api/jobs/{job_id}/cancel")
    _emit(data) if as_json else typer.echo(f"job {job_id}: cancelled")


def main() -> None:
    app()
