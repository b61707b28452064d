"""`farm submit`: send a design to the farm, and with --wait follow its jobs to the end."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from farm.commands.common import JsonOpt, client, die, die_farm, emit
from farm.commands.options import BrimOpt, InfillOpt, SetOpt, SupportsOpt, parse_settings
from farm.commands.params import ParamError, combine
from farm.commands.watch import eta
from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.core.client import FarmClient, FarmError
from farm.core.project import ProjectError, is_git_url, pack_file, pack_git
from farm.core.settings import get_settings
from farm.core.wire import BuildView, GitSource, JobView, SubmitOptions

TERMINAL = {"done", "failed", "cancelled"}

SourceArg = Annotated[
    str,
    typer.Argument(
        help="A build123d .py file (sent with its project: the nearest folder up with pyproject.toml, "
        "requirements.txt or .git; with none, its own folder), an .stl/.3mf mesh, a ready "
        ".gcode/.bgcode/.gcode.3mf, or a git URL."
    ),
]
FileOpt = Annotated[
    str | None, typer.Option("--file", help="With a git URL: the .py file in the repository to build.")
]
RefOpt = Annotated[
    str | None,
    typer.Option(help="With a git URL: the branch, tag or commit (default: its default branch)."),
]
ArtifactOpt = Annotated[str | None, typer.Option(help="The function to build (default: the only one).")]
ParamOpt = Annotated[list[str] | None, typer.Option(help="A parameter NAME=VALUE; repeat for more.")]
ParamsFileOpt = Annotated[
    Path | None, typer.Option("--params", help="Parameters from a JSON object file; --param overrides.")
]
MatrixOpt = Annotated[
    list[str] | None,
    typer.Option(help="NAME=A,B,C: one build per value; several make every combination."),
]
NoProjectOpt = Annotated[
    bool, typer.Option("--no-project", help="Send the .py file alone, without its project.")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Rebuild even if the CAD cache has it.")]
StepOpt = Annotated[
    bool, typer.Option("--step", help="Also export a STEP file (a .py design); listed on the build.")
]
CopiesOpt = Annotated[int, typer.Option(min=1, max=100, help="How many to print.")]
PerPlateOpt = Annotated[
    int, typer.Option(min=1, max=100, help="Copies arranged on one plate; one job per plate.")
]
MaterialOpt = Annotated[str, typer.Option(help="PLA, PETG, ABS, ASA or TPU.")]
QualityOpt = Annotated[str, typer.Option(help="draft, standard or fine.")]
ColorOpt = Annotated[str | None, typer.Option(help="Filament colour wanted.")]
PrinterModelOpt = Annotated[str | None, typer.Option(help="Print only on this model (e.g. MINI).")]
PriorityOpt = Annotated[int, typer.Option(help="Higher prints first.")]
PrinterOpt = Annotated[str | None, typer.Option(help="Print only on this printer (by name).")]
NozzleOpt = Annotated[float | None, typer.Option(help="Only printers with this nozzle (mm).")]
TagOpt = Annotated[
    list[str] | None, typer.Option(help="Only printers with this tag (repeatable), e.g. enclosed.")
]
AttemptsOpt = Annotated[
    int | None, typer.Option(min=1, max=10, help="Prints to try before the job stays failed (default 2).")
]
WaitOpt = Annotated[bool, typer.Option(help="Wait until every job has ended.")]


def submit(
    source: SourceArg,
    file: FileOpt = None,
    ref: RefOpt = None,
    artifact: ArtifactOpt = None,
    param: ParamOpt = None,
    params_file: ParamsFileOpt = None,
    matrix: MatrixOpt = None,
    no_project: NoProjectOpt = False,
    no_cache: NoCacheOpt = False,
    step: StepOpt = False,
    copies: CopiesOpt = 1,
    per_plate: PerPlateOpt = 1,
    infill: InfillOpt = None,
    supports: SupportsOpt = None,
    brim: BrimOpt = None,
    setting: SetOpt = None,
    material: MaterialOpt = "PLA",
    quality: QualityOpt = "standard",
    color: ColorOpt = None,
    printer_model: PrinterModelOpt = None,
    priority: PriorityOpt = 0,
    printer: PrinterOpt = None,
    nozzle: NozzleOpt = None,
    tag: TagOpt = None,
    attempts: AttemptsOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a design to the farm. With --wait, follow it to the end (exit 1 if a job failed).

    With --matrix, --json prints a list of builds (one per parameter set) instead of one build.
    """
    try:
        param_sets = combine(param or [], params_file, matrix)
    except ParamError as exc:
        die(str(exc), 2)
    try:  # the wire's SubmitOptions (farm/core/wire.py): the names are the coordinator's, not the flags'
        options = SubmitOptions(
            entry=artifact, no_cache=no_cache, step=step, copies=copies, material=material,
            quality=quality, color=color, printer_model=printer_model, priority=priority,
            printer=printer, nozzle=nozzle, attempts=attempts, tags=tag or [],
            per_plate=per_plate, infill=infill, supports=supports, brim=brim,
            settings=parse_settings(setting),
        )  # fmt: skip
    except ValidationError as exc:
        die("; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors()), 2)
    with tempfile.TemporaryDirectory(prefix="farm-submit-") as tmp, client() as farm:
        upload = _prepare_upload(source, file, ref, no_project, Path(tmp), options)
        builds = _send_builds(farm, upload, options, param_sets, wait=wait, quiet=as_json)
    if as_json:
        emit(builds if matrix else builds[0])
    else:
        for build in builds:
            _print_build(build)
    if wait and any(j.state != "done" for b in builds for j in b.jobs):
        raise typer.Exit(1)


def _send_builds(
    farm: FarmClient,
    upload: Path,
    options: SubmitOptions,
    param_sets: list[dict[str, Any]],
    *,
    wait: bool,
    quiet: bool,
) -> list[BuildView]:
    """One build per parameter set, followed to the end with `wait`."""
    if len(param_sets) > 1:  # the coordinator's checks first: a matrix is queued whole or not at all
        _check_param_sets(upload, options, param_sets)
    try:
        builds = [farm.submit(upload, options.model_copy(update={"params": p})) for p in param_sets]
    except FarmError as exc:
        die_farm(exc)
    try:
        return _follow(farm, builds, quiet=quiet) if wait else builds
    except FarmError as exc:
        die(str(exc))


def _check_param_sets(upload: Path, options: SubmitOptions, param_sets: list[dict[str, Any]]) -> None:
    """Each parameter set checked as the coordinator will check it (farm/coordinator/sources.py), before
    any is sent: otherwise the builds before a bad one would be queued and the rest refused."""
    from farm.coordinator.pipeline import source_kind  # lazy: sqlmodel, the server extra

    entry_file = options.entry_file
    if source_kind(entry_file or upload.name) != "cad":
        return
    for params in param_sets:
        try:
            check_cad_source(upload, entry_file, options.entry, params, name=upload.name)
        except SourceProblem as exc:
            die(f"{exc} (with {json.dumps(params)}); nothing was submitted", 2)


def _prepare_upload(
    source: str, file: str | None, ref: str | None, no_project: bool, tmp: Path, options: SubmitOptions
) -> Path:
    """The file to upload: the design itself, or its project (a local folder or a git commit) packed."""
    try:
        if is_git_url(source):
            if not file:
                die("a git URL needs --file: the .py file in the repository to build", 2)
            packed = pack_git(source, ref, file, tmp, schemes=get_settings().git_schemes)
            options.git = GitSource(url=source, ref=ref, commit=packed.git_commit)
        else:
            if file or ref:
                die("--file and --ref go with a git URL", 2)
            path = Path(source)
            if not path.exists():
                die(f"{path} does not exist", 2)
            if not path.is_file():
                die(f"{path} is not a file; submit a .py, .stl or .3mf file", 2)
            local = pack_file(path, tmp) if path.suffix == ".py" and not no_project else None
            if local is None:
                return path
            packed = local
    except ProjectError as exc:
        die(str(exc), 2)
    options.entry_file = packed.entry
    return packed.archive


def _follow(client: FarmClient, builds: list[BuildView], *, quiet: bool) -> list[BuildView]:
    """Follow every job of every build at once (a --matrix is many builds) until all have ended.

    On a terminal: one progress bar per job with its ETA (the agent's `remaining_s` while it
    prints, else the slicer's estimate of the print). Piped (a log, CI): a line per change.
    """
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
        tasks = {j.id: progress.add_task("", total=100, eta="") for b in builds for j in b.jobs}
        while True:
            for b in builds:
                for j in b.jobs:
                    text, eta = _job_line(b, j), _job_eta(b, j, datetime.now())
                    progress.update(tasks[j.id], description=text, completed=j.progress or 0, eta=eta)
                    seen = (text, _bucket(j))  # a new line for a new state or quarter, not a new ETA
                    if not quiet and not console.is_terminal and said.get(j.id) != seen:
                        said[j.id] = seen
                        typer.echo(", ".join(filter(None, [*seen, eta])), err=True)
            going = [i for i, b in enumerate(builds) if not all(j.state in TERMINAL for j in b.jobs)]
            if not going:
                return builds
            time.sleep(0.5)
            for i in going:
                builds[i] = client.build(builds[i].id)


def _job_line(build: BuildView, job: JobView) -> str:
    where = f" on {job.printer}" if job.printer else ""
    state = build.stage if job.state == "waiting" else job.state
    return f"job {job.id} ({build.source}): {state}{where}"


def _job_eta(build: BuildView, job: JobView, now: datetime) -> str:
    """When it should be done: from the printer while it prints, else the slicer's estimate (the
    longest, while it is not yet known which printer model takes it)."""
    if job.state in TERMINAL:
        return ""
    if job.remaining_s is not None:
        return f"ETA {eta(job.remaining_s, now)}"
    estimates = [job.print_time_s] if job.print_time_s else [
        s.print_time_s
        for s in build.slices
        if s.print_time_s and s.copies == job.copies
        and (not job.printer_model or s.printer_model == job.printer_model)
    ]  # fmt: skip
    if estimates:
        return f"prints in about {eta(max(estimates), now).split(' ')[0]}"
    return ""


def _bucket(job: JobView) -> str:
    """Progress in quarters, so that a piped log gets a few lines per print, not one a second."""
    if job.progress is None or job.state in TERMINAL:
        return ""
    return f"{int(job.progress // 25 * 25)}%"


def _print_build(build: BuildView) -> None:
    typer.echo(f"build {build.id} ({build.source}): {build.stage}")
    if build.error:
        typer.secho(f"  error: {build.error}", fg="red")
    if build.skipped:
        typer.echo(f"  skipped (shown, not printed): {', '.join(build.skipped)}")
    for j in build.jobs:
        line = f"  job {j.id}: {j.state}"
        if j.printer:
            line += f" on {j.printer}"
        if j.error and j.error != build.error:
            line += f" - {j.error}"
        typer.echo(line)
