"""The workers' and the CLI's wire models (farm/core/wire.py tells the whole protocol). Apart from
the agents' models so that the agent on a Raspberry Pi, which needs none of these, does not load
them: `farm.core.wire` hands them out on first use (its `__getattr__`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue, PlainSerializer

from farm.core.states import BuildStage, PrinterState, SliceState
from farm.core.wire import Finite, JobView, Wire

# A time as the routes wrote it before they had models: datetime.isoformat() ("+00:00", not "Z").
IsoTime = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json")]

# -- workers: /api/workers, /api/builds/{id}/cad/*, /api/slices/{id}/* ---------------------------


class Hello(Wire):
    name: str = Field(min_length=1, max_length=200)
    queues: list[Literal["cad", "slice"]] = Field(max_length=2)
    sandbox: Literal["isolated", "off", "none"]
    layers: list[str] = Field(default_factory=list, max_length=20)


class WorkerView(Wire):
    name: str
    queues: list[str]
    sandbox: str
    layers: list[str]
    seen_at: IsoTime | None = None


class WorkerClaim(Wire):
    """Who takes, or still holds, a CAD build or a slice (`farm worker` sends host:pid)."""

    worker: str = Field(default="unnamed", min_length=1, max_length=200)


class Lease(Wire):
    """How long a worker's lease lasts and how often to extend it (sent only while it is held)."""

    lease_s: float | None = None
    heartbeat_s: float | None = None


class Held(Lease):
    """A worker's heartbeat's answer; held=false: the work is no longer its (the lease ran out)."""

    held: bool


class CadResult(Wire):
    error: str | None = None
    stl: str | None = None
    threemf: str | None = None
    step: str | None = None
    preview: str | None = None  # 256 x 256 PNG
    preview_small: str | None = None  # 96 x 96 PNG
    objects: int | None = Field(None, ge=1)
    bbox: list[list[Finite]] | None = None
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # mm³ (None: an older worker)
    seconds: Finite | None = None
    # What the design showed but did not print ("outline (a sketch)"): shown on the build.
    skipped: list[Annotated[str, Field(max_length=300)]] = Field(default_factory=list, max_length=200)
    cached: bool | None = None  # the worker's CAD cache had it (None: an older worker did not say)


class SliceMeta(Wire):
    """What the slicer read from the G-code; the farm stores these (others are passed over)."""

    printer_model: str | None = None
    print_time_s: Finite | None = None
    filament_g: Finite | None = None
    filament_mm: Finite | None = None


class SliceResult(Wire):
    error: str | None = None
    gcode: str | None = None
    meta: SliceMeta = Field(default_factory=SliceMeta)
    seconds: Finite | None = None
    cached: bool | None = None  # the worker's slice cache had it


class SliceView(Wire):
    """A slice as the API shows it (views.py slice_view): a slice result's answer."""

    id: int
    printer_model: str
    copies: int | None = None
    state: SliceState
    worker: str | None = None  # pending with a worker: being sliced
    gcode: str | None = None
    print_time_s: int | None = None
    filament_g: float | None = None
    filament_mm: float | None = None
    seconds: float | None = None
    error: str | None = None


class SliceWork(SliceView):
    """A slice as GET /api/slices/{id} shows it (builds.py _slice_work): the slice, and its build's
    mesh and settings."""

    build: int
    stl: str | None = None
    threemf: str | None = None  # several objects: sliced from the 3MF, which keeps them apart
    objects: int | None = None
    preview: str | None = None  # the Bambu package's plate picture when the G-code has none
    preview_small: str | None = None  # plain G-code's embedded thumbnail
    source: str
    kind: str  # cad | mesh | gcode (a G-code is read, not sliced)
    source_sha256: str
    material: str
    quality: str
    overrides: dict[str, str] = Field(default_factory=dict)


class GitSource(Wire):
    """The commit of a git repository a project came from: a submission's and then its build's."""

    url: str
    ref: str | None = None
    commit: str


class BuildView(Wire):
    """A build as the API shows it (views.py build_view): what a CAD worker builds from."""

    id: int
    owner: str | None = None
    source: str  # a project's entry file, else the upload's name
    kind: str  # cad | mesh | gcode
    source_sha256: str
    project: bool = False  # the source is a project archive (tar.gz)
    git: GitSource | None = None
    project_name: str | None = None  # a registered project's part, built by a push hook
    part_name: str | None = None
    git_tag: str | None = None
    use_cache: bool = True
    entry: str | None = None
    params: dict[str, JsonValue] = Field(default_factory=dict)
    preview_only: bool = False  # built to be looked at: no jobs
    material: str
    quality: str
    slicer_settings: dict[str, str] = Field(default_factory=dict)
    stage: BuildStage
    cad_worker: str | None = None
    error: str | None = None
    stl: str | None = None
    threemf: str | None = None
    step_requested: bool = False
    step: str | None = None
    preview: str | None = None
    preview_small: str | None = None
    objects: int | None = None
    skipped: list[str] = Field(default_factory=list)
    bbox: list[list[float]] | None = None
    volume_mm3: float | None = None
    cad_seconds: float | None = None
    slices: list[SliceView] = Field(default_factory=list)
    jobs: list[JobView] = Field(default_factory=list)
    created_at: str | None = None  # ISO 8601


class CadStart(Lease):
    go: bool  # false: the build is past CAD, or another worker holds it
    build: BuildView  # the build as GET /api/builds/{id} shows it


class SliceStart(Lease):
    go: bool  # false: the slice is done, or another worker holds it
    slice: SliceWork


# -- submitters: POST /api/builds -----------------------------------------------------------------


class SubmitOptions(Wire):
    """POST /api/builds' `options` form field (JSON)."""

    entry: str | None = None
    params: dict[str, JsonValue] = Field(default_factory=dict)
    # Set when the upload is a project archive (tar.gz): the .py file inside it to build.
    entry_file: str | None = None
    git: GitSource | None = None  # the project is this commit of a git repository
    no_cache: bool = False
    step: bool = False  # also export a STEP file (a .py design only)
    # Build the part (CAD only: same worker, sandbox and cache) and make no jobs: the dashboard's
    # "Preview". Submitting it afterwards with the same parameters reuses the worker's cached result.
    preview: bool = False
    copies: int = Field(1, ge=1, le=100)
    material: str = "PLA"
    quality: str = "standard"
    color: str | None = None
    printer_model: str | None = None
    priority: int = Field(0, ge=-100, le=100)
    printer: str | None = None  # pin: only this printer may print it
    nozzle: float | None = Field(None, gt=0.1, lt=2.0)
    attempts: int | None = Field(None, ge=1, le=10)  # None: the farm's `job_attempts`
    tags: list[str] = Field(default_factory=list)  # the printer must have every one
    per_plate: int = Field(1, ge=1, le=100)  # copies arranged on one plate (one job per plate)
    # Slicer choices: the everyday ones, and any PrusaSlicer setting (`settings` wins).
    infill: str | None = None
    supports: str | None = None
    brim: Finite | None = None
    settings: dict[str, str] = Field(default_factory=dict)


# -- people: what the CLI and the dashboard read (status, printers, jobs, history) ----------------


class PrinterView(Wire):
    """A printer as the API shows it (views.py printer_view)."""

    name: str
    model: str
    protocol: str
    # The farm's word: the printer's own state, or awaiting_clear while a part is on its bed.
    state: PrinterState | Literal["awaiting_clear"]
    bed_clear: bool
    auto_eject: bool
    message: str | None = None
    job: int | None = None
    progress: float | None = None
    material: str
    color: str | None = None
    nozzle: float
    tags: list[str] = Field(default_factory=list)
    location: str | None = None
    power_group: str | None = None
    last_seen: str | None = None  # ISO 8601; the event stream leaves it out (every heartbeat moves it)
    snapshot: int | None = None  # its camera's latest still: GET /api/printers/NAME/snapshot?id=N
    snapshot_wanted: bool = False
    snapshot_error: str | None = None


class StatusWorker(WorkerView):
    """A worker as GET /api/status shows it: its time as that route always wrote it, pydantic's
    ("Z" for UTC; POST /api/workers answers with isoformat's "+00:00")."""

    seen_at: datetime | None = None


class FarmStatus(Wire):
    """GET /api/status: builds by stage, jobs by state (every one, zeros included), printers by
    state (those there are), and the workers seen last."""

    builds: dict[str, int]
    jobs: dict[str, int]
    printers: dict[str, int]
    printer_count: int
    workers: list[StatusWorker] = Field(default_factory=list)  # absent from older coordinators


class Verdict(Wire):
    """Whether one printer would take a job, and if not why (farm/coordinator/explain.py)."""

    printer: str
    eligible: bool
    reasons: list[str]
    # Only for a ready job a printer would take: its place in that printer's queue (None: further
    # back than the queue looked).
    position: int | None = None


class Explained(Wire):
    """GET /api/jobs/{id}/explain: the job, and each printer's verdict on it, by name."""

    job: JobView
    printers: list[Verdict]


class Totals(Wire):
    """Ended jobs added up (farm/coordinator/history.py): hours on the printer and filament (the
    slicer's estimate) count finished prints only."""

    done: int
    failed: int
    cancelled: int
    hours: float
    filament_g: float


class _Printer(Wire):
    printer: str  # "(none)": jobs that ended before a printer took them


class _Material(Wire):
    material: str


# Pydantic orders the fields base by base, the last base first: the name leads, as in the JSON.
class PrinterTotals(Totals, _Printer):
    pass


class MaterialTotals(Totals, _Material):
    pass


class HistoryTotals(Wire):
    all: Totals
    by_printer: list[PrinterTotals]  # the most jobs first
    by_material: list[MaterialTotals]


class HistoryJob(JobView):
    """An ended job in GET /api/history, with its part's pictures for the dashboard's rows."""

    preview: str | None = None  # an artifact id: the 96 x 96 PNG, else the 256 x 256 one
    stl: str | None = None  # an artifact id: the part's mesh (the dashboard's 3D view)


class History(Wire):
    """GET /api/history: the ended jobs asked for, newest first (one page), and the totals of every
    ended job the filters match."""

    jobs: list[HistoryJob]
    totals: HistoryTotals
