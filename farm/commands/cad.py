"""`farm build` and `farm inspect`: the CAD stage on this machine, no farm needed.

`farm build` runs the worker's own sandbox (CadRunner) and cache (CadCache), so what builds here
builds on the farm. Imports of `workers` stay inside the commands: `farm.cli` must import on an
agent that has neither build123d nor the workers package's dependencies.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from farm.commands import extras
from farm.commands.atomic import copy_into_place
from farm.commands.common import die
from farm.commands.params import ParamError, combine
from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.core.entry_points import list_entry_points
from farm.core.project import ProjectError, find_root, pack_file
from farm.core.settings import get_settings

if TYPE_CHECKING:
    from workers.cad_runner import CadRunner
    from workers.cad_types import CadRequest, CadResult

CACHE_DIR_NAME = "cad-cache"


def register(app: typer.Typer) -> None:
    """Add `build` and `inspect` as top-level commands of `app`."""
    app.command("build")(build)
    app.command("inspect")(inspect)


def build(
    path: Annotated[Path, typer.Argument(help="A build123d .py script.")],
    artifact: Annotated[
        str | None, typer.Option(help="The function to build (default: the only one).")
    ] = None,
    param: Annotated[list[str] | None, typer.Option(help="A parameter NAME=VALUE; repeat for more.")] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="Parameters from a JSON object file; --param overrides.")
    ] = None,
    no_project: Annotated[
        bool, typer.Option("--no-project", help="Build the .py file alone, without its project.")
    ] = False,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Where to write <name>.stl, <name>.3mf and the preview <name>.png."
        ),
    ] = Path("."),
    step: Annotated[
        bool, typer.Option("--step", help="Also write <name>.step (B-rep, for other CAD).")
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Build even if the cache has it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Build a script to STL, 3MF and a PNG preview locally, in the same sandbox and cache as a CAD worker.

    The mesh is checked (closed, not flat); several shapes (a list, show(a, b), a compound of
    separate solids) become separate objects in the 3MF. --step adds a STEP file.

    A script inside a project is built as the farm builds it: the project packed (minus what
    .gitignore excludes) and its requirements installed into a cached environment. A script in no
    project is packed with its own folder, so that files beside it load.
    """
    extras.require("build", "worker")
    from workers.cad_cache import CadCache, cached_build  # lazy: the worker extra, not in the agent install
    from workers.cad_types import CadError  # lazy: the worker extra, not in the agent install
    from workers.sandbox_probe import Unavailable  # lazy: the worker extra, not in the agent install

    _require_file(path)
    params = _params(param, params_file)
    inputs = [params_file] if params_file is not None else []
    started = time.monotonic()
    runner = local_runner()  # starts its fork server (~4 s) only if the cache misses
    try:
        with _scratch_dir() as scratch:
            request = _request(
                path, artifact, params, no_project, Path(scratch), step=step, ours=[output, *inputs]
            )
            result, hit = cached_build(runner, CadCache(cache_root()), request, use_cache=not no_cache)
    except CadError as exc:
        die(exc.message)
    except Unavailable as exc:
        die(str(exc))
    finally:
        runner.close()
    try:
        files = _deliver(result, output, path.stem)
    except OSError as exc:
        die(f"cannot write the outputs to {output}: {exc}")
    _report(result, files, hit, time.monotonic() - started, as_json)


def inspect(
    path: Annotated[Path, typer.Argument(help="A build123d .py script.")],
    shown: Annotated[
        bool,
        typer.Option(
            "--shown",
            help="Run the script (sandboxed, as a build) and list what it shows: names, kinds, "
            "colours, which would print. Nothing is meshed or printed.",
        ),
    ] = False,
    artifact: Annotated[
        str | None, typer.Option(help="With --shown: the function to run (default: as a build picks).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="With --shown: a parameter NAME=VALUE; repeat for more.")
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="With --shown: parameters from a JSON object file.")
    ] = None,
    no_project: Annotated[
        bool, typer.Option("--no-project", help="With --shown: run the .py file alone, without its project.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a script's entry points with their parameters and defaults, without running it; with
    --shown, run it and list what it shows, and which of that would print.

    MakerRepo `@artifact` and `@customizable` functions are listed as such; a customizable's
    parameters are its pydantic model's fields, with their constraints.
    """
    if shown:
        _inspect_shown(path, artifact, param, params_file, no_project, as_json)
        return
    if artifact or param or params_file or no_project:
        die("--artifact, --param, --params and --no-project go with --shown", 2)
    _require_file(path)
    root = find_root(path) or path.resolve().parent

    def read_module(relative: str) -> str | None:
        module = root / relative
        return module.read_text(encoding="utf-8") if module.is_file() else None

    try:
        entries = list_entry_points(path, read_module, path.resolve().relative_to(root).as_posix())
    except SyntaxError as exc:
        die(f"{path.name}, line {exc.lineno}: SyntaxError: {exc.msg}")
    except (OSError, UnicodeDecodeError) as exc:
        die(f"cannot read {path}: {exc}")
    if as_json:
        typer.echo(json.dumps(entries, default=str))
        return
    if not entries:
        typer.echo(f"{path.name} defines no entry point: no public function, show() or `result`")
    for entry in entries:
        typer.echo(_describe_entry(entry))


def _inspect_shown(
    path: Path,
    artifact: str | None,
    param: list[str] | None,
    params_file: Path | None,
    no_project: bool,
    as_json: bool,
) -> None:
    extras.require("inspect --shown", "worker")
    from workers.cad_types import CadError  # lazy: the worker extra, not in the agent install
    from workers.sandbox_probe import Unavailable  # lazy: the worker extra, not in the agent install

    _require_file(path)
    params = _params(param, params_file)
    runner = local_runner()
    try:
        with _scratch_dir() as scratch:
            inputs = [params_file] if params_file is not None else []
            request = _request(path, artifact, params, no_project, Path(scratch), ours=inputs)
            listing = runner.inspect(request)
    except CadError as exc:
        die(exc.message)
    except Unavailable as exc:
        die(str(exc))
    finally:
        runner.close()
    if as_json:
        typer.echo(json.dumps({"shown": listing}))
        return
    if not listing:
        typer.echo(f"{path.name} shows nothing")
    width = max((len(item["name"]) for item in listing), default=0)
    for item in listing:
        typer.echo(f"{item['name']:<{width}}  {_describe_shown(item)}")
    if listing and not any(item["prints"] for item in listing):
        typer.echo("nothing solid: a build of it would fail")


def _describe_shown(item: dict[str, Any]) -> str:
    if not item["prints"]:
        return f"{item['kind']}, skipped"
    solids = item["solids"]
    text = f"{item['kind']}, prints as {solids} object{'s' * (solids != 1)}"
    if item.get("color"):
        text += ", colour #" + "".join(f"{round(c * 255):02X}" for c in item["color"])
    return text


# -- helpers ---------------------------------------------------------------------------------------
def _params(param: list[str] | None, params_file: Path | None) -> dict[str, Any]:
    try:
        return combine(param or [], params_file)[0]
    except ParamError as exc:
        die(str(exc), 2)


def local_runner() -> CadRunner:
    """A CadRunner with the worker's sandbox policy, from the settings."""
    from workers.cad_runner import CadRunner  # lazy: the worker extra, not in the agent install
    from workers.sandbox import Policy  # lazy: the worker extra, not in the agent install

    settings = get_settings()
    try:
        policy = Policy.from_settings(settings.cad_sandbox, settings.cad_sandbox_disable)
    except ValueError as exc:
        die(str(exc), 2)
    if not policy.enabled:
        typer.echo("warning: FARM_CAD_SANDBOX=off: the design runs with your rights, unsandboxed", err=True)
    return CadRunner(policy=policy)


def _request(
    path: Path,
    artifact: str | None,
    params: dict[str, Any],
    no_project: bool,
    scratch: Path,
    step: bool = False,
    ours: list[Path] | None = None,
) -> CadRequest:
    try:
        return make_request(path, artifact, params, no_project, scratch, step=step, ours=ours)
    except (ProjectError, SourceProblem) as exc:
        die(str(exc), 2)


def make_request(
    path: Path,
    artifact: str | None,
    params: dict[str, Any],
    no_project: bool,
    scratch: Path,
    step: bool = False,
    ours: list[Path] | None = None,
) -> CadRequest:
    """The CadRequest the farm would run for `path`: packed with its project (or its folder), the
    parameters typed as the coordinator types them, so that both share cache entries.

    Raises ProjectError (cannot pack) or SourceProblem (the entry point or parameters are wrong)."""
    from workers.cad_types import CadRequest  # lazy: the worker extra, not in the agent install

    # A script in no project travels with its folder, but not with the outputs, cache and
    # parameter file of our own that may be in it.
    leave_out = [get_settings().data_dir, *(ours or [])]
    packed = pack_file(path, scratch, leave_out) if path.suffix == ".py" and not no_project else None
    source, entry_file = (packed.archive, packed.entry) if packed else (path, None)
    params = check_cad_source(source, entry_file, artifact, params, validate=False, name=path.name)
    return CadRequest(
        source=Path(packed.entry) if packed else path,
        outdir=scratch / "out",
        entry=artifact,
        params=params,
        project=packed.archive if packed else None,
        step=step,
    )


def _require_file(path: Path) -> None:
    if not path.exists():
        die(f"{path} does not exist", 2)
    if not path.is_file():
        die(f"{path} is not a file", 2)


def cache_root() -> Path:
    return get_settings().data_dir / CACHE_DIR_NAME


def _scratch_dir() -> tempfile.TemporaryDirectory[str]:
    # The build writes here; cached_build then copies the result into the cache.
    return tempfile.TemporaryDirectory(prefix="farm-build-")


def _deliver(result: CadResult, output: Path, stem: str) -> dict[str, Path]:
    """Copy the outputs to `output` as <stem>.stl, .3mf, .png and (when built) .step."""
    wanted = {"stl": result.stl, "threemf": result.threemf, "preview": result.preview, "step": result.step}
    suffixes = {"stl": ".stl", "threemf": ".3mf", "preview": ".png", "step": ".step"}
    sources = {kind: source for kind, source in wanted.items() if source is not None}
    files = {kind: output / f"{stem}{suffixes[kind]}" for kind in sources}
    # All or nothing: a copy that fails (a full disk) leaves every file of an earlier build as it was.
    copy_into_place({Path(sources[kind]): path for kind, path in files.items()}, output)
    return files


def _report(result: CadResult, files: dict[str, Path], hit: bool, seconds: float, as_json: bool) -> None:
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", err=True, fg="yellow")
    if as_json:
        data = {
            "stl": str(files["stl"]),
            "threemf": str(files["threemf"]),
            "preview": str(files["preview"]) if "preview" in files else None,
            "step": str(files["step"]) if "step" in files else None,
            "mesh": result.mesh,
            "bbox": [list(result.bbox[0]), list(result.bbox[1])],
            "size": list(_size(result)),
            "volume": result.volume,
            "objects": result.objects,
            "shown": result.shown,
            "skipped": result.skipped,
            "cached": hit,
            "seconds": round(seconds, 3),
        }
        typer.echo(json.dumps(data))
        return
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    sx, sy, sz = _size(result)
    typer.echo("\n".join(str(path) for path in files.values()))
    typer.echo(
        f"size {sx:g} x {sy:g} x {sz:g} mm, bbox ({x0:g}, {y0:g}, {z0:g}) .. ({x1:g}, {y1:g}, {z1:g}), "
        f"volume {result.volume:.6g} mm3, {result.objects} object(s)"
    )
    typer.echo(f"{'cache hit' if hit else 'built'} in {seconds:.2f} s")


def _size(result: CadResult) -> tuple[float, float, float]:
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    return (round(x1 - x0, 6), round(y1 - y0, 6), round(z1 - z0, 6))


def _describe_entry(entry: dict[str, Any]) -> str:
    if entry["kind"] == "show":
        return "show    (the script calls show() at module level; build without --artifact)"
    if entry["kind"] == "result":
        return "result  (the script assigns `result` at module level; build without --artifact)"
    what = f"line {entry['line']}"
    if entry["kind"] != "function":
        what = f"{entry['kind']}, {what}"
    if entry.get("model"):
        what += f", parameters from {entry['model']}"
    lines = [f"{entry['name']}  ({what})"]
    lines += [f"  {_describe_param(p)}" for p in entry["params"]] or ["  (no parameters)"]
    return "\n".join(lines)


def _describe_param(param: dict[str, Any]) -> str:
    text = param["name"] + (f": {param['annotation']}" if param.get("annotation") else "")
    if not param.get("has_default"):
        text += "  (required)"
    elif param.get("default") is None and param.get("default_source"):
        text += f" = {param['default_source']}"
    else:
        text += f" = {param['default']!r}"
    if param.get("constraints"):
        text += "  [" + ", ".join(f"{k} {v!r}" for k, v in param["constraints"].items()) + "]"
    if param.get("description"):
        text += f"  {param['description']}"
    return text
