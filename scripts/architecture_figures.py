"""The figures issue #16 tracks, measured on the tree: `python scripts/architecture_figures.py [--json]`.

- project imports inside functions (a hidden dependency unless a heavy optional package is the reason),
  with a reason on the import's line (`# lazy: <why>`, on the first line of a multi-line import) and
  without one (the goal: none without; tests/test_architecture.py holds it there),
- functions longer than 60 lines and files longer than 600 lines,
- `# type: ignore` comments,
in `farm/`, `workers/` and `printers/`. Reads the syntax trees; runs nothing.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "workers", "printers")
LONG_FUNCTION, LONG_FILE = 60, 600
REASON = re.compile(r"#\s*lazy:\s*\S")  # `# lazy: <why>` on the import's (first) line


def inner_imports() -> tuple[list[str], list[str]]:
    """The project imports inside functions, as "path:line": (with a reason, without one)."""
    explained: set[str] = set()
    unexplained: set[str] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for node in ast.walk(ast.parse(text, filename=rel)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and _is_project(inner):
                        has_reason = REASON.search(lines[inner.lineno - 1])
                        (explained if has_reason else unexplained).add(f"{rel}:{inner.lineno}")
    return sorted(explained, key=_by_place), sorted(unexplained, key=_by_place)


def _by_place(where: str) -> tuple[str, int]:
    path, _, line = where.rpartition(":")
    return path, int(line)


def figures() -> dict[str, object]:
    explained, unexplained = inner_imports()
    long_functions: list[str] = []
    long_files: list[str] = []
    ignores = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            lines = text.count("\n") + 1
            ignores += text.count("# type: ignore")
            if lines > LONG_FILE:
                long_files.append(f"{rel} ({lines})")
            tree = ast.parse(text, filename=rel)
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONG_FUNCTION:
                    long_functions.append(f"{rel}:{node.lineno} {node.name} ({length})")
    return {
        "project_imports_in_functions": len(explained) + len(unexplained),
        "with_reason": len(explained),
        "without_reason": len(unexplained),
        "functions_over_60_lines": len(long_functions),
        "files_over_600_lines": len(long_files),
        "type_ignores": ignores,
        "imports_without_reason": unexplained,
        "long_functions": long_functions,
        "long_files": long_files,
    }


def _is_project(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
    return any(alias.name.split(".")[0] in PACKAGES for alias in node.names)


if __name__ == "__main__":
    result = figures()
    if "--json" in sys.argv:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if isinstance(value, list):
                print(f"{key}:", *value, sep="\n  ")
            else:
                print(f"{key}: {value}")
