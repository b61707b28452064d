"""All coordinator tables in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Enum, Index, Table, UniqueConstraint
from sqlmodel import Field, SQLModel, col

from farm.core.states import BuildStage, JobState, PrinterState, SliceState


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Row(Protocol):
    @property
    def id(self) -> int | None: ...


def stored_id(row: _Row) -> int:
    """The id of a row the database has seen: its key is typed `int | None` only because a new row
    has none until its first flush."""
    if row.id is None:
        raise ValueError(f"this {type(row).__name__} has no id: it was never flushed")
    return row.id


def table_of(model: type[SQLModel]) -> Table:
    """A model's table, for statements built once at import (SQLModel sets `__table__` untyped)."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


class Token(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str = "admin"  # admin | submitter | viewer | worker | agent (farm/coordinator/api/tokens.py)
    secret_sha256: str = Field(index=True, unique=True)
    printer: str | None = None  # an agent token acts only for this printer
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None  # refused from then on; None: never expires
    revoked_at: datetime | None = None  # kept, not deleted: builds still name it as their owner


class EnrolCode(SQLModel, table=True):
    """A one-time code `farm printers add` prints; `farm agent enroll` trades it for an agent token."""

    id: int | None = Field(default=None, primary_key=True)
    secret_sha256: str = Field(index=True, unique=True)  # hashed like tokens: the code is shown once
    printer: str
    driver: str  # what the Pi is asked for first; it may choose another
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None  # set once, atomically: a code enrols one Pi


class JobSnapshot(SQLModel, table=True):
    """A still from a printer's camera, taken by its agent; the image is an artifact. `job_id`:
    the job it shows (None: asked for while the printer held no job)."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int | None = Field(default=None, index=True)
    printer: str | None = Field(default=None, index=True)  # None: taken before stills named it
    moment: str  # start | end | failure | request
    sha256: str
    media_type: str  # image/png or image/jpeg, as the printer sent it
    taken_at: datetime = Field(default_factory=utcnow)


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
    # A project: source_sha256 is a tar.gz of it and source_name the entry file's path inside.
    project: bool = False
    git_url: str | None = None  # a project checked out from git: where, which ref, which commit
    git_ref: str | None = None
    git_commit: str | None = None
    # A build of a registered project's part (printfarm.toml): its revisions are listed by these.
    project_name: str | None = Field(default=None, index=True)
    part_name: str | None = None
    git_tag: str | None = None  # the tag whose push made this build
    use_cache: bool = True  # False: `submit --no-cache`, rebuild even if the CAD cache has it
    entry: str | None = None
    params_json: str = "{}"
    material: str = "PLA"
    quality: str = "standard"
    overrides_json: str = "{}"  # slicer settings the submit chose (--infill, --set, ...)
    stage: BuildStage = Field(default=BuildStage.QUEUED, index=True)
    error: str | None = None
    # In `cad`, a worker owns the build until cad_lease_expires; its heartbeat extends that. Past it
    # (the worker died), the coordinator sends the build again (pipeline.expire_work_leases).
    cad_worker: str | None = None  # host:pid
    cad_lease_expires: datetime | None = None
    cad_attempts: int = 0  # CAD runs begun; too many lost workers and the build fails
    stl_sha256: str | None = None
    threemf_sha256: str | None = None
    bbox_json: str | None = None
    volume_mm3: float | None = None  # the solids' volume, from the CAD model (not the mesh)
    cad_seconds: float | None = None
    want_step: bool = False  # `submit --step`: the CAD worker also exports a STEP file
    step_sha256: str | None = None
    preview_sha256: str | None = None  # 256 x 256 PNG of the part (farm/core/mesh.py)
    preview_small_sha256: str | None = None  # 96 x 96
    objects: int | None = None  # objects on the plate; more than one: slice the 3MF, not the STL
    # What the design showed but the build did not print: ["outline (a sketch)", ...], as JSON
    skipped_json: str | None = None
    owner: str | None = None  # the submitting token's name; None: submitted before owners existed


class Slice(SQLModel, table=True):
    """G-code for one build on one printer model; every printer of that model shares it."""

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = Field(foreign_key="build.id", index=True)
    printer_model: str
    copies: int = 1  # arranged on one plate
    state: SliceState = SliceState.PENDING
    # A pending slice a worker has begun: whose, and until when (its heartbeat extends it).
    worker: str | None = None
    lease_expires: datetime | None = None
    attempts: int = 0  # slicing runs begun
    sent_at: datetime | None = None  # last sent to the queue without being begun; None: created_at
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
    copy_index: int = 1  # which plate of the build this is
    copies: int = 1  # parts on its plate (`submit --copies 10 --per-plate 4`: 4, 4, 2)
    state: JobState = Field(default=JobState.WAITING, index=True)
    printer_model: str | None = None  # None: any model the build was sliced for
    material: str = "PLA"
    color: str | None = None
    priority: int = 0
    printer: str | None = Field(default=None, index=True)  # the printer it is bound to once claimed
    pinned_printer: str | None = None  # `submit --printer NAME`: only this printer may take it
    tags: str = ""  # ",a,b," sorted: the printer must have every one (see farm/core/tags.py)
    nozzle: float | None = None  # mm; None: any nozzle
    # Retry policy: a failed print goes back to the queue, after a back-off, for another printer.
    max_attempts: int = 1
    attempts: int = 0  # prints that failed so far
    failed_on: str = ""  # ",name,name," of printers it failed on: they do not get it again
    retry_at: datetime | None = None  # not claimable before this (back-off)
    slice_id: int | None = None
    fence: int = 0  # bumped on every claim; a report with an older value is refused
    lease_expires: datetime | None = None
    progress: float | None = None
    remaining_s: int | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None  # claimed
    printing_at: datetime | None = None  # reached the printer (farm/coordinator/observe.py; for metrics)
    finished_at: datetime | None = None
    owner: str | None = None  # its build's owner: who may cancel or retry it (farm/coordinator/api/access.py)


# The claim's queue order (farm.coordinator.dispatch): the first ready jobs come straight off this index,
# and the ones waiting past the starvation limit off the second.
Index("ix_job_queue", col(Job.state), col(Job.priority).desc(), col(Job.created_at), col(Job.id))
Index("ix_job_waiting", col(Job.state), col(Job.created_at))


class Printer(SQLModel, table=True):
    name: str = Field(primary_key=True)
    model: str
    protocol: str
    # Stored as the state's value in a plain VARCHAR, as before it was an enum: kept databases
    # read as they are (the job's and build's states are stored by name instead).
    state: PrinterState = Field(
        default=PrinterState.OFFLINE,
        sa_type=Enum(
            PrinterState, native_enum=False, length=None, values_callable=lambda e: [m.value for m in e]
        ),
    )
    message: str | None = None
    job_id: int | None = None
    progress: float | None = None
    material: str = "PLA"  # what is loaded; the operator sets it (`farm printers set`)
    color: str | None = None
    nozzle: float = 0.4  # mm, as fitted; the operator sets it (`farm printers set --nozzle 0.6`)
    tags: str = ""  # ",a,b," sorted, e.g. ",enclosed,hardened,"
    location: str | None = None
    power_group: str | None = None  # printers on one circuit: only so many may heat up at once
    auto_eject: bool = False  # clears its own bed: no one needs to confirm before the next job
    bed_clear: bool = True  # False from a print's end until someone confirms the bed is empty
    agent_version: str | None = None
    last_seen: datetime | None = None
    snapshot_id: int | None = None  # its camera's latest still (JobSnapshot)
    snapshot_wanted: datetime | None = None  # an operator asked for a still; its agent's next call says so
    snapshot_error: str | None = None  # why its agent could not take the still last asked for


class Worker(SQLModel, table=True):
    """A CAD or slicing worker as it last announced itself: what it serves and how it walls builds in."""

    name: str = Field(primary_key=True)  # host:pid
    queues: str = ""  # comma-separated
    sandbox: str = "isolated"  # isolated | off (FARM_CAD_SANDBOX=off) | none (serves no CAD queue)
    layers: str = ""  # the active sandbox layers, comma-separated
    seen_at: datetime = Field(default_factory=utcnow)


class Project(SQLModel, table=True):
    """A repository the farm follows: its push hooks build the pushed commit's parts (hooks.py)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    git_url: str
    branch: str = "main"  # pushes to branches matching this (fnmatch) are built; tags always are
    # The hook's HMAC key (GitHub, Gitea) or token (GitLab): kept in clear, since verifying needs it.
    hook_secret: str
    # HTTPS credentials for fetching; used only by the coordinator's git, never shown by any answer.
    git_username: str | None = None
    git_token: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class HookDelivery(SQLModel, table=True):
    """A push a hook accepted: stored before the answer, built off the request path (hooks.py).

    Unique per project by the service's delivery id and by the body's hash: a replay, even under a
    new delivery id (the signature covers only the body), is "already seen"."""

    __table_args__ = (
        UniqueConstraint("project_id", "service", "delivery_key"),
        UniqueConstraint("project_id", "body_sha256"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(index=True)
    service: str  # github | gitea | gitlab
    delivery_key: str  # the service's delivery id (or the body's hash when it sends none)
    body_sha256: str
    ref: str  # refs/heads/main, refs/tags/v1
    commit: str  # what the push says it points to (a tag object is peeled when fetched)
    state: str = Field(default="pending", index=True)  # pending | done | failed
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow)  # not tried before this (back-off, or claimed)
    claim: str | None = None  # who works on it now (a random id per attempt)
    error: str | None = None
    message: str | None = None  # what it did: "4 builds", "nothing new"
    builds_json: str = "[]"
    received_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
