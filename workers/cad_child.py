"""The inside of one CAD build: a throwaway child forked from the warm fork server.

`run_child` locks the process down (process group, resource limits, private cwd, bare environment),
runs the user's script, finds what it built, writes the meshes and a small `result.json`, and exits.
Everything the parent learns comes from that file or from the exit status; nothing is pickled back.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import inspect
import json
import os
import resource
import signal
import sys
import time
import traceback
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, TextIO

# Imported here so that the fork server pays for it once and every build starts warm.
import build123d as bd

from workers.mesh import MeshProblem, MeshReport, check_mesh, read_stl, snap_near_zero, write_previews
from workers.param_values import ParamValueError, typed_value
from workers.sandbox import Policy, View, enter
from workers.sandbox_libc import SandboxError
from workers.scene import Printed, Scene, sort_scene
from workers.threemf import MeshObject, split_by_object, write_3mf
from workers.viewer import Showing, Viewer

KEEP_ENV = ("PATH", "HOME", "LANG", "TMPDIR")
# What a build writes: paths in the job; "step" only when the submitter asked for it.
OUTPUTS = ("stl", "threemf", "step", "preview", "preview_small")
STL_TOLERANCE = 0.01
ANGULAR_TOLERANCE = 0.1
MAX_MESSAGE = 4000
OPEN_FILES = 512  # with memfd and SysV shared memory refused, this bounds what a build keeps open
PR_SET_PDEATHSIG = 1
# Frames in these files are ours or a library's, never the user's, even when the script sits nearby.
_OWN_PATHS = (
    os.path.realpath(os.path.dirname(__file__)),
    os.path.realpath(sys.prefix),
    os.path.realpath(sys.base_prefix),
)
Shown = list[Showing]


class BuildFailure(Exception):
    """A failure to report to the user; `kind` is one of syntax|entry|params|exception|empty|mesh|limit."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------------------------------
# Process set-up


def run_child(job: dict[str, Any]) -> None:
    """Process target. `job` holds plain data only: paths, entry, params and limits."""
    os.setpgrp()  # first: the parent's timeout kills this whole group, grandchildren included
    _die_with_parent()
    _release_forkserver()
    _redirect_output(Path(job["log"]))
    trace = open(job["trace"], "w")  # noqa: SIM115 - open for faulthandler until the process ends
    _close_inherited_fds(keep=trace.fileno())
    _apply_limits(job["limits"])
    # A project runs from its root, so that relative paths in it mean what they mean at home.
    cwd = job.get("project_root") or str(Path(job["source"]).parent)
    try:
        _enter_sandbox(job, cwd)
    except (SandboxError, OSError) as error:
        message = f"the build's sandbox could not be set up on this worker: {error}"
        _write_json(Path(job["result"]), {"ok": False, "kind": "crash", "message": message})
        os._exit(0)
    # After the sandbox's forks: the wall-clock dump runs in a thread, and threads do not survive a fork.
    _enable_tracebacks(trace, float(job["limits"]["wall_s"]))
    for name in list(os.environ):
        if name not in KEEP_ENV:
            del os.environ[name]
    try:
        outputs = {name: Path(job[name]) for name in OUTPUTS if job.get(name)}
        summary = build(
            Path(job["source"]),
            outputs,
            job.get("entry"),
            dict(job.get("params") or {}),
            memory_mb=int(job["limits"]["memory_mb"]),
            project_root=Path(job["project_root"]) if job.get("project_root") else None,
            env=Path(job["env"]) if job.get("env") else None,
            inspect_only=bool(job.get("inspect")),
        )
        result: dict[str, Any] = {"ok": True, **summary}
    except BuildFailure as failure:
        result = {"ok": False, "kind": failure.kind, "message": failure.message[:MAX_MESSAGE]}
    _write_json(Path(job["result"]), result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: user atexit hooks and stray non-daemon threads must not hold the exit.
    os._exit(0)


def _enter_sandbox(job: dict[str, Any], cwd: str) -> None:
    walls = job.get("sandbox")
    if not walls:
        os.chdir(cwd)
        return
    view = View(walls["read_only"], walls["writable"], cwd=cwd, scratch=walls["scratch"])
    enter(Policy.from_dict(walls["policy"]), view)


def _close_inherited_fds(keep: int) -> None:
    """Close what the fork server handed down (its job pipe, the root resource tracker's pipe, ...).

    A build writing to the resource tracker could make it unlink the worker's shared memory.
    """
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    with contextlib.suppress(ImportError, AttributeError):
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._fd = None  # type: ignore[attr-defined]


def _die_with_parent() -> None:
    # The fork server exits when the worker dies; this makes a still-running build follow it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _release_forkserver() -> None:
    # The fork server runs until every copy of its "alive" pipe is closed, and each child inherits
    # one. Dropping ours lets the server exit when the worker dies, even while this build hangs,
    # and the death signal above then takes this build with it.
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[attr-defined]  # private; read by getattr above


def _redirect_output(log: Path) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _enable_tracebacks(stream: TextIO, wall_s: float) -> None:
    """Dump the Python stack on a crash, at the CPU and file-size limits and before the wall-clock kill.

    The parent reads the last dump to tell the user which line of their script was running.
    """
    faulthandler.enable(file=stream, all_threads=False)
    faulthandler.register(signal.SIGXCPU, file=stream, all_threads=False)
    # Python ignores SIGXFSZ, and C++ exporters ignore failed writes: dying is the only reliable report.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    faulthandler.register(signal.SIGXFSZ, file=stream, all_threads=False, chain=True)
    faulthandler.dump_traceback_later(max(wall_s - 0.5, wall_s * 0.8), file=stream)


def _apply_limits(limits: dict[str, Any]) -> None:
    mb = 1024 * 1024
    _set_limit(resource.RLIMIT_AS, int(limits["memory_mb"]) * mb)
    # SIGXCPU at the soft limit only dumps the stack (see above); SIGKILL follows a second later.
    _set_limit(resource.RLIMIT_CPU, int(limits["cpu_s"]), grace=1)
    _set_limit(resource.RLIMIT_FSIZE, int(limits["output_mb"]) * mb)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_NOFILE, OPEN_FILES)
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC, and it counts every task of the real uid
        _set_limit(resource.RLIMIT_NPROC, _tasks_of_uid(os.getuid()) + int(limits["procs"]))


def _set_limit(which: int, soft: int, grace: int = 0) -> None:
    _, hard = resource.getrlimit(which)
    cap = hard if hard != resource.RLIM_INFINITY else soft + grace
    resource.setrlimit(which, (min(soft, cap), min(soft + grace, cap)))


def _tasks_of_uid(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
    return count


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent never sees half a file


# --------------------------------------------------------------------------------------------------
# The build


def build(
    source: Path,
    outputs: dict[str, Path],
    entry: str | None,
    params: dict[str, Any],
    memory_mb: int,
    project_root: Path | None = None,
    env: Path | None = None,
    inspect_only: bool = False,
) -> dict[str, Any]:
    """Run the script, resolve what it built and export it (or, inspect_only, list what it
    shows). Raises BuildFailure."""
    script = UserScript(source, project_root, env)
    viewer = Viewer()
    with script.reporting_errors(memory_mb):
        namespace = script.execute(viewer)
        shown = resolve(script, namespace, viewer, entry, params)
        scene = sort_scene(shown, default_name=entry_name(entry) or source.stem)
        if inspect_only:
            return {"shown": scene.listing, "skipped": [f"{n} ({k})" for n, k in scene.skipped]}
        if not scene.printed:
            raise BuildFailure("empty", nothing_to_print(scene, script.name))
        return export(scene, outputs)


class UserScript:
    """The user's file: compiling, running, and telling its frames apart from ours."""

    def __init__(self, source: Path, project_root: Path | None = None, env: Path | None = None) -> None:
        self.source = source.resolve()
        self.root = project_root.resolve() if project_root else self.source.parent
        self.name = self.relative(str(self.source))
        self.env = env

    def execute(self, viewer: Viewer) -> dict[str, Any]:
        code = self._compile()
        module = types.ModuleType("__main__")
        module.__file__ = str(self.source)
        viewer.install(module.__dict__)
        # Installed as __main__ so dataclasses, pickle and `if __name__ == "__main__"` behave as in a shell.
        sys.modules["__main__"] = module
        sys.argv = [str(self.source)]
        # As `python path/to/entry.py` from the project root would: the script's folder first, then
        # the root (local packages), then the project's installed requirements, then the worker's.
        first = [str(self.source.parent), str(self.root), *([str(self.env)] if self.env else [])]
        sys.path[0:0] = list(dict.fromkeys(first))
        try:
            exec(code, module.__dict__)
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise
        return module.__dict__

    def _compile(self) -> types.CodeType:
        # Compiled under its real filename so tracebacks and linecache point at the user's file.
        text = self.source.read_bytes()
        try:
            return compile(text, str(self.source), "exec", dont_inherit=True)
        except SyntaxError as error:
            raise BuildFailure("syntax", self.describe_syntax_error(error)) from None

    def owns(self, filename: str) -> bool:
        path = os.path.realpath(filename)
        inside = path.startswith(str(self.root) + os.sep)
        return inside and not any(path == own or path.startswith(own + os.sep) for own in _OWN_PATHS)

    def relative(self, filename: str) -> str:
        return os.path.relpath(os.path.realpath(filename), self.root)

    def describe_syntax_error(self, error: SyntaxError) -> str:
        where = self.relative(error.filename) if error.filename else self.name
        message = f"{where}, line {error.lineno}: {type(error).__name__}: {error.msg}"
        if error.text and error.text.strip():
            message += f"\n    {error.text.strip()}"
        return message

    def describe_exception(self, error: BaseException) -> str:
        """`part.py, line 12, in bracket: ValueError: radius too large`, then the line and the callers."""
        what = "".join(traceback.format_exception_only(type(error), error)).strip()
        frames = [f for f in traceback.extract_tb(error.__traceback__) if self.owns(f.filename)]
        if not frames:
            return what
        last = frames[-1]
        lines = [f"{self.relative(last.filename)}, line {last.lineno}, in {last.name}: {what}"]
        if last.line:
            lines.append(f"    {last.line}")
        lines += [
            f"  called from {self.relative(f.filename)}, line {f.lineno}, in {f.name}" for f in frames[-2::-1]
        ]
        return "\n".join(lines)

    def where(self, error: BaseException) -> str:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if self.owns(f.filename)]
        if not frames:
            return ""
        last = frames[-1]
        return f" (at {self.relative(last.filename)}, line {last.lineno}, in {last.name})"

    @contextlib.contextmanager
    def reporting_errors(self, memory_mb: int) -> Iterator[None]:
        try:
            yield
        except BuildFailure:
            raise
        except SyntaxError as error:  # in a sibling module the script imports
            raise BuildFailure("syntax", self.describe_syntax_error(error)) from None
        except MemoryError as error:
            message = f"the build used more than {memory_mb} MB of memory{self.where(error)}"
            raise BuildFailure("limit", message) from None
        except BaseException as error:  # user code may raise anything, even SystemExit(1)
            raise BuildFailure("exception", self.describe_exception(error)) from None


# --------------------------------------------------------------------------------------------------
# Entry points and parameters


def entry_name(entry: str | None) -> str | None:
    # "module:function" names the function inside a package; for a single file the module is implied.
    return entry.rpartition(":")[2] if entry else None


def resolve(
    script: UserScript, namespace: dict[str, Any], viewer: Viewer, entry: str | None, params: dict[str, Any]
) -> Shown:
    """What to build: the named function; else what was shown; else `result`; else the one function.

    In a MakerRepo file, only its `@artifact` and `@customizable` functions are entry points.
    """
    functions = public_functions(script, namespace)
    name = entry_name(entry)
    decorated = {n: f for n, f in functions.items() if _makerrepo_kinds(f)}
    if name:
        if name not in functions:
            available = ", ".join(functions) or "none"
            raise BuildFailure("entry", f"no entry point {name!r} in {script.name}; available: {available}")
        return call_entry(functions[name], params, viewer, script.name)
    # Parameters only make sense for a function, so they skip the module-level results.
    if not params and viewer.shown:
        return viewer.shown
    if not params and "result" in namespace and not inspect.isfunction(namespace["result"]):
        return [Showing(namespace["result"])]
    offered = decorated or functions
    candidates = [f for f in offered.values() if _accepts(f, params)]
    customizables = [f for f in offered.values() if _model_param(f)]
    if not candidates and params and len(customizables) == 1:
        candidates = customizables  # its schema then says which parameter is wrong
    if len(candidates) == 1:
        return call_entry(candidates[0], params, viewer, script.name)
    raise BuildFailure("entry", _no_single_entry(script.name, offered, candidates, params))


def _makerrepo_kinds(func: Callable[..., Any]) -> set[str]:
    """{"artifact", "customizable"}, as far as MakerRepo's decorators marked `func` (via venusian)."""
    categories = getattr(func, "__venusian_callbacks__", None) or {}
    return {kind for kind in ("artifact", "customizable") if _MAKERREPO_CATEGORIES[kind] in categories}


_MAKERREPO_CATEGORIES = {"artifact": "mr_artifacts", "customizable": "mr_customizable"}


def _model_param(func: Callable[..., Any]) -> tuple[str, Any] | None:
    """(argument, model class) for a function taking one pydantic model, as a `@customizable` does."""
    from pydantic import BaseModel

    params = list(inspect.signature(func).parameters.values())
    if len(params) != 1 or params[0].kind in (params[0].VAR_POSITIONAL, params[0].VAR_KEYWORD):
        return None
    try:
        annotation = typing.get_type_hints(func).get(params[0].name)
    except Exception:  # an annotation naming something undefined: not a model then
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return params[0].name, annotation
    return None


def public_functions(script: UserScript, namespace: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """Public functions defined in the script itself (not imported), in definition order."""
    found: dict[str, Callable[..., Any]] = {}
    for name, obj in namespace.items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__name__ != name:
            continue
        if os.path.realpath(inspect.unwrap(obj).__code__.co_filename) == str(script.source):
            found[name] = obj
    return found


def _no_single_entry(
    filename: str,
    functions: dict[str, Callable[..., Any]],
    candidates: list[Callable[..., Any]],
    params: dict[str, str],
) -> str:
    if candidates:
        names = ", ".join(f.__name__ for f in candidates)
        return f"{filename} defines several entry points: {names}; choose one with --artifact NAME"
    if params:
        listing = ", ".join(f"{n}{inspect.signature(f)}" for n, f in functions.items()) or "none"
        return f"no function in {filename} takes the parameters {', '.join(params)}; functions: {listing}"
    if functions:
        listing = ", ".join(f"{n}{inspect.signature(f)}" for n, f in functions.items())
        return (
            f"{filename} has no entry point that builds without parameters: {listing}; "
            "choose one with --artifact NAME and give its values with --param NAME=VALUE"
        )
    return (
        f"{filename} builds nothing: call show(part), assign `result = part`, "
        "or define a function that returns the part"
    )


def _settable(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in inspect.signature(func).parameters.items() if p.kind in kinds}


def _takes_any_keyword(func: Callable[..., Any]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values())


def _required(func: Callable[..., Any]) -> set[str]:
    return {
        n
        for n, p in inspect.signature(func).parameters.items()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _accepts(func: Callable[..., Any], params: dict[str, Any]) -> bool:
    if (model := _model_param(func)) is not None:
        fields = model[1].model_fields
        extra_ok = model[1].model_config.get("extra") == "allow"
        required = {n for n, f in fields.items() if f.is_required()}
        return (extra_ok or set(params) <= set(fields)) and required <= set(params)
    known = set(params) <= set(_settable(func)) or _takes_any_keyword(func)
    return known and _required(func) <= set(params)


def call_entry(func: Callable[..., Any], params: dict[str, Any], viewer: Viewer, filename: str) -> Shown:
    if (model := _model_param(func)) is not None:
        kwargs = {model[0]: _validate_model(func, model[1], params)}
    else:
        kwargs = convert_params(func, params)
    missing = sorted(_required(func) - set(kwargs))
    if missing:
        needs = ", ".join(f"--param {n}=VALUE" for n in missing)
        raise BuildFailure("params", f"{func.__name__}() in {filename} needs values: {needs}")
    before = len(viewer.shown)
    value = func(**kwargs)
    if value is None and len(viewer.shown) > before:  # a function that shows instead of returning
        return viewer.shown[before:]
    return [Showing(value, func.__name__)]


def _validate_model(func: Callable[..., Any], model: Any, params: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from workers.param_schema import describe_errors

    unknown = sorted(set(params) - set(model.model_fields))
    if unknown and model.model_config.get("extra") != "allow":  # as the coordinator refuses them
        fields = ", ".join(model.model_fields) or "none"
        raise BuildFailure(
            "params", f"{func.__name__}(): unknown parameter {unknown[0]!r}; its parameters: {fields}"
        )
    try:
        return model.model_validate(params)
    except ValidationError as error:
        raise BuildFailure("params", describe_errors(func.__name__, error.errors())) from None


def convert_params(func: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Turn `--param k=v` strings into the types the function's defaults or annotations ask for."""
    settable = _settable(func)
    open_ended = _takes_any_keyword(func)
    kwargs: dict[str, Any] = {}
    for name, raw in params.items():
        param = settable.get(name)
        if param is None:
            if open_ended:
                kwargs[name] = raw
                continue
            available = ", ".join(settable) or "none"
            raise BuildFailure(
                "params", f"unknown parameter {name!r} for {func.__name__}(); available: {available}"
            )
        annotation = None if param.annotation is param.empty else param.annotation
        default = param.default if param.default is not param.empty else None
        try:
            kwargs[name] = typed_value(name, raw, annotation, default)
        except ParamValueError as exc:
            raise BuildFailure("params", str(exc)) from None
    return kwargs


# --------------------------------------------------------------------------------------------------
# Shapes and export


def nothing_to_print(scene: Scene, filename: str) -> str:
    if not scene.listing:
        return f"{filename} produced no shape (the result was empty or None)"
    return (
        f"{filename} shows nothing solid to print: {scene.describe_skipped()}; "
        "show a Part, a BuildPart or a Solid"
    )


def export(scene: Scene, outputs: dict[str, Path]) -> dict[str, Any]:
    """One combined binary STL, one 3MF object per solid (named and coloured as shown), STEP when
    asked, then the mesh checks and the previews; returns the summary for result.json."""
    objects = scene.printed
    solids = [p.solid for p in objects]
    combined = solids[0] if len(solids) == 1 else bd.Compound(solids)
    skipped = [f"{name} ({kind})" for name, kind in scene.skipped]
    if skipped:
        print(f"skipped: {', '.join(skipped)}")  # into the build's log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not bd.export_stl(
            combined, outputs["stl"], tolerance=STL_TOLERANCE, angular_tolerance=ANGULAR_TOLERANCE
        ):
            raise BuildFailure("exception", "writing the STL failed")
        tris = snap_near_zero(read_stl(outputs["stl"]))
        # The STL holds each solid's faces in turn: cut back into solids, each is judged and written
        # on its own (solids that touch, like the boards of a stud wall, each stay closed).
        blocks = split_by_object(tris, solids) if len(solids) > 1 else [tris]
        mesh = _check(tris, blocks, objects)
        if blocks is not None:
            written = [
                MeshObject(block, p.name, p.name, p.color) for block, p in zip(blocks, objects, strict=True)
            ]
        else:  # the STL could not be cut: one object, as the STL is
            written = [MeshObject(tris, objects[0].name if len(objects) == 1 else None)]
        write_3mf(outputs["threemf"], written)
        if "step" in outputs:
            _export_step(combined, objects, outputs["step"])
    mesh.update(_previews(tris, outputs))
    box = combined.bounding_box()
    notes = sorted({str(w.message) for w in caught})
    return {
        "objects": len(objects),
        "bbox": [[box.min.X, box.min.Y, box.min.Z], [box.max.X, box.max.Y, box.max.Z]],
        "volume": sum(solid.volume for solid in solids),
        "mesh": mesh,
        "warnings": ([f"skipped: {', '.join(skipped)}"] if skipped else []) + notes,
        "shown": scene.listing,
        "skipped": skipped,
    }


def _export_step(combined: bd.Shape, objects: list[Printed], path: Path) -> None:
    # Several objects go in as one compound whose children carry the 3MF's names.
    if len(objects) > 1:
        for printed in objects:
            printed.solid.label = printed.name or ""
        combined = bd.Compound(children=[p.solid for p in objects])
    if not bd.export_step(combined, path):
        raise BuildFailure("exception", "writing the STEP file failed")


def _check(tris: Any, blocks: list[Any] | None, objects: list[Printed]) -> dict[str, Any]:
    """The report of the STL's triangles (what the slicer will read), solid by solid; BuildFailure
    if one would not print, naming it when there are several."""
    started = time.perf_counter()
    reports = []
    for i, block in enumerate(blocks if blocks is not None else [tris], start=1):
        try:
            reports.append(check_mesh(block))
        except MeshProblem as problem:
            where = f"{_which_solid(objects, i)}: " if blocks is not None and len(objects) > 1 else ""
            raise BuildFailure("mesh", f"{where}{problem}") from None
    low, high = tris.min(axis=(0, 1)), tris.max(axis=(0, 1))
    report = MeshReport(
        triangles=len(tris),
        open_edges=sum(r.open_edges for r in reports),
        nonmanifold_edges=sum(r.nonmanifold_edges for r in reports),
        bbox=(tuple(float(v) for v in low), tuple(float(v) for v in high)),  # type: ignore[arg-type]
    )
    if report.nonmanifold_edges:
        warnings.warn(
            f"the mesh has {report.nonmanifold_edges} edges shared by more than two triangles: "
            "a solid touches itself along an edge; slicers print that, but it may come out weak there",
            stacklevel=1,
        )
    return {**report.to_json(), "check_ms": round((time.perf_counter() - started) * 1000, 1)}


def _which_solid(objects: list[Printed], index: int) -> str:
    """`solid 2 of 3 ("lid", x 0 to 10, y -5 to 5, z 0 to 2 mm)`: which object, and where."""
    printed = objects[index - 1]
    try:
        box = printed.solid.bounding_box()
        where = ", ".join(
            f"{axis} {lo:.4g} to {hi:.4g}" for axis, lo, hi in zip("xyz", box.min, box.max, strict=True)
        )
        where += " mm"
    except Exception:  # a shape too broken to measure: its index still says which
        where = "no bounding box"
    named = f'"{printed.name}", ' if printed.name else ""
    return f"solid {index} of {len(objects)} ({named}{where})"


def _previews(tris: Any, outputs: dict[str, Path]) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = {256: outputs.get("preview"), 96: outputs.get("preview_small")}
    write_previews(tris, {size: path for size, path in sizes.items() if path is not None})
    return {"preview_ms": round((time.perf_counter() - started) * 1000, 1)}


# Runs once, in the fork server, after the preloads: park build123d's ~10^6 objects in the permanent
# generation. Otherwise a child's first full collection walks them all, dirtying every page it
# shares with the server (~150 ms of copy-on-write at a random moment of the build).
gc.collect()
gc.freeze()
