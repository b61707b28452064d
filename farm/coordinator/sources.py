"""Reading a submitted design at submit time, without running it: project archives and parameters."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from farm.core.entry_points import scan_text, typed_params, unknown_names
from farm.core.param_values import ParamValueError

MAX_SOURCE_BYTES = 4 << 20  # a .py file larger than this is not read for checks (the build still runs)


class SourceProblem(ValueError):
    """What is wrong with a submitted design, for a 4xx."""


def check_cad_source(
    stored: Path,
    entry_file: str | None,
    entry: str | None,
    params: dict[str, Any],
    *,
    validate: bool = True,
    name: str = "the design",
) -> dict[str, Any]:
    """The submission's parameters, typed as its entry function declares; raises SourceProblem.

    A project archive must be a tar.gz holding `entry_file`. Parameters going to a MakerRepo
    `@customizable` (or any function taking one pydantic model) are validated against the model
    rebuilt from source; those going to a plain function are typed by its annotations and
    defaults, so that `--param width=40` and `{"width": 40}` in a --params file are one build.
    A syntax error is not reported here: the build reports it with its line. validate=False:
    the parameter model's checks are left to the build (which has the real model).
    """
    if entry_file is None:
        text = _read_text(stored.read_bytes())
        modules: dict[str, bytes] = {}
        module_path = ""
    else:
        try:
            modules = _python_files(stored)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceProblem(f"the upload is not a project archive (tar.gz): {exc}") from None
        entry_file = PurePosixPath(entry_file).as_posix()
        if entry_file not in modules:
            listing = ", ".join(sorted(modules)[:20]) or "none"
            raise SourceProblem(f"{entry_file} is not in the project; its .py files: {listing}")
        text = _read_text(modules[entry_file])
        module_path = entry_file
    if text is None:
        return params
    try:
        info = scan_text(
            text, module_path or "source.py", lambda p: _read_text(modules.get(p, b"")), module_path
        )
    except (SyntaxError, ValueError, RecursionError):
        return params
    if problem := unknown_names(info, module_path or name, entry, params):
        raise SourceProblem(problem)
    try:
        return typed_params(info, entry, params, validate=validate)
    except ParamValueError as exc:
        raise SourceProblem(str(exc)) from None


def _python_files(archive: Path) -> dict[str, bytes]:
    found = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".py"):
                reader = tar.extractfile(member) if member.size <= MAX_SOURCE_BYTES else None
                found[PurePosixPath(member.name).as_posix()] = reader.read() if reader else b""
    return found


def _read_text(data: bytes) -> str | None:
    if not data or len(data) > MAX_SOURCE_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
