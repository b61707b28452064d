"""The wire protocol between the agents, the workers, the CLI and the coordinator: what each side
sends and what it gets back, one pydantic model per body (#16).

The coordinator's routes take these as their bodies and declare the answers as their
`response_model` (farm/coordinator/api/agents.py, workers.py, builds.py, what people read and
change: reads.py, history.py, operate.py, revisions.py, snapshots.py, and the admins' tokens.py,
notifications.py, projects.py, enrol.py, signin.py); FarmClient's typed methods
(farm/core/client.py) send the requests and parse the answers, and the `farm` commands call
them (all but the images they save, `farm watch`'s event stream and `farm up`'s own setup);
tests/test_wire.py checks that the OpenAPI document shows the same
models. The JSON is the one sent before the models were shared: the same names in the same order,
the same optional fields (a key absent stays absent: the routes answer with
`response_model_exclude_unset`, the client sends with `exclude_unset`, the CLI prints with it).

In the core, so that the agent's install (pydantic, no FastAPI) has them too. The agents' models
are here; the workers' and the CLI's reads are in wire_workers_cli.py, the admins' and operators'
in wire_admin.py, which this module loads on first use of one of them (`wire.BuildView` works
everywhere): the agent never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from farm.core.states import JobState, PrinterState


class Wire(BaseModel):
    """The base of every wire model. (Not `defer_build`: it would save the agent ~0.4 MB until its
    first heartbeat, and makes FastAPI's OpenAPI warn about every aliased body.)"""


MAX_ID = 2**31 - 1  # the database's INTEGER: a larger id is a 422, not a database error
MAX_NAME = 200  # a printer's name
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (PostgreSQL refuses NUL in text)

Id = Annotated[int, Field(ge=0, le=MAX_ID)]  # stored in an INTEGER: larger is a 422, not a 500
Percent = Annotated[float, Field(allow_inf_nan=False)]  # NaN is not JSON
Finite = Annotated[float, Field(allow_inf_nan=False)]  # stored, then shown: JSON has no NaN or inf


def _no_control_characters(text: str) -> str:
    """NAME_PATTERN, checked in Python: pydantic-core's regex engine costs the agent 0.6 MB of RSS
    for this one pattern, and its Python engine would let a trailing newline through (`$`)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("must not contain control characters")
    return text


PrinterName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME, json_schema_extra={"pattern": NAME_PATTERN}),
    AfterValidator(_no_control_characters),
]


# -- printer agents: /api/agents/* ----------------------------------------------------------------


class Register(Wire):
    printer: PrinterName
    model: str
    protocol: str
    agent_version: str | None = None
    auto_eject: bool = False
    # What the printer showed when its agent started (older agents do not say): a finished or
    # failed print then is a part on the bed.
    state: PrinterState | None = None


class Heartbeat(Wire):
    """A heartbeat's body, and a claim's (a claim is a heartbeat too)."""

    printer: PrinterName
    state: PrinterState
    message: str | None = None
    progress: Percent | None = None
    material: str | None = None  # only when the printer itself reports what is loaded
    color: str | None = None


class Report(Wire):
    printer: PrinterName
    fence: Id
    state: JobState
    progress: Percent | None = None
    remaining_s: Id | None = None
    error: str | None = None
    upload_bytes: Id | None = None  # with the first `printing` report: what the upload sent, how fast
    upload_s: Annotated[float, Field(ge=0, le=1e7)] | None = None


class JobView(Wire):
    """A job as the API shows it (farm/coordinator/api/views.py job_view): a report's answer."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    build: int | None = None
    owner: str | None = None
    source: str | None = None
    copy_index: int | None = Field(None, alias="copy")  # `copy` would hide BaseModel.copy
    copies: int | None = None
    state: JobState
    printer: str | None = None
    printer_model: str | None = None
    material: str | None = None
    color: str | None = None
    priority: int | None = None
    nozzle: float | None = None
    tags: list[str] = Field(default_factory=list)
    pinned_printer: str | None = None
    attempts: int | None = None
    max_attempts: int | None = None
    retry_at: str | None = None  # ISO 8601
    progress: float | None = None
    remaining_s: int | None = None
    print_time_s: int | None = None
    filament_g: float | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class Claim(JobView):
    """The job a printer is to print, under its lease: a claim's answer (and register's `job`)."""

    fence: int  # sent back with every report; an older one is refused (409)
    gcode: str  # the G-code's artifact (sha256)
    gcode_name: str  # the file name on the printer; only the farm names files there


class Registered(Wire):
    printer: str
    job: Claim | None = None  # the job this printer is still bound to (after an agent restart)


class HeartbeatAnswer(Wire):
    job: int | None  # the job this printer holds (None: none); another id or None: stop printing it
    fence: int | None
    snapshot: bool = False  # sent only when true: an operator wants a still from the camera


# On a claim's answer, with or without a job: an operator wants a still from this printer's camera
# (`"snapshot": true` says the same on a heartbeat's answer). A header, so that the 204 of
# "nothing to print" stays empty for agents that do not know it.
SNAPSHOT_WANTED = "X-Farm-Snapshot"


class NextGcode(Wire):
    """GET /api/agents/next: the G-code this printer would print next (204: none)."""

    gcode: str


# The workers', the CLI's and the admins' models (farm/core/wire_workers_cli.py, wire_admin.py),
# loaded when first asked for.
if TYPE_CHECKING:  # `X as X`: named here for type checkers, as if defined here
    from farm.core.wire_admin import (
        BuildDiff as BuildDiff,
        Change as Change,
        Changed as Changed,
        CodeBody as CodeBody,
        Copies as Copies,
        DriverName as DriverName,
        Enrolled as Enrolled,
        Enrolment as Enrolment,
        EnrolmentCode as EnrolmentCode,
        Estimate as Estimate,
        EstimateDiff as EstimateDiff,
        HookDeliveryView as HookDeliveryView,
        JobChange as JobChange,
        MadeProject as MadeProject,
        MadeTarget as MadeTarget,
        MadeToken as MadeToken,
        NewEnrolment as NewEnrolment,
        NewProject as NewProject,
        NewTarget as NewTarget,
        NewToken as NewToken,
        NotifyLogEntry as NotifyLogEntry,
        Number as Number,
        ParamChange as ParamChange,
        ParamsDiff as ParamsDiff,
        PrinterSettings as PrinterSettings,
        PrinterSnapshots as PrinterSnapshots,
        ProjectShown as ProjectShown,
        ProjectView as ProjectView,
        QueuedTest as QueuedTest,
        Removed as Removed,
        RemovedTarget as RemovedTarget,
        Revision as Revision,
        RevisionGit as RevisionGit,
        RevokedTokens as RevokedTokens,
        Role as Role,
        SigninLink as SigninLink,
        SnapshotAsked as SnapshotAsked,
        SnapshotView as SnapshotView,
        TargetView as TargetView,
        TokenView as TokenView,
    )
    from farm.core.wire_workers_cli import (
        BuildView as BuildView,
        CadResult as CadResult,
        CadStart as CadStart,
        Explained as Explained,
        FarmStatus as FarmStatus,
        GitSource as GitSource,
        Held as Held,
        Hello as Hello,
        History as History,
        HistoryJob as HistoryJob,
        HistoryTotals as HistoryTotals,
        Lease as Lease,
        MaterialTotals as MaterialTotals,
        PrinterTotals as PrinterTotals,
        PrinterView as PrinterView,
        SliceMeta as SliceMeta,
        SliceResult as SliceResult,
        SliceStart as SliceStart,
        SliceView as SliceView,
        SliceWork as SliceWork,
        StatusWorker as StatusWorker,
        SubmitOptions as SubmitOptions,
        Totals as Totals,
        Verdict as Verdict,
        WorkerClaim as WorkerClaim,
        WorkerView as WorkerView,
    )


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # `from farm.core.wire import X` asks for __path__: not a model
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from farm.core import wire_workers_cli  # lazy: the agent never needs these models (its RSS)

    if hasattr(wire_workers_cli, name):
        return getattr(wire_workers_cli, name)
    from farm.core import wire_admin  # lazy: nor these, and a worker only those above

    if hasattr(wire_admin, name):
        return getattr(wire_admin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def body(model: BaseModel) -> dict[str, Any]:
    """A request's JSON: the fields the caller set (None included), and no others."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
