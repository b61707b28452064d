"""The admins' and operators' wire models: tokens, notifications, projects, the operators' changes,
revisions and diffs, camera stills, enrolment and sign-in (farm/core/wire.py tells the whole
protocol). Loaded, like farm/core/wire_workers_cli.py, only when first asked for through
`farm.core.wire`: neither the agent nor the workers need them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue, NaiveDatetime, PlainSerializer

from farm.core.printer_models import MATERIALS
from farm.core.states import BuildStage
from farm.core.wire import MAX_NAME, NAME_PATTERN, Wire

# -- admins: tokens (/api/tokens) -----------------------------------------------------------------

Role = Literal["admin", "submitter", "viewer", "worker", "agent"]


class NewToken(Wire):
    """POST /api/tokens: `farm tokens create`."""

    # No '/': `DELETE /api/tokens/{name}` must be able to name it.
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^/]+$")
    role: Role
    printer: str | None = Field(
        None,
        max_length=MAX_NAME,
        pattern=NAME_PATTERN,
        description="an agent token acts only for this printer",
    )
    # Sent as the CLI wrote it before the model (isoformat: "+00:00").
    expires_at: (
        Annotated[
            AwareDatetime | NaiveDatetime,
            PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json"),
        ]
        | None
    ) = Field(None, description="refused from then on (no zone: UTC); none: it lasts until revoked")


class TokenView(Wire):
    """A token as the API shows it (never its secret but once, when made: MadeToken)."""

    name: str
    role: str
    printer: str | None = None
    created_at: str | None = None  # ISO 8601
    expires_at: str | None = None
    revoked_at: str | None = None


class MadeToken(TokenView):
    token: str  # the secret: the only time it is shown


class RevokedTokens(Wire):
    revoked: str
    tokens: list[TokenView]


# -- admins: notifications (/api/notify) ----------------------------------------------------------


class NewTarget(Wire):
    """POST /api/notify/targets: `farm notify add`."""

    url: str = Field(min_length=1, max_length=2000)
    format: str | None = None  # default: email for mailto:, else json
    events: list[str] = Field(default_factory=list)  # none: every event
    secret: str | None = Field(default=None, max_length=500)


class TargetView(Wire):
    """A notification target. Its times, as every /api/notify and /api/projects answer writes them,
    are pydantic's ISO 8601 ("Z" for UTC), not isoformat's."""

    id: int
    url: str
    format: str
    events: list[str]  # ["*"]: every event
    signed: bool
    created_at: datetime


class MadeTarget(TargetView):
    secret: str | None  # a JSON target's signing secret, shown only now


class QueuedTest(Wire):
    delivery: int
    target: int


class RemovedTarget(Wire):
    removed: int


class NotifyLogEntry(Wire):
    """A delivery of an event to a target, and how it went: GET /api/notify/log."""

    id: int
    event: str
    summary: str
    target: int
    url: str
    state: str  # pending | sent | failed
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    next_at: datetime | None = None  # while pending
    sent_at: datetime | None = None
    created_at: datetime


# -- admins: projects (/api/projects); times as for notifications ---------------------------------


class NewProject(Wire):
    """POST /api/projects: `farm projects add`."""

    name: str = Field(min_length=1, max_length=64)
    git_url: str = Field(min_length=1, max_length=2000)
    branch: str = Field("main", min_length=1, max_length=200, pattern=r"^[^\x00-\x20\x7f]+$")
    secret: str | None = Field(
        None, min_length=16, max_length=500, description="default: a new one, shown once"
    )
    git_username: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f\x7f:]+$")
    git_token: str | None = Field(
        None, min_length=1, max_length=2000, description="HTTPS password or access token"
    )


class ProjectView(Wire):
    name: str
    git_url: str
    branch: str
    credentials: str | None = None  # whether it has some ("user 'git' and a token"), never the token
    hooks: dict[str, str]  # service -> the URL its hooks post to
    created_at: datetime


class MadeProject(ProjectView):
    secret: str | None = None  # the hooks' secret, sent only when the farm made it: shown only now


class HookDeliveryView(Wire):
    """A push or tag hook the farm received, and what it built (or why not)."""

    id: int
    service: str
    ref: str
    commit: str
    state: str  # pending | done | failed
    attempts: int
    message: str | None = None
    error: str | None = None
    builds: list[int]
    received_at: datetime
    finished_at: datetime | None = None
    next_try_at: datetime | None = None  # while pending


class ProjectShown(ProjectView):
    deliveries: list[HookDeliveryView]  # the latest, newest first


class Removed(Wire):
    """What a DELETE by name took away: a project, a printer."""

    removed: str


# -- operators: what they change (/api/jobs/{id}, /api/printers/{name}) ---------------------------


class JobChange(Wire):
    """PATCH /api/jobs/{id}: a waiting job's priority."""

    priority: int = Field(ge=-100, le=100, description="higher prints first (as `farm submit --priority`)")


class PrinterSettings(Wire):
    """PATCH /api/printers/{name}: `farm printers set`; only the fields sent change."""

    material: str | None = Field(None, description=f"one of {', '.join(MATERIALS)}")
    color: str | None = None
    nozzle: float | None = Field(None, gt=0.1, lt=2.0, description="the fitted nozzle's diameter, mm")
    tags: list[str] | None = Field(None, description="replaces its tags; [] removes them")
    location: str | None = None
    power_group: str | None = Field(None, description="'' for none")
    auto_eject: bool | None = None


# -- revisions: a part's builds over time, and what changed between two (farm/coordinator/revisions.py)

Number = int | float  # kept as it came: a print time in whole seconds stays whole


class RevisionGit(Wire):
    url: str | None = None
    ref: str | None = None
    commit: str | None = None
    tag: str | None = None


class Estimate(Wire):
    """The slicer's figures for one printer model (from its fewest copies per plate)."""

    print_time_s: int | None = None
    filament_g: float | None = None
    filament_mm: float | None = None
    copies: int


class Revision(Wire):
    """A build as a revision of its part: GET /api/projects/{name}/parts/{part}/revisions."""

    id: int
    created_at: str | None = None  # ISO 8601
    project: str | None = None
    part: str | None = None
    source: str
    entry: str | None = None
    owner: str | None = None
    git: RevisionGit
    params: dict[str, JsonValue]
    stage: BuildStage
    error: str | None = None
    volume_mm3: float | None = None
    size_mm: list[float] | None = None  # x, y, z
    bbox: list[list[Number]] | None = None  # as the build stored it
    stl: str | None = None
    preview: str | None = None
    estimates: dict[str, Estimate]  # by printer model


class Change(Wire):
    """A figure in build a and in build b, b - a, and that as a % of a (None: cannot be told)."""

    a: Number | None
    b: Number | None
    change: Number | None
    percent: float | None


class ParamChange(Wire):
    a: JsonValue
    b: JsonValue


class ParamsDiff(Wire):
    added: dict[str, JsonValue]
    removed: dict[str, JsonValue]
    changed: dict[str, ParamChange]


class Copies(Wire):
    a: int
    b: int


class EstimateDiff(Wire):
    print_time_s: Change
    filament_g: Change
    filament_mm: Change
    copies: Copies


class Changed(Wire):
    a: str | None
    b: str | None
    changed: bool


class BuildDiff(Wire):
    """GET /api/builds/{a}/diff/{b}: what changed from build a to build b."""

    a: Revision
    b: Revision
    same_part: bool
    same_mesh: bool
    params: ParamsDiff
    volume_mm3: Change
    size_mm: dict[str, Change]  # by axis: x, y, z
    estimates: dict[str, EstimateDiff]  # the printer models both were sliced for
    models_only_in_a: list[str]
    models_only_in_b: list[str]
    commit: Changed
    tag: Changed


# -- camera stills (/api/printers/{name}/snapshot*, /api/jobs/{id}/snapshots) ---------------------


class SnapshotView(Wire):
    """A still from a printer's camera; the image: GET /api/printers/NAME/snapshot?id=ID."""

    id: int
    job: int | None = None  # the job it shows (None: asked for while the printer held none)
    printer: str | None = None
    moment: str  # start | end | failure | request
    sha256: str
    media_type: str  # image/png or image/jpeg
    taken_at: str  # ISO 8601


class SnapshotAsked(Wire):
    """POST /api/printers/{name}/snapshot: the agent answers on its next call."""

    printer: str
    requested_at: str  # ISO 8601
    after: int  # the answer is the printer's first still with a larger id


class PrinterSnapshots(Wire):
    """GET /api/printers/{name}/snapshots: the latest stills, newest first, and where a request
    for one stands."""

    printer: str
    wanted_since: str | None = None  # ISO 8601
    error: str | None = None  # the agent's answer: why it has no still
    agent_last_seen: str | None = None
    snapshots: list[SnapshotView]


# -- enrolment: `farm printers add` makes a code, `farm agent enroll` spends it (api/enrol.py) -----

DriverName = Literal["prusalink", "octoprint", "moonraker", "bambu"]
ENROL_TTL_S = 30 * 60  # how long a code stays valid unless told otherwise


class NewEnrolment(Wire):
    """POST /api/printers/enrol: `farm printers add`."""

    printer: str = Field(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=100)
    driver: DriverName = "prusalink"
    ttl_s: int = Field(ENROL_TTL_S, ge=60, le=7 * 86400, description="how long the code stays valid")


class EnrolmentCode(Wire):
    printer: str
    model: str
    driver: str
    code: str  # the only time it is shown
    expires_at: str  # ISO 8601


class CodeBody(Wire):
    """POST /api/enroll/info and /api/enroll: the code, as the admin passed it on."""

    code: str = Field(min_length=1, max_length=200)


class Enrolment(Wire):
    """What a code enrols (POST /api/enroll/info), without spending it."""

    printer: str
    model: str
    driver: str  # the driver the admin suggested
    expires_at: str  # ISO 8601


class Enrolled(Enrolment):
    """POST /api/enroll: the code spent, the printer's agent token (shown only now)."""

    token_name: str
    token: str


class SigninLink(Wire):
    """POST /api/signin-links: a one-time link that signs a browser in as the caller's token."""

    path: str  # on the coordinator
    expires_in_s: int
    expires_at: float  # epoch seconds
