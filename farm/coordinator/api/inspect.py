"""POST /api/inspect: a design's entry points and their parameters, read from its source without
running it (what `farm inspect` prints), for the dashboard's submit form: a lone .py file, or a
project archive (the tar.gz a submit sends, with `entry_file` naming the .py file inside it)."""

from __future__ import annotations

import ast
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from farm.coordinator.api.deps import require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.sources import _python_files, _read_text
from farm.core.entry_points import list_entry_points
from farm.core.names import UnsafeName, check_entry_path

MAX_SOURCE = 1 << 20  # a design's one .py file
MAX_PROJECT = 50 << 20  # a project archive, packed (farm/core/project.py's limit is 50 MB unpacked)
router = APIRouter(prefix="/api", tags=["builds"], responses=AUTH)


def _choices(annotation: str | None) -> list[Any] | None:
    """The values of a `Literal[...]` annotation (an Enum field is listed as one), else None."""
    if not annotation or "Literal" not in annotation:
        return None
    try:
        node = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Subscript):
        return None
    head = node.value
    if not (isinstance(head, ast.Name) and head.id == "Literal") and not (
        isinstance(head, ast.Attribute) and head.attr == "Literal"
    ):
        return None
    items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    try:
        values = [ast.literal_eval(item) for item in items]
    except (ValueError, SyntaxError, TypeError):
        return None
    return values if all(isinstance(v, (str, int, float, bool)) for v in values) else None


def _for_the_form(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each parameter with `choices` when its type allows only some values (a Literal, an Enum),
    and an unannotated one with the `type` of its default (JSON writes 40.0 as 40: still a float)."""
    for entry in entries:
        for param in entry.get("params") or []:
            if not param.get("annotation") and param.get("default") is not None:
                param["type"] = type(param["default"]).__name__
            choices = _choices(param.get("annotation"))
            if choices is not None:
                param["choices"] = choices
    return entries


def _read(
    data: bytes, project: bool, entry_file: str | None
) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The archive's .py files (none for a lone file) and the entry points; in a thread: an
    archive is unpacked to be read."""
    modules: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="farm-inspect-") as folder:
        if project:
            archive = Path(folder) / "project.tar.gz"
            archive.write_bytes(data)
            try:
                modules = _python_files(archive)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # damaged past its start
                raise HTTPException(422, f"the upload is not a project archive (tar.gz): {exc}") from None
            if entry_file is None:
                return modules, []
            try:
                entry_file = check_entry_path(entry_file)
            except UnsafeName as exc:
                raise HTTPException(422, str(exc)) from None
            if entry_file not in modules:
                raise HTTPException(422, f"{entry_file} is not a .py file of the project")
            data = modules[entry_file]
        path = Path(folder) / "design.py"
        path.write_bytes(data)
        try:
            entries = list_entry_points(path, lambda p: _read_text(modules.get(p, b"")), entry_file or "")
        except SyntaxError as exc:
            raise HTTPException(422, f"line {exc.lineno}: SyntaxError: {exc.msg}") from None
        except UnicodeDecodeError:
            raise HTTPException(422, "the file is not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:  # a NUL byte; nesting too deep to parse
            raise HTTPException(422, f"the file cannot be read as Python: {exc}") from None
    return modules, entries


@router.post("/inspect", dependencies=[Depends(require("submitter"))], responses=errors(413, 415, 422))
async def inspect_source(
    file: UploadFile,
    entry_file: Annotated[str | None, Form(max_length=255)] = None,
) -> dict:
    """The entry points of a build123d .py file with their parameters, defaults, bounds and
    choices. A project archive (tar.gz) answers with its .py `files`, and, given `entry_file`,
    that file's entry points (a parameter model imported from another file of it is read too)."""
    name = file.filename or ""
    project = name.endswith((".tar.gz", ".tgz"))
    if not project and not name.endswith(".py"):
        raise HTTPException(415, "only a .py design or a project archive (.tar.gz) can be inspected")
    if entry_file is not None and not project:
        raise HTTPException(422, "entry_file names a file inside a project archive (.tar.gz)")
    limit = MAX_PROJECT if project else MAX_SOURCE
    data = await file.read(limit + 1)
    if len(data) > limit:
        what = "a project archive" if project else "a design's .py file"
        raise HTTPException(413, f"{what} is at most {limit >> 20} MiB here")
    modules, entries = await run_in_threadpool(_read, data, project, entry_file)
    out: dict[str, Any] = {"entries": _for_the_form(entries)}
    if project:
        out["files"] = sorted(modules)
    return out
