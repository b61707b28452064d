"""What a CAD build is asked and what it answers: the request, its limits, the result or the error
(a message for the user), and the names of the files a build writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STL_NAME, THREEMF_NAME, RESULT_NAME, LOG_NAME = "model.stl", "model.3mf", "result.json", "build.log"
STEP_NAME, PREVIEW_NAME, PREVIEW_SMALL_NAME = "model.step", "preview.png", "preview-96.png"
OUTPUT_NAMES = (STL_NAME, THREEMF_NAME, STEP_NAME, PREVIEW_NAME, PREVIEW_SMALL_NAME, RESULT_NAME, LOG_NAME)

Point = tuple[float, float, float]


@dataclass(frozen=True)
class CadLimits:
    cpu_s: int = 300
    wall_s: float = 600
    # Address space (RLIMIT_AS), not RSS: a fresh child already maps ~1 GB (OCP and friends; ~250 MB
    # of it resident), so a build has ~3 GB to work with. Below ~1 GB even a plain box crashes.
    memory_mb: int = 4096
    output_mb: int = 512
    procs: int = 128  # threads and processes beyond the uid's current ones; only enforced for non-root


class CadError(Exception):
    """A build that failed, with a message meant for the user.

    kind: syntax | entry | params | exception | empty | mesh (the user's script: mesh = it fails the
    mesh checks) or limit | crash (the process).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class CadResult:
    stl: Path
    threemf: Path
    bbox: tuple[Point, Point]
    volume: float
    objects: int  # objects on the plate: one per shape shown or returned, one per solid of a compound
    log: Path | None = None  # what the script printed
    warnings: list[str] = field(default_factory=list)
    step: Path | None = None  # only when the request asked for it
    preview: Path | None = None  # 256 x 256 PNG, isometric
    preview_small: Path | None = None  # 96 x 96 PNG
    mesh: dict[str, Any] = field(default_factory=dict)  # farm.core.mesh.MeshReport, with check/preview ms
    # What the script showed: {"name", "kind", "solids", "prints", "color"?} per object (workers.scene)
    shown: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "outline (a sketch)": shown, not printed


@dataclass
class CadRequest:
    """One build. With `project` (a tar.gz of the project), `source` is the entry file's path inside it."""

    source: Path
    outdir: Path
    entry: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # str from --param, any JSON from --params
    project: Path | None = None
    env: Path | None = None  # site-packages of the project's requirements (workers.cad_env)
    step: bool = False  # also export a STEP file
    inspect: bool = False  # only run the script and list what it shows (CadRunner.inspect)
