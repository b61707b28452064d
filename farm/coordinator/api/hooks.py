"""`POST /api/hooks/{github,gitea,gitlab}/NAME`: a service's push hook. No farm token: the
signature is the proof (farm/coordinator/hooks.py checks it as each service documents it).

Order of the checks: a request with no signature is refused (401) before the project is looked up,
so an unsigned caller learns nothing of which projects exist; an unknown project is a 404 (a
mistyped hook URL must be told apart from a wrong secret); a signature that does not match, 401.
A replayed delivery (the same delivery id, or the same body) answers 200 "already seen". A push is
stored before the answer (202) and built off the request path (farm/coordinator/hook_runner.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, or_, select

from farm.coordinator import hook_runner, hooks
from farm.coordinator.api.deps import Farm, FarmDep
from farm.coordinator.api.errors import errors
from farm.coordinator.models import HookDelivery, Project, stored_id

router = APIRouter(prefix="/api/hooks", tags=["hooks"])
ProjectName = Annotated[str, Path(min_length=1, max_length=64)]
_DUMMY_KEY = b"no such project"  # an unknown project costs the same HMAC as a known one


def _answer(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status)


def _receive(farm: Farm, service: str, name: str, headers: Mapping[str, str], body: bytes) -> JSONResponse:
    proof = hooks.signature_header(service, headers)
    if not proof:
        return _answer(401, {"detail": hooks.missing_proof(service)})
    with Session(farm.engine) as session:
        project = session.exec(select(Project).where(Project.name == name)).first()
        if project is None:
            hmac.new(_DUMMY_KEY, body, hashlib.sha256).hexdigest()
            return _answer(404, {"detail": f"no project '{name}' on this farm: check the hook's URL"})
        if not hooks.verify(service, project.hook_secret, body, proof):
            return _answer(
                401,
                {
                    "detail": "the signature does not match: "
                    "the hook's secret must be the one `farm projects add` set"
                },
            )
        push = _push(service, project, headers, body)
        if isinstance(push, JSONResponse):
            return push
        return _store(session, project, service, headers, body, push)


def _push(
    service: str, project: Project, headers: Mapping[str, str], body: bytes
) -> hooks.Push | JSONResponse:
    """The push to build, or the answer to an event that builds nothing (a ping, a deletion, ...)."""
    kind = hooks.event(service, headers)
    if kind == "ping":
        return _answer(200, {"status": "pong", "project": project.name})
    if kind != "push":
        return _answer(
            200, {"status": "ignored", "reason": f"only push and tag events build; this was '{kind}'"}
        )
    try:
        push = hooks.parse_push(service, body, headers.get("content-type", ""))
    except hooks.Refused as exc:
        return _answer(exc.status, {"detail": str(exc)})
    if push is None:
        return _answer(200, {"status": "ignored", "reason": "a deletion builds nothing"})
    if push.branch is not None and not fnmatchcase(push.branch, project.branch):
        reason = f"pushes to '{push.branch}' are not built: the project follows '{project.branch}'"
        return _answer(200, {"status": "ignored", "reason": reason})
    return push


def _store(
    session: Session,
    project: Project,
    service: str,
    headers: Mapping[str, str],
    body: bytes,
    push: hooks.Push,
) -> JSONResponse:
    """Keep the delivery (before answering: a restart must not lose it), unless it was seen."""
    key = hooks.delivery_key(service, headers, body)
    body_sha = hashlib.sha256(body).hexdigest()
    seen = session.exec(
        select(HookDelivery.id).where(
            HookDelivery.project_id == project.id,
            or_(
                HookDelivery.body_sha256 == body_sha,
                (HookDelivery.service == service) & (HookDelivery.delivery_key == key),
            ),
        )
    ).first()
    if seen is not None:
        return _answer(200, {"status": "already seen", "delivery": seen})
    delivery = HookDelivery(
        project_id=stored_id(project),
        service=service,
        delivery_key=key,
        body_sha256=body_sha,
        ref=push.ref,
        commit=push.commit,
    )
    session.add(delivery)
    try:
        session.commit()
    except IntegrityError:  # the same delivery, at the same moment, in another request
        session.rollback()
        return _answer(200, {"status": "already seen"})
    return _answer(
        202, {"status": "accepted", "delivery": delivery.id, "ref": push.ref, "commit": push.commit}
    )


async def _hook(
    service: str, name: str, request: Request, farm: Farm, background: BackgroundTasks
) -> JSONResponse:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > hooks.MAX_BODY:
        return _answer(413, {"detail": f"a hook's payload is at most {hooks.MAX_BODY >> 20} MB"})
    body = await request.body()
    if len(body) > hooks.MAX_BODY:
        return _answer(413, {"detail": f"a hook's payload is at most {hooks.MAX_BODY >> 20} MB"})
    answer = await run_in_threadpool(_receive, farm, service, name, request.headers, body)
    if answer.status_code == 202:  # build it now, after the answer; the housekeeper if this dies
        background.add_task(asyncio.to_thread, hook_runner.run_due, farm)
    return answer


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a ping, an event that builds nothing, or a delivery already seen"},
    202: {"description": "the push is stored; its builds are being made"},
    **errors(401, 404, 413, 422),
}


@router.post("/github/{name}", status_code=202, responses=RESPONSES)
async def github(
    name: ProjectName, request: Request, farm: FarmDep, background: BackgroundTasks
) -> JSONResponse:
    """GitHub: a `push` event (branches and tags) or a `ping`, signed with X-Hub-Signature-256."""
    return await _hook("github", name, request, farm, background)


@router.post("/gitea/{name}", status_code=202, responses=RESPONSES)
async def gitea(
    name: ProjectName, request: Request, farm: FarmDep, background: BackgroundTasks
) -> JSONResponse:
    """Gitea or Forgejo: a `push` event (branches and tags), signed with X-Gitea-Signature."""
    return await _hook("gitea", name, request, farm, background)


@router.post("/gitlab/{name}", status_code=202, responses=RESPONSES)
async def gitlab(
    name: ProjectName, request: Request, farm: FarmDep, background: BackgroundTasks
) -> JSONResponse:
    """GitLab: `Push Hook` and `Tag Push Hook` events, with the secret in X-Gitlab-Token."""
    return await _hook("gitlab", name, request, farm, background)
