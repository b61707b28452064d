"""`printfarm.toml`: which parts of a repository the farm builds, for which printers, and when it prints.

A manifest lives at the root of a design repository (or beside the script of a lone design)::

    [[parts]]
    name = "tray"                     # unique in the manifest; names the part's revisions
    file = "main.py"                  # the script, relative to the manifest's folder
    artifact = "custom_tray"          # a MakerRepo @artifact / @customizable (optional)
    params = { pockets = 6 }          # one parameter set ...
    matrix = { height = [10, 16] }    # ... times each axis (the cross product)
    print = "on-tag"                  # manual | on-tag | on-push
    tags = "v*"                       # for on-tag: the tag names that print (fnmatch)
    branch = "main"                   # for on-push: the branch that prints

    [[parts.targets]]
    printer_model = "MK4"
    material = "PETG"
    color = "#ff8800"
    copies = 2
    per_plate = 2

Without a manifest the farm builds every `@artifact` it finds and prints nothing
(`discover_parts`). Nothing here runs the user's code: the discovery reads the scripts' syntax trees.
Errors name the file, and where tomllib or pydantic can say so, the line and the field.
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

MANIFEST_NAME = "printfarm.toml"
MAX_MANIFEST_BYTES = 256 * 1024
MAX_BUILDS_PER_PART = 200  # a matrix's cross product; the same cap as `farm submit --matrix`
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PrintWhen = Literal["manual", "on-tag", "on-push"]


class ManifestError(Exception):
    """The manifest is unreadable or invalid; the message names the file and what to change."""


class Target(BaseModel):
    """Where and how a part prints: the same fields `farm submit` takes."""

    model_config = ConfigDict(extra="forbid")

    printer_model: str | None = Field(None, max_length=40)
    material: str = Field("PLA", max_length=40)
    color: str | None = Field(None, max_length=40)
    quality: str = Field("standard", max_length=40)
    copies: int = Field(1, ge=1, le=100)
    per_plate: int = Field(1, ge=1, le=100)
    priority: int = Field(0, ge=-100, le=100)
    tags: list[Annotated[str, Field(max_length=40)]] = Field(default_factory=list, max_length=20)
    nozzle: float | None = Field(None, gt=0.1, lt=2.0)
    infill: str | None = Field(None, max_length=20)
    supports: str | None = Field(None, max_length=20)
    brim: float | None = Field(None, ge=0, le=50)
    settings: dict[str, str] = Field(default_factory=dict)


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    file: str
    artifact: str | None = Field(None, max_length=200)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    matrix: dict[str, list[JsonValue]] = Field(default_factory=dict)
    print: PrintWhen = "manual"
    tags: str = Field("v*", max_length=200)  # the tag names that print, for on-tag
    branch: str = Field("main", max_length=200)  # the branch that prints, for on-push
    targets: list[Target] = Field(default_factory=list, max_length=20)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "a part's name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value or not value.endswith(".py"):
            raise ValueError("file is a .py script relative to the manifest's folder, inside it")
        return str(path)

    @field_validator("matrix")
    @classmethod
    def _matrix(cls, value: dict[str, list[JsonValue]]) -> dict[str, list[JsonValue]]:
        for axis, options in value.items():
            if not options:
                raise ValueError(f"matrix axis '{axis}' has no values")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> Part:
        overlap = sorted(set(self.params) & set(self.matrix))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} in both params and matrix: keep one")
        if self.builds_count() > MAX_BUILDS_PER_PART:
            raise ValueError(f"the matrix makes {self.builds_count()} builds; at most {MAX_BUILDS_PER_PART}")
        if self.print != "manual" and not self.targets:
            raise ValueError(f"print = '{self.print}' needs at least one [[parts.targets]]")
        return self

    def builds_count(self) -> int:
        count = 1
        for options in self.matrix.values():
            count *= len(options)
        return count

    def param_sets(self) -> list[dict[str, JsonValue]]:
        """One parameter set per build: `params`, times each matrix axis, in the manifest's order."""
        axes = list(self.matrix.items())
        sets = []
        for values in itertools.product(*(options for _, options in axes)):
            sets.append(
                {**self.params, **{name: value for (name, _), value in zip(axes, values, strict=True)}}
            )
        return sets

    def prints_on_push(self, branch: str) -> bool:
        return self.print == "on-push" and branch == self.branch

    def prints_on_tag(self, tag: str) -> bool:
        return self.print == "on-tag" and fnmatch.fnmatchcase(tag, self.tags)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    parts: list[Part] = Field(default_factory=list, max_length=200)
    # Set when there was no printfarm.toml and the parts were found (`discover_parts`).
    discovered: bool = Field(False, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        seen: set[str] = set()
        for part in self.parts:
            if part.name in seen:
                raise ValueError(f"two parts are named '{part.name}'")
            seen.add(part.name)
        return self

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """The manifest in `text`; `source` names it in errors."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: " + "; ".join(_describe(data, err) for err in exc.errors())) from None


def _describe(data: object, err: object) -> str:
    """`parts[1] ("lid").targets[0].copies: Input should be less than or equal to 100`."""
    assert isinstance(err, dict)
    where: list[str] = []
    node = data
    for key in err.get("loc", ()):
        if isinstance(key, int):
            label = f"[{key}]"
            if (
                isinstance(node, list)
                and key < len(node)
                and isinstance(node[key], dict)
                and "name" in node[key]
            ):
                label += f' ("{node[key]["name"]}")'
            where.append(label)
            node = node[key] if isinstance(node, list) and key < len(node) else None
        else:
            where.append(("." if where else "") + str(key))
            node = node.get(key) if isinstance(node, dict) else None
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{''.join(where) or 'the manifest'}: {message}"


def load_manifest(folder: Path) -> Manifest:
    """The manifest of a checkout: its printfarm.toml, or the @artifacts found when it has none.

    Every part's file must exist inside `folder` (symlinks that leave it are refused).
    """
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return discover_parts(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{MANIFEST_NAME}: cannot be read: {exc}") from None
    manifest = parse_manifest(text)
    root = folder.resolve()
    for part in manifest.parts:
        script = (folder / part.file).resolve()
        if not script.is_relative_to(root):
            raise ManifestError(
                f"{MANIFEST_NAME}: part '{part.name}': {part.file} leads outside the repository"
            )
        if not script.is_file():
            raise ManifestError(f"{MANIFEST_NAME}: part '{part.name}': {part.file} does not exist")
    return manifest


SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist"}
MAX_DISCOVERED_FILES = 500


def discover_parts(folder: Path) -> Manifest:
    """No manifest: one part per `@artifact` function of every script (never printed).

    Only `@artifact` without parameters is built: a `@customizable` needs values someone chose.
    """
    parts: list[Part] = []
    scanned = 0
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder)
        if any(piece in SKIP_DIRS or piece.startswith(".") for piece in rel.parts[:-1]) or path.is_symlink():
            continue
        scanned += 1
        if scanned > MAX_DISCOVERED_FILES:
            break
        for function in artifact_functions(path):
            name = function if not any(p.name == function for p in parts) else f"{rel.stem}.{function}"
            if NAME_RE.match(name):
                parts.append(Part(name=name, file=rel.as_posix(), artifact=function))
    return Manifest(parts=parts, discovered=True)


def artifact_functions(path: Path) -> list[str]:
    """The names of the top-level functions decorated `@artifact` (or `@mr.artifact`) in a script."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                label = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
                if label == "artifact":
                    names.append(node.name)
    return names
