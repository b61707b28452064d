"""`farm ci build` and `farm ci submit`: a repository's parts (printfarm.toml) from a CI job.

`ci build` runs what `farm build` runs (farm/commands/cad.py: the worker's sandbox and CAD cache)
for every part and parameter set of the manifest, and reports as CI tools read it: an exit status,
JUnit XML, and GitHub's step summary. `ci submit` sends the same parts to a farm, as `farm submit`
does, with the commit they came from.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from farm.commands import cad, extras
from farm.commands.ci_common import ManifestOpt, read_manifest
from farm.commands.ci_report import Outcome, append_step_summary, junit_xml
from farm.commands.ci_submit import submit
from farm.commands.common import die
from farm.commands.watch import stdout_console
from farm.coordinator.sources import SourceProblem
from farm.core.manifest import MANIFEST_NAME, Part
from farm.core.project import ProjectError

if TYPE_CHECKING:
    from workers.cad_types import CadRequest

ci_app = typer.Typer(
    help="Build or submit every part of a repository (printfarm.toml) from a CI job.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(ci_app, name="ci")


# -- farm ci build --------------------------------------------------------------------------------
@ci_app.command("build")
def ci_build(
    manifest_path: ManifestOpt = None,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Write JUnit XML here: one testcase per part and parameters."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also keep each build's STL, 3MF and PNG here, as <part>[-N].<ext>."
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Build even if the cache has it.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
    ] = False,
) -> None:
    """Build every part of the checkout (each parameter set of its matrix) in the farm's sandbox and
    CAD cache, as `farm build` does, and check each mesh. Exit 1 if any part fails, with its error.

    A line per build goes to stderr, then a table. With GITHUB_STEP_SUMMARY set (GitHub, Gitea and
    Forgejo Actions), a Markdown summary with each part's preview is appended to that file.
    """
    extras.require("ci build", "worker")
    folder, manifest = read_manifest(manifest_path)
    builds = [(part, params) for part in manifest.parts for params in part.param_sets()]
    if not builds:
        die(f"no parts in {folder}: list them in {MANIFEST_NAME}, or mark functions @artifact", 2)
    if manifest.discovered:
        typer.echo(f"no {MANIFEST_NAME}: building every @artifact ({len(manifest.parts)} found)", err=True)
    outcomes = _build_all(folder, builds, output, use_cache=not no_cache)
    if junit is not None:
        _write(junit, junit_xml(outcomes))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            append_step_summary(Path(summary), outcomes)
        except OSError as exc:
            typer.secho(f"warning: cannot write the step summary {summary}: {exc}", err=True, fg="yellow")
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        typer.echo(json.dumps({"passed": len(outcomes) - len(failed), "failed": len(failed),
                               "builds": [o.to_json() for o in outcomes]}))  # fmt: skip
    else:
        _table(outcomes)
        for o in failed:
            typer.secho(f"\n{o.label} ({o.file}) failed:\n{o.error}", err=True, fg="red")
        said = f"{len(outcomes)} builds: {len(outcomes) - len(failed)} passed"
        typer.echo(said + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


ci_app.command("submit")(submit)  # farm/commands/ci_submit.py


def _build_all(
    folder: Path, builds: list[tuple[Part, dict[str, Any]]], output: Path | None, use_cache: bool
) -> list[Outcome]:
    from workers.cad_cache import CadCache, cached_build  # lazy: the worker extra, not in the agent install
    from workers.cad_types import CadError  # lazy: the worker extra, not in the agent install
    from workers.sandbox_probe import Unavailable  # lazy: the worker extra, not in the agent install

    cache = CadCache(cad.cache_root())
    runner = cad.local_runner()  # its fork server starts with the first build the cache misses
    outcomes: list[Outcome] = []
    stems = _stems(builds)
    try:
        for number, ((part, params), stem) in enumerate(zip(builds, stems, strict=True), 1):
            outcome = Outcome(part.name, part.file, part.artifact, dict(params))
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="farm-ci-") as scratch:
                try:
                    request = _request(folder, part, params, Path(scratch), output)
                    result, outcome.cached = cached_build(runner, cache, request, use_cache=use_cache)
                except (ProjectError, SourceProblem) as exc:
                    outcome.error, outcome.kind = str(exc), "source"
                except CadError as exc:
                    outcome.error, outcome.kind = exc.message, exc.kind
                except Unavailable as exc:
                    die(f"the CAD sandbox cannot run here, so nothing was built: {exc}")
                else:
                    _record(outcome, result)
                    if output is not None:
                        try:
                            cad._deliver(result, output, stem)
                        except OSError as exc:
                            die(f"cannot write the outputs to {output}: {exc}")
            outcome.seconds = time.monotonic() - started
            outcomes.append(outcome)
            _progress(number, len(builds), outcome)
    finally:
        runner.close()
    return outcomes


def _request(
    folder: Path, part: Part, params: dict[str, Any], scratch: Path, output: Path | None
) -> CadRequest:
    # Parameters go as typed JSON, as a --params file does: the manifest's 14 is the number 14.
    ours = [output] if output is not None else []
    return cad.make_request(folder / part.file, part.artifact, dict(params), False, scratch, ours=ours)


def _record(outcome: Outcome, result: Any) -> None:
    (x0, y0, z0), (x1, y1, z1) = result.bbox
    outcome.size = (round(x1 - x0, 6), round(y1 - y0, 6), round(z1 - z0, 6))
    outcome.volume = result.volume
    outcome.objects = result.objects
    outcome.triangles = result.mesh.get("triangles")
    outcome.warnings = [*result.warnings, *(f"shown, not printed: {item}" for item in result.skipped)]
    outcome.preview = result.preview.read_bytes() if result.preview else None
    outcome.preview_small = result.preview_small.read_bytes() if result.preview_small else None


def _stems(builds: list[tuple[Part, dict[str, Any]]]) -> list[str]:
    """File names for --output: the part's name, numbered when its matrix makes several builds."""
    counts: dict[str, int] = {}
    for part, _ in builds:
        counts[part.name] = counts.get(part.name, 0) + 1
    seen: dict[str, int] = {}
    stems = []
    for part, _ in builds:
        seen[part.name] = seen.get(part.name, 0) + 1
        stems.append(part.name if counts[part.name] == 1 else f"{part.name}-{seen[part.name]}")
    return stems


def _progress(number: int, total: int, o: Outcome) -> None:
    if o.ok:
        how = "from the cache" if o.cached else "built"
        typer.echo(f"[{number}/{total}] {o.label}: ok, {how} in {o.seconds:.1f} s", err=True)
        for warning in o.warnings:
            typer.secho(f"  warning: {warning}", err=True, fg="yellow")
    else:
        first = (o.error or "").strip().splitlines()[0] if (o.error or "").strip() else o.kind
        typer.secho(f"[{number}/{total}] {o.label}: FAILED: {first}", err=True, fg="red")


def _table(outcomes: list[Outcome]) -> None:
    from rich.table import Table

    table = Table(title="farm ci build")
    for column in ("part", "parameters", "result", "size (mm)", "volume (mm3)", "triangles", "time"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o.part,
            ", ".join(f"{k}={json.dumps(v)}" for k, v in o.params.items()),
            ("cached" if o.cached else "ok") if o.ok else f"FAILED ({o.kind})",
            " x ".join(f"{v:g}" for v in o.size) if o.size else "",
            f"{o.volume:.6g}" if o.volume is not None else "",
            str(o.triangles or ""),
            f"{o.seconds:.1f} s",
        )
    stdout_console().print(table)


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        die(f"cannot write {path}: {exc}")
