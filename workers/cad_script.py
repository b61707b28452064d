"""The user's script inside the CAD child: running it as `python script.py` would, telling its
frames apart from ours in an error, and choosing and calling its entry point with typed parameters.

`farm.core.entry_points` makes the same choice from the source alone, at submit time.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from farm.core.param_schema import describe_errors
from farm.core.param_values import ParamValueError, typed_value
from workers.viewer import Showing, Viewer

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
