"""Building what a hook accepted: fetch the pushed commit, read its manifest, make its builds.

A delivery is stored before the hook answers (farm/coordinator/api/hooks.py); this runs off the request path:
right after the answer in the process that took it, and in the housekeeper's rounds, which pick up
whatever a restart or a failed fetch left pending. A delivery is claimed for CLAIM_S by a
conditional update (one worker, whichever process), and its builds are made in the same
transaction that marks it done: a crash between the two leaves it pending, never half built.

What a push makes, per part of the manifest and per parameter set: a preview build (CAD only), or,
when the part prints on this push (`on-push` to its branch, `on-tag` matching the tag), one build
per target with its jobs. What the project already has for that commit is not built again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from sqlalchemy import update
from sqlmodel import Session, col, select

from farm.coordinator import mirror, pipeline
from farm.coordinator.db import write_session
from farm.coordinator.models import Artifact, Build, HookDelivery, Job, Project, stored_id, utcnow
from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.core import tags
from farm.core.manifest import ManifestError, Part, Target, load_manifest
from farm.core.print_options import check_overrides, print_options
from farm.core.printer_models import UnknownChoice, check_color, check_material, check_model, check_quality
from farm.core.project import ProjectError, pack
from farm.core.queue import send
from farm.core.slice_error import SliceError
from farm.core.states import BuildStage

if TYPE_CHECKING:  # farm.coordinator.api imports this module
    from farm.coordinator.api.deps import Farm

log = logging.getLogger("farm.coordinator.hooks")

CLAIM_S = 2 * mirror.GIT_TIMEOUT_S + 60  # two fetches and the packing
MAX_ATTEMPTS = 10  # 2 s doubling up to 10 min: about 40 minutes of trying
MAX_BUILDS_PER_PUSH = 500  # a manifest may list 200 parts of 200 builds each: not all at once
_running = threading.Lock()


def backoff_s(attempts: int) -> float:
    return min(600.0, 2.0 * 2 ** max(attempts - 1, 0))


@dataclass
class Planned:
    part: str
    file: str
    artifact: str | None
    params: dict[str, Any]
    target: Target | None  # None: a preview
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def run_due(farm: Farm) -> int:
    """Work through the deliveries that are due; how many were handled. One loop per process at a
    time (the others return at once: the running one picks up what they were asked for)."""
    if not _running.acquire(blocking=False):
        return 0
    try:
        handled = 0
        while (claimed := _claim(farm.engine)) is not None:
            _handle(farm, *claimed)
            handled += 1
        return handled
    finally:
        _running.release()


def _claim(engine: Any) -> tuple[int, str] | None:
    now = utcnow()
    with write_session(engine) as session:
        due = session.exec(
            select(HookDelivery.id, HookDelivery.next_at)
            .where(HookDelivery.state == "pending", col(HookDelivery.next_at) <= now)
            .order_by(col(HookDelivery.id))
            .limit(5)
        ).all()
        for delivery_id, next_at in due:
            claim = uuid.uuid4().hex
            taken = session.exec(
                update(HookDelivery)
                .where(
                    col(HookDelivery.id) == delivery_id,
                    col(HookDelivery.state) == "pending",
                    col(HookDelivery.next_at) == next_at,
                )
                .values(next_at=now + timedelta(seconds=CLAIM_S), claim=claim)
            )
            session.commit()
            if taken.rowcount == 1:
                assert delivery_id is not None  # a primary key: SQLModel types it Optional for new rows
                return delivery_id, claim
    return None


def _handle(farm: Farm, delivery_id: int, claim: str) -> None:
    with Session(farm.engine) as session:
        delivery = session.get(HookDelivery, delivery_id)
        project = session.get(Project, delivery.project_id) if delivery else None
    if delivery is None:
        return
    if project is None:
        _finish(farm, delivery_id, claim, error="the project was removed")
        return
    remote = mirror.Remote(project.git_url, project.git_username, project.git_token)
    work = Path(tempfile.mkdtemp(prefix="hook-", dir=farm.store.root / "tmp"))
    try:
        planned, sha, size, commit = _prepare(farm, project, delivery, remote, work)
    except mirror.FetchFailed as exc:
        _retry(farm, delivery_id, claim, remote.scrub(str(exc)))
        return
    except (mirror.BadCommit, ManifestError, ProjectError) as exc:
        _finish(farm, delivery_id, claim, error=remote.scrub(str(exc)))
        return
    except Exception as exc:  # a bug or the disk: keep the delivery, try again later
        log.exception("hook delivery %d of project %s failed", delivery_id, project.name)
        _retry(farm, delivery_id, claim, remote.scrub(f"{type(exc).__name__}: {exc}"))
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        _make_builds(farm, project, delivery, claim, planned, sha, size, commit)
    except Exception as exc:  # the database: the delivery stays, for the next round
        log.exception("hook delivery %d of project %s: its builds were not made", delivery_id, project.name)
        _retry(farm, delivery_id, claim, f"{type(exc).__name__}: {exc}")


def _prepare(
    farm: Farm, project: Project, delivery: HookDelivery, remote: mirror.Remote, work: Path
) -> tuple[list[Planned], str, int, str]:
    """Fetch, export, pack and plan: everything slow, outside any transaction."""
    schemes = farm.settings.git_schemes
    where = mirror.mirror_path(farm.settings.data_dir, project.name)
    with mirror.locked(where):
        commit = mirror.fetch(where, remote, delivery.ref, delivery.commit, schemes)
        files = mirror.export(where, commit, work / "tree", remote, schemes)
    tree = work / "tree"
    manifest = load_manifest(tree)
    if not files:
        raise ProjectError(f"commit {commit[:12]} has no files")
    packed = pack(tree, files[0], work, files=files)
    data = packed.archive.read_bytes()
    sha = farm.store.put_bytes(data)
    push_tag = delivery.ref.removeprefix("refs/tags/") if delivery.ref.startswith("refs/tags/") else None
    branch = delivery.ref.removeprefix("refs/heads/") if push_tag is None else None
    wanted = sum(part.builds_count() * max(1, len(part.targets)) for part in manifest.parts)
    if wanted > MAX_BUILDS_PER_PUSH:
        raise ManifestError(
            f"printfarm.toml at {commit[:12]} makes up to {wanted} builds; a push makes at most "
            f"{MAX_BUILDS_PER_PUSH}: split the matrix, or build some parts by hand (farm submit)"
        )
    planned: list[Planned] = []
    for part in manifest.parts:
        prints = (push_tag is not None and part.prints_on_tag(push_tag)) or (
            branch is not None and part.prints_on_push(branch)
        )
        for params in part.param_sets():
            error = None
            try:
                params = check_cad_source(
                    farm.store.path(sha), part.file, part.artifact, params, name=part.file
                )
            except SourceProblem as exc:
                error = f"printfarm.toml, part '{part.name}': {exc}"
            for target in part.targets if prints else [None]:
                plan = Planned(part.name, part.file, part.artifact, params, target, error)
                if target is not None and plan.error is None:
                    plan.options, plan.error = _target_options(part, target)
                planned.append(plan)
    return planned, sha, len(data), commit


def _target_options(part: Part, target: Target) -> tuple[dict[str, Any], str | None]:
    """create_build's job and slicing options for a target, checked as `farm submit`'s are."""
    try:
        model = check_model(target.printer_model) if target.printer_model else None
        options = {
            "copies": target.copies,
            "per_plate": target.per_plate,
            "material": check_material(target.material, model),
            "quality": check_quality(target.quality, model),
            "color": check_color(target.color) if target.color is not None else None,
            "printer_model": model.name if model else None,
            "priority": target.priority,
            "nozzle": target.nozzle,
            "tags": tags.canonical(target.tags),
            "overrides": check_overrides(
                print_options(infill=target.infill, supports=target.supports, brim=target.brim)
                | target.settings
            ),
        }
    except (UnknownChoice, SliceError, tags.BadTag) as exc:
        return {}, f"printfarm.toml, part '{part.name}', target {target.printer_model or 'any'}: {exc}"
    return options, None


def _already(session: Session, project: Project, plan: Planned, commit: str, ref: str) -> bool:
    """The project has this part at this commit with these parameters, not failed: a preview needs
    nothing more, and a print was already queued by a push of this ref."""
    query = select(Build.id).where(
        Build.project_name == project.name,
        Build.part_name == plan.part,
        Build.git_commit == commit,
        Build.params_json == json.dumps(plan.params),
        col(Build.stage) != BuildStage.FAILED,
    )
    if plan.target is not None:
        query = query.where(Build.git_ref == _short(ref))
    for build_id in session.exec(query).all():
        has_jobs = session.exec(select(Job.id).where(Job.build_id == build_id).limit(1)).first()
        if plan.target is None or has_jobs is not None:
            return True
    return False


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/").removeprefix("refs/tags/")


def _make_builds(
    farm: Farm,
    project: Project,
    delivery: HookDelivery,
    claim: str,
    planned: list[Planned],
    sha: str,
    size: int,
    commit: str,
) -> None:
    """Every planned build, and the delivery marked done, in one transaction."""
    out: list[pipeline.Outgoing] = []
    made: list[int] = []
    skipped = 0
    with write_session(farm.engine) as session:
        if session.get(Artifact, sha) is None:
            session.add(Artifact(sha256=sha, size=size, name=f"{project.name}-{commit[:12]}.tar.gz"))
        for plan in planned:
            if plan.error is None and _already(session, project, plan, commit, delivery.ref):
                skipped += 1
                continue
            build_id, sent = _create(farm, session, project, delivery.ref, plan, sha, commit)
            made.append(build_id)
            out += sent
        message = f"{len(made)} builds of {commit[:12]}" + (
            f"; {skipped} already built at this commit" if skipped else ""
        )
        if not _done(session, stored_id(delivery), claim, builds=made, message=message):
            session.rollback()  # the claim ran out and another took it: theirs stands
            return
        session.commit()
    log.info("project %s: %s (%s)", project.name, message, delivery.ref)
    _dispatch(farm, out)


def _create(
    farm: Farm, session: Session, project: Project, ref: str, plan: Planned, sha: str, commit: str
) -> tuple[int, list[pipeline.Outgoing]]:
    """One build of a part at a commit (failed at once when the farm refuses what it asks for)."""
    options = plan.options or {}
    build, _jobs, sent = pipeline.create_build(
        session,
        source_name=plan.file,
        source_sha256=sha,
        entry=plan.artifact,
        params=plan.params,
        copies=options.get("copies", 1),
        material=options.get("material", "PLA"),
        quality=options.get("quality", "standard"),
        color=options.get("color"),
        printer_model=options.get("printer_model"),
        priority=options.get("priority", 0),
        nozzle=options.get("nozzle"),
        tags=options.get("tags", ""),
        per_plate=options.get("per_plate", 1),
        overrides=options.get("overrides"),
        attempts=farm.settings.job_attempts,
        project=True,
        git={"url": project.git_url, "ref": _short(ref), "commit": commit},
        owner=f"hook/{project.name}",  # no token's name has a '/': no submitter owns it
        preview=plan.target is None,
    )
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
    build.project_name, build.part_name, build.git_tag = project.name, plan.part, tag
    if plan.error is not None:
        pipeline.fail_build(session, build, plan.error)
        sent = []
    return stored_id(build), sent


def _done(
    session: Session,
    delivery_id: int,
    claim: str,
    *,
    builds: list[int] | None = None,
    message: str | None = None,
    error: str | None = None,
) -> bool:
    changed = session.exec(
        update(HookDelivery)
        .where(col(HookDelivery.id) == delivery_id, col(HookDelivery.claim) == claim)
        .where(col(HookDelivery.state) == "pending")
        .values(
            state="failed" if error else "done",
            error=error,
            message=message,
            builds_json=json.dumps(builds or []),
            finished_at=utcnow(),
            attempts=HookDelivery.attempts + 1,
            claim=None,
        )
    )
    return changed.rowcount == 1


def _finish(farm: Farm, delivery_id: int, claim: str, *, error: str) -> None:
    with write_session(farm.engine) as session:
        _done(session, delivery_id, claim, error=error)
        session.commit()
    log.warning("hook delivery %d failed: %s", delivery_id, error)


def _retry(farm: Farm, delivery_id: int, claim: str, error: str) -> None:
    """A fetch that failed: try again after a back-off, up to MAX_ATTEMPTS."""
    with write_session(farm.engine) as session:
        row = session.get(HookDelivery, delivery_id)
        if row is None or row.claim != claim or row.state != "pending":
            return
        row.attempts += 1
        row.error, row.claim = error, None
        if row.attempts >= MAX_ATTEMPTS:
            row.state, row.finished_at = "failed", utcnow()
        else:
            row.next_at = utcnow() + timedelta(seconds=backoff_s(row.attempts))
        session.add(row)
        session.commit()
    log.warning("hook delivery %d: %s (attempt %d)", delivery_id, error, row.attempts if row else 0)


def _dispatch(farm: Farm, out: list[pipeline.Outgoing]) -> None:
    """Send the builds' CAD work. The builds are committed: one the queue misses is sent again by
    the resend sweep (or at the next start), as for `farm submit`."""
    if farm.broker is None:
        log.warning("no queue (FARM_REDIS_URL): %d builds wait for a coordinator with one", len(out))
        return
    try:
        for msg in out:
            send(farm.broker, msg.queue, msg.actor, *msg.args)
    except RedisError as exc:
        log.warning(
            "the queue (Redis) did not take %d message(s): %s; they are sent again later", len(out), exc
        )
