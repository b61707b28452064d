"""What a CAD script offers to build, read with `ast` only.

This runs in the coordinator and the CLI, which have no build123d and must never execute user code.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHOW_NAMES = frozenset({"show", "show_object", "show_all"})


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


@dataclass
class ScriptInfo:
    functions: list[Function] = field(default_factory=list)
    calls_show: bool = False
    has_result: bool = False


def scan_source(source: Path) -> ScriptInfo:
    """Public module-level functions, and whether the script shows or assigns `result`.

    Raises SyntaxError for a file that does not parse.
    """
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    info = ScriptInfo()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            info.functions.append(Function(node.name, node.lineno, _params(node.args)))
        elif _assigns_result(node):
            info.has_result = True
    info.calls_show = any(_is_show_call(node) for node in ast.walk(tree))
    return info


def list_entry_points(source: Path) -> list[dict[str, Any]]:
    """Entry points as plain dicts, for the API and the CLI.

    One `{"kind": "function", "name", "line", "params": [{"name", "default", ...}]}` per public
    function, then `{"kind": "show"}` and/or `{"kind": "result"}` when the script builds at module level.
    """
    info = scan_source(source)
    entries: list[dict[str, Any]] = [
        {
            "kind": "function",
            "name": f.name,
            "line": f.line,
            "params": [vars(p).copy() for p in f.params],
        }
        for f in info.functions
    ]
    if info.calls_show:
        entries.append({"kind": "show", "name": "show"})
    if info.has_result:
        entries.append({"kind": "result", "name": "result"})
    return entries


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
