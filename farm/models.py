"""All coordinator tables in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel

from farm.states import BuildStage, JobState, SliceState


def utcnow() -> datetime:
    return datetime.now(UTC)


class Token(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str = "admin"  # admin | submitter | worker | agent
    secret_sha256: str = Field(index=True, unique=True)
    printer: str | None = None  # an agent token acts only for this printer
    created_at: datetime = Field(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    sha256: str = Field(primary_key=True)
    size: int
    name: str = ""  # the first name it was uploaded under, for downloads
    created_at: datetime = Field(default_factory=utcnow)


class Build(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    source_name: str
    source_sha256: str
    source_kind: str  # "cad" | "mesh"
    entry: str | None = None
    params_json: str = "{}"
    material: str = "PLA"
    quality: str = "standard"
    stage: BuildStage = Field(default=BuildStage.QUEUED, index=True)
    error: str | None = None
    stl_sha256: str | None = None
    threemf_sha256: str | None = None
    bbox_json: str | None = None
    cad_seconds: float | None = None


class Slice(SQLModel, table=True):
    """G-code for one build on one printer model; every printer of that model shares it."""

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = Field(foreign_key="build.id", index=True)
    printer_model: str
    state: SliceState = SliceState.PENDING
    gcode_sha256: str | None = None
    print_time_s: int | None = None
    filament_g: float | None = None
    filament_mm: float | None = None
    slice_seconds: float | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    build_id: int = Field(foreign_key="build.id", index=True)
    copy_index: int = 1
    state: JobState = Field(default=JobState.WAITING, index=True)
    printer_model: str | None = None  # None: any model the build was sliced for
    material: str = "PLA"
    color: str | None = None
    priority: int = 0
    printer: str | None = None  # the printer it is bound to once claimed
    slice_id: int | None = None
    fence: int = 0  # bumped on every claim; a report with an older value is refused
    lease_expires: datetime | None = None
    progress: float | None = None
    remaining_s: int | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Printer(SQLModel, table=True):
    name: str = Field(primary_key=True)
    model: str
    protocol: str
    state: str = "offline"
    message: str | None = None
    job_id: int | None = None
    progress: float | None = None
    material: str = "PLA"  # what is loaded; the operator sets it (`farm printers set`)
    color: str | None = None
    auto_eject: bool = False  # clears its own bed: no one needs to confirm before the next job
    bed_clear: bool = True  # False from a print's end until someone confirms the bed is empty
    agent_version: str | None = None
    last_seen: datetime | None = None
