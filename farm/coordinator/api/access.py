"""What a token may touch beyond what its role allows: its own builds and jobs, and which artifacts.

Roles (farm/coordinator/api/tokens.py): admin does anything; submitter submits and acts on its own builds and
jobs; viewer reads; worker runs builds; agent acts for its one printer.
"""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import or_
from sqlmodel import Session, col, select

from farm.coordinator import dispatch
from farm.coordinator.models import Build, Job, Printer, Slice, Token
from farm.core.states import LEASED_JOB_STATES

# What a build makes, as opposed to what was submitted (source_sha256, maybe a private project).
_OUTPUTS = (
    Build.stl_sha256,
    Build.threemf_sha256,
    Build.step_sha256,
    Build.preview_sha256,
    Build.preview_small_sha256,
)


def check_owner(token: Token, owner: str | None, what: str) -> None:
    """Submitters act only on what they submitted; admins on anything. 403 otherwise."""
    if token.role == "admin" or (owner is not None and owner == token.name):
        return
    whose = f"belongs to '{owner}'" if owner else "has no owner (submitted before builds had owners)"
    raise HTTPException(
        403, f"{what} {whose}; a {token.role} token acts only on its own builds and jobs (an admin on any)"
    )


def may_read_artifact(session: Session, token: Token, sha256: str, starvation_s: float) -> bool:
    """Whether `token` may download this artifact; the rules are in artifacts.download's docstring."""
    if token.role in ("admin", "worker"):
        return True
    if token.role == "agent":
        return token.printer is not None and _printer_gcode(session, token.printer, sha256, starvation_s)
    if token.role == "submitter":
        return _of_builds(session, sha256, owner=token.name, sources=True)
    if token.role == "viewer":
        return _of_builds(session, sha256, owner=None, sources=False)
    return False


def _printer_gcode(session: Session, printer: str, sha256: str, starvation_s: float) -> bool:
    """The G-code of a job this printer holds, or of the one it would take next (the agent fetches
    that while the bed waits: dispatch.next_gcode; a hint that went stale meanwhile is a 403)."""
    held = (
        select(Job.id)
        .join(Slice, col(Slice.id) == col(Job.slice_id))
        .where(
            Job.printer == printer,
            col(Job.state).in_(list(LEASED_JOB_STATES)),
            Slice.gcode_sha256 == sha256,
        )
        .limit(1)
    )
    if session.exec(held).first() is not None:
        return True
    found = session.get(Printer, printer)
    return found is not None and dispatch.next_gcode(session, found, starvation_s) == sha256


def _of_builds(session: Session, sha256: str, *, owner: str | None, sources: bool) -> bool:
    """Made by (or, with `sources`, submitted as) a build of `owner`'s; None: anyone's."""
    columns = (*_OUTPUTS, Build.source_sha256) if sources else _OUTPUTS
    builds = select(Build.id).where(or_(*(col(c) == sha256 for c in columns))).limit(1)
    gcode = (
        select(Slice.id)
        .join(Build, col(Build.id) == col(Slice.build_id))
        .where(Slice.gcode_sha256 == sha256)
        .limit(1)
    )
    if owner is not None:
        builds, gcode = builds.where(Build.owner == owner), gcode.where(Build.owner == owner)
    return session.exec(builds).first() is not None or session.exec(gcode).first() is not None
