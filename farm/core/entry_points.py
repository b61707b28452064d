"""What a CAD script offers to build, read with `ast` only.

This runs in the coordinator and the CLI, which have no build123d and must never execute user code.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from farm.core.param_schema import (
    build_model,
    checkable_model,
    describe_errors,
    field_listing,
    is_model_class,
)
from farm.core.param_values import ParamValueError, typed_value
from farm.core.printer_models import closest

SHOW_NAMES = frozenset({"show", "show_object", "show_all"})
MAKERREPO_KINDS = ("artifact", "customizable")
# Reads another module of the project by its path from the project root ("pkg/params.py"), or None.
ModuleReader = Callable[[str], str | None]


@dataclass
class Param:
    name: str
    has_default: bool = False
    default: Any = None  # the literal value; None when absent or not a JSON-able literal
    default_source: str | None = None  # the default as written, for the others
    annotation: str | None = None


@dataclass
class Function:
    name: str
    line: int
    params: list[Param] = field(default_factory=list)
    kind: str = "function"  # or MakerRepo's "artifact" / "customizable"
    model: str | None = None  # the parameter model's class, for a function taking one pydantic model
    any_keyword: bool = False  # takes **kwargs
    needs_positional: bool = False  # has a positional-only parameter without a default


@dataclass
class ScriptInfo:
    functions: list[Function] = field(default_factory=list)
    calls_show: bool = False
    has_result: bool = False
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)  # this file's and imported ones
    # Every public function the build could see is a top-level `def` here: none is defined under
    # an `if`/`try`/`with` or a loop, made by exec(), or async. Only then may a name be called unknown.
    exact: bool = True

    def entry_points(self) -> list[Function]:
        """What builds without --artifact may choose from: in a MakerRepo file, its decorated functions."""
        decorated = [f for f in self.functions if f.kind in MAKERREPO_KINDS]
        return decorated or self.functions


def scan_source(source: Path, read_module: ModuleReader | None = None, module_path: str = "") -> ScriptInfo:
    """Public module-level functions, and whether the script shows or assigns `result`.

    `read_module` lets a parameter model imported from another file of the project be found;
    `module_path` is this file's path in the project. Raises SyntaxError for a file that does not parse.
    """
    return scan_text(source.read_text(encoding="utf-8"), str(source), read_module, module_path)


def scan_text(
    text: str, filename: str, read_module: ModuleReader | None = None, module_path: str = ""
) -> ScriptInfo:
    tree = ast.parse(text, filename=filename)
    info = ScriptInfo()
    info.classes = _classes(tree, read_module, module_path or PurePosixPath(filename).name)
    by_name: dict[str, Function] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            by_name[node.name] = _function(node, info.classes)  # a redefinition wins, as when run
        elif _assigns_result(node):
            info.has_result = True
    info.functions = list(by_name.values())
    info.calls_show = any(_is_show_call(node) for node in ast.walk(tree))
    info.exact = _functions_are_static(tree)
    return info


def _functions_are_static(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.AsyncFunctionDef):
            return False
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return False
    dynamic = {"exec", "globals", "setattr", "__import__"}
    return not any(isinstance(n, ast.Name) and n.id in dynamic for n in ast.walk(tree))


def list_entry_points(
    source: Path, read_module: ModuleReader | None = None, module_path: str = ""
) -> list[dict[str, Any]]:
    """Entry points as plain dicts, for the API and the CLI.

    One `{"kind": "function" | "artifact" | "customizable", "name", "line", "params": [{"name",
    "default", ...}]}` per entry point (a customizable's params are its model's fields), then
    `{"kind": "show"}` and/or `{"kind": "result"}` when the script builds at module level.
    """

    info = scan_source(source, read_module, module_path)
    entries: list[dict[str, Any]] = []
    for f in info.entry_points():
        entry: dict[str, Any] = {"kind": f.kind, "name": f.name, "line": f.line}
        if f.model:
            entry["model"] = f.model
            entry["params"] = field_listing(build_model(f.model, info.classes))
        else:
            entry["params"] = [vars(p).copy() for p in f.params]
        entries.append(entry)
    if info.calls_show:
        entries.append({"kind": "show", "name": "show"})
    if info.has_result:
        entries.append({"kind": "result", "name": "result"})
    return entries


def _function(node: ast.FunctionDef, classes: dict[str, ast.ClassDef]) -> Function:

    kinds = [k for k in map(_makerrepo_kind, node.decorator_list) if k]
    func = Function(node.name, node.lineno, _params(node.args), kind=kinds[0] if kinds else "function")
    args = node.args
    func.any_keyword = args.kwarg is not None
    func.needs_positional = len(args.posonlyargs) > len(args.defaults)  # defaults fill from the right
    single = args.posonlyargs + args.args + args.kwonlyargs
    if len(single) == 1 and not args.vararg and not args.kwarg and single[0].annotation is not None:
        name = _annotation_name(single[0].annotation)
        if name in classes and is_model_class(classes[name], classes):
            func.model = name
    return func


def _makerrepo_kind(decorator: ast.expr) -> str | None:
    """ "artifact" for `@artifact`, `@mr.artifact`, `@artifact(sample=True)`; likewise customizable."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
    return name if name in MAKERREPO_KINDS else None


def _annotation_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # `from __future__ import annotations`
        return node.value.strip()
    return node.id if isinstance(node, ast.Name) else None


def _classes(tree: ast.Module, read_module: ModuleReader | None, module_path: str) -> dict[str, ast.ClassDef]:
    """Classes defined here, plus those named in `from x import Name` of the project's own modules."""
    classes: dict[str, ast.ClassDef] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and read_module is not None:
            for path in _module_paths(node, module_path):
                text = read_module(path)
                if text is None:
                    continue
                try:
                    theirs = {n.name: n for n in ast.parse(text).body if isinstance(n, ast.ClassDef)}
                except SyntaxError:
                    break
                for alias in node.names:
                    if alias.name in theirs:
                        classes[alias.asname or alias.name] = theirs[alias.name]
                        classes.update({k: v for k, v in theirs.items() if k not in classes})
                break
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = node
    return classes


def _module_paths(node: ast.ImportFrom, module_path: str) -> list[str]:
    """Where `from [.]a.b import X` may live in the project: beside this file, or from the root."""
    parts = (node.module or "").split(".") if node.module else []
    here = PurePosixPath(module_path).parent
    bases = [here] if node.level else [here, PurePosixPath(".")]
    for _ in range(max(node.level - 1, 0)):
        bases = [b.parent for b in bases]
    out = []
    for base in dict.fromkeys(bases):
        stem = base.joinpath(*parts) if parts else base
        out += [f"{stem}.py".removeprefix("./"), str(stem / "__init__.py").removeprefix("./")]
    return out


def validate_params(info: ScriptInfo, entry: str | None, params: dict[str, Any]) -> str | None:
    """What is wrong with `params` for the customizable they go to, or None (also when unsure).

    Mirrors how the build picks its entry point; anything that cannot be decided statically is
    left to the build.
    """
    target = _target(info, entry, params)
    if target is None or target.model is None:
        return None
    try:
        _typed_by_model(target, info, params, validate=True)
    except ParamValueError as exc:
        return str(exc)
    return None


def unknown_names(info: ScriptInfo, filename: str, entry: str | None, params: dict[str, Any]) -> str | None:
    """What the build would refuse by name, told at submit time: an `--artifact` the design does
    not define, or a parameter no function it may build takes (with the closest name, difflib).
    None when all is known, and whenever the source alone cannot tell (e.g. `**kwargs`, a parameter
    model with aliases or extras, functions defined at run time). Mirrors cad_script.resolve."""
    if not info.exact:
        return None
    if entry:
        name = entry.rpartition(":")[2]
        target = next((f for f in info.functions if f.name == name), None)
        if target is None:
            names = [f.name for f in info.functions]
            near = closest(name, names)
            hint = f"; did you mean '{near}'?" if near else ""
            return f"no entry point '{name}' in {filename}{hint}; available: {', '.join(names) or 'none'}"
        offered = [target]
    elif params:
        offered = info.entry_points()
    else:
        return None
    if not params:
        return None
    takes: dict[str, list[str]] = {}
    for func in offered:
        taken = _param_names(func, info)
        if taken is None:
            return None
        takes[func.name] = taken
    known = {n for names in takes.values() for n in names}
    unknown = [n for n in params if n not in known]
    if not unknown:
        return None
    if not takes:
        return f"{filename} has no function to pass parameters to, so it takes none: {', '.join(params)}"
    near = closest(unknown[0], known)
    hint = f"; did you mean '{near}'?" if near else ""
    listing = "; ".join(f"{f}() takes {', '.join(n) or 'none'}" for f, n in takes.items())
    return f"unknown parameter '{unknown[0]}'{hint} ({listing})"


def _param_names(func: Function, info: ScriptInfo) -> list[str] | None:
    """The names `func` takes by keyword, or None when any name may do or the source cannot say."""
    if func.any_keyword:
        return None
    if func.model is None:
        return [p.name for p in func.params]

    try:
        model = checkable_model(func.model, info.classes)
    except Exception:  # a model this reader cannot rebuild: the build decides
        return None
    if model is None or model.model_config.get("extra") == "allow":
        return None
    if any(f.alias or f.validation_alias for f in model.model_fields.values()):
        return None
    return list(model.model_fields)


def typed_params(
    info: ScriptInfo, entry: str | None, params: dict[str, Any], *, validate: bool = False
) -> dict[str, Any]:
    """`params` typed as the function they go to declares (param_values; for a customizable, its
    parameter model), where that function can be told statically; others are left to the build.

    Raises param_values.ParamValueError for a value its parameter cannot take and, with
    `validate`, for values a customizable's model refuses (validate_params' message).
    """
    target = _target(info, entry, params)
    if target is None:
        return params
    if target.model is not None:
        return _typed_by_model(target, info, params, validate=validate)
    declared = {p.name: p for p in target.params}
    return {
        name: typed_value(name, raw, p.annotation, p.default) if (p := declared.get(name)) else raw
        for name, raw in params.items()
    }


def _typed_by_model(
    target: Function, info: ScriptInfo, params: dict[str, Any], *, validate: bool
) -> dict[str, Any]:
    """The values as the parameter model rebuilt from source types them ("16" for a float: 16.0),
    the fields given only; as given when it cannot be rebuilt or, without `validate`, refuses them."""

    assert target.model is not None
    try:
        model = checkable_model(target.model, info.classes)
        if model is None:
            return params
        typed = model.model_validate(params).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        if validate:
            raise ParamValueError(describe_errors(target.name, exc.errors())) from None
        return params
    except Exception:  # a model this reader cannot rebuild: the build validates it
        return params
    # Only fields the rebuilt model knows by name and type: an alias or an extra goes on as given
    # (a model that ignores extras would drop it here, and the real one may know it), and so does
    # a value of a field typed Any (JSON would turn its NaN into null).
    typed_here = {k for k, f in model.model_fields.items() if f.annotation is not Any}
    return {k: typed[k] if k in typed_here and k in typed else v for k, v in params.items()}


def _target(info: ScriptInfo, entry: str | None, params: dict[str, Any]) -> Function | None:
    if entry:
        name = entry.rpartition(":")[2]
        return next((f for f in info.functions if f.name == name), None)
    if not params:
        return None
    offered = info.entry_points()
    candidates = [f for f in offered if _accepts(f, info, params)]
    customizables = [f for f in offered if f.model]
    if not candidates and len(customizables) == 1:
        candidates = customizables
    return candidates[0] if len(candidates) == 1 else None


def _accepts(func: Function, info: ScriptInfo, params: dict[str, Any]) -> bool:
    if func.model:
        try:
            model = checkable_model(func.model, info.classes)
        except Exception:
            return False
        if model is None:
            return False
        fields = model.model_fields
        return set(params) <= set(fields) and {n for n, f in fields.items() if f.is_required()} <= set(params)
    # As the CAD child decides with the live signature (cad_script._accepts).
    known = set(params) <= {p.name for p in func.params} or func.any_keyword
    required = {p.name for p in func.params if not p.has_default}
    return known and not func.needs_positional and required <= set(params)


def _params(args: ast.arguments) -> list[Param]:
    positional = args.posonlyargs + args.args
    pos_defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    pos_defaults += list(args.defaults)
    # Positional-only parameters cannot be set by name from --param, so they are not offered.
    pairs = list(zip(positional, pos_defaults, strict=True))[len(args.posonlyargs) :]
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    return [_param(arg, default) for arg, default in pairs]


def _param(arg: ast.arg, default: ast.expr | None) -> Param:
    param = Param(arg.arg, annotation=ast.unparse(arg.annotation) if arg.annotation else None)
    if default is not None:
        param.has_default = True
        try:
            value = ast.literal_eval(default)
            json.dumps(value)  # the listing goes out over the API as JSON; sets and bytes cannot
            param.default = value
        except (ValueError, TypeError, SyntaxError, RecursionError):  # not a literal, e.g. `Align.MIN`
            param.default_source = ast.unparse(default)
    return param


def _assigns_result(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "result" for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == "result"
    return False


def _is_show_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name in SHOW_NAMES
