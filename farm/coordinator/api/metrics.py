"""GET /metrics for Prometheus, and the middleware that times every API request by route."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from farm.coordinator import metrics
from farm.coordinator.api.deps import FarmDep, find_token, token_problem
from farm.coordinator.api.fastlane import _route as fastlane_route

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={401: {"description": "no valid token"}})
async def scrape(farm: FarmDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text format. Any valid token may scrape, or FARM_METRICS_TOKEN (good for nothing else)."""
    secret = (authorization or "").removeprefix("Bearer ").strip()
    if not secret:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>'")
    scrape_token = farm.settings.metrics_token
    if not (scrape_token and hmac.compare_digest(secret, scrape_token)):
        token = await find_token(farm, secret)
        if token is None or token_problem(token) is not None:
            raise HTTPException(401, "unknown, revoked or expired token")
    body = await asyncio.to_thread(metrics.scrape, farm.engine)  # database reads: off the event loop
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _fastlane_template(path: str) -> str | None:
    """The routes the agents' fast lane answers before routing: their templates by hand."""
    if (served := fastlane_route(path)) is None:
        return None
    return "/api/agents/jobs/{job_id}/report" if served[2] else path


class RequestTimer:
    """Outermost ASGI wrapper: each request's latency, labelled by its route template (never the
    raw path: ids would make a series per job)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or _fastlane_template(scope["path"]) or "unmatched"
            metrics.time_request(template, scope["method"], started)
