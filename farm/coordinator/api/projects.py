"""Registered projects (admin only): a git repository whose push hooks build its parts.

The hook secret is shown once, when the farm makes it; the fetch credentials never: every answer
says only whether there are some (`credentials`).
"""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from farm.coordinator import mirror
from farm.coordinator.api.deps import FarmDep, SessionDep, new_secret, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.hooks import SERVICES
from farm.coordinator.models import HookDelivery, Project
from farm.core.gitsource import BadGitSource, check_url
from farm.core.manifest import NAME_RE
from farm.core.wire import MadeProject, NewProject, ProjectShown, ProjectView, Removed

router = APIRouter(
    prefix="/api/projects", tags=["projects"], dependencies=[Depends(require())], responses=AUTH
)
ProjectName = Annotated[str, Path(min_length=1, max_length=64)]
SHOWN_DELIVERIES = 20


def hook_urls(request: Request, name: str) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    return {service: f"{base}/api/hooks/{service}/{name}" for service in SERVICES}


def delivery_view(d: HookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "service": d.service,
        "ref": d.ref,
        "commit": d.commit,
        "state": d.state,
        "attempts": d.attempts,
        "message": d.message,
        "error": d.error,
        "builds": json.loads(d.builds_json or "[]"),
        "received_at": d.received_at,
        "finished_at": d.finished_at,
        "next_try_at": d.next_at if d.state == "pending" else None,
    }


def project_view(p: Project, request: Request) -> dict[str, Any]:
    return {
        "name": p.name,
        "git_url": p.git_url,
        "branch": p.branch,
        # Never the token itself, nor its length or any part of it.
        "credentials": f"user '{p.git_username or 'git'}' and a token" if p.git_token else None,
        "hooks": hook_urls(request, p.name),
        "created_at": p.created_at,
    }


def _find(session: SessionDep, name: str) -> Project:
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        raise HTTPException(404, f"no project '{name}': `farm projects list` shows them")
    return project


@router.post(
    "",
    status_code=201,
    response_model=MadeProject,
    response_model_exclude_unset=True,
    responses=errors(409, 422),
)
def add_project(body: NewProject, farm: FarmDep, session: SessionDep, request: Request) -> dict:
    """Register a repository. The answer holds the hook URLs, and the secret if the farm made it."""
    if not NAME_RE.match(body.name):
        raise HTTPException(
            422, "a project's name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    try:
        check_url(body.git_url, farm.settings.git_schemes)
    except BadGitSource as exc:
        raise HTTPException(422, str(exc)) from None
    if "://" in body.git_url and urlsplit(body.git_url).password is not None:
        raise HTTPException(
            422,
            "the git URL holds a password, and URLs are shown: give it as the token "
            "(`farm projects add --git-token-file`), the URL without it",
        )
    if body.git_username and not body.git_token:
        raise HTTPException(422, "a git user name without a token: give the token too")
    generated = body.secret is None
    project = Project(
        name=body.name,
        git_url=body.git_url,
        branch=body.branch,
        hook_secret=body.secret or new_secret(),
        git_username=body.git_username,
        git_token=body.git_token,
    )
    session.add(project)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(
            409, f"a project '{body.name}' exists: `farm projects remove {body.name}` first"
        ) from None
    view = project_view(project, request)
    return {**view, "secret": project.hook_secret} if generated else view


@router.get("", response_model=list[ProjectView], response_model_exclude_unset=True)
def list_projects(session: SessionDep, request: Request) -> list[dict]:
    return [project_view(p, request) for p in session.exec(select(Project).order_by(col(Project.name)))]


@router.get("/{name}", response_model=ProjectShown, response_model_exclude_unset=True, responses=errors(404))
def show_project(name: ProjectName, session: SessionDep, request: Request) -> dict:
    """The project and its latest deliveries: what each push built, or why it did not."""
    project = _find(session, name)
    deliveries = session.exec(
        select(HookDelivery)
        .where(HookDelivery.project_id == project.id)
        .order_by(col(HookDelivery.id).desc())
        .limit(SHOWN_DELIVERIES)
    ).all()
    return {**project_view(project, request), "deliveries": [delivery_view(d) for d in deliveries]}


@router.delete("/{name}", response_model=Removed, response_model_exclude_unset=True, responses=errors(404))
def remove_project(name: ProjectName, farm: FarmDep, session: SessionDep) -> dict:
    """Forget the project, its deliveries and its mirror; its builds stay (they name it)."""
    project = _find(session, name)
    session.exec(delete(HookDelivery).where(col(HookDelivery.project_id) == project.id))
    session.delete(project)
    session.commit()
    where = mirror.mirror_path(farm.settings.data_dir, name)
    with mirror.locked(where):
        shutil.rmtree(where, ignore_errors=True)
    return {"removed": name}
