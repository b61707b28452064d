"""The one way anything talks to the coordinator: the CLI, the workers and the printer agents.

Depends on httpx and pydantic only, so it installs on a Raspberry Pi beside a printer. The agents',
the workers' and the CLI's calls are typed: their bodies and answers are the models of
farm/core/wire.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from farm.core import wire

CHUNK = 1 << 20
PAGE = 1000  # the most a list endpoint gives per page
NEXT_CURSOR = "X-Next-Cursor"  # where the next page starts (farm/coordinator/api/paging.py)


class FarmError(Exception):
    """The coordinator refused a request or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FileChunks:
    """A re-iterable file body, so a request can be re-sent without holding the file in memory."""

    def __init__(self, path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                if self.progress:
                    self.progress(sent, self.size)
                yield chunk


class Claimed(NamedTuple):
    """A claim's answer: the job to print (None: nothing, within the wait), and whether an operator
    wants a still from the printer's camera (a header, so that "nothing to print" stays a 204)."""

    job: wire.Claim | None
    snapshot_wanted: bool


class FarmClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise FarmError(
                f"cannot reach the coordinator at {self.url} ({exc.__class__.__name__}); "
                "is `farm up` or `farm server` running, and is FARM_URL right?"
            ) from exc
        if resp.status_code >= 400:
            raise FarmError(_detail(resp), resp.status_code)
        return resp

    def get(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params=params)
        return resp.json() if resp.status_code != 204 else None  # /api/agents/next: nothing queued

    def get_all(self, path: str, *, most: int | None = None, **params: Any) -> list[Any]:
        """Every item of a list endpoint (or the first `most`), page after page: each page's
        X-Next-Cursor header says where the next one starts."""
        items: list[Any] = []
        page_size = PAGE if most is None else max(1, min(PAGE, most))
        cursor: str | None = None
        while True:
            at = {"cursor": cursor} if cursor else {}
            resp = self.request("GET", path, params={**params, "limit": page_size, **at})
            items += resp.json()
            cursor = resp.headers.get(NEXT_CURSOR)
            if not cursor or (most is not None and len(items) >= most):
                return items if most is None else items[:most]

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.request("POST", path, json=body or {})
        return resp.json() if resp.status_code != 204 else None

    def _send(self, path: str, body: BaseModel) -> Any:
        return self.post(path, wire.body(body))

    def _delete(self, path: str) -> Any:
        return self.request("DELETE", path, json={}).json()  # the empty body the CLI always sent

    # -- printer agents (farm/core/wire.py: the bodies and answers) -----------------------
    def register(self, body: wire.Register) -> wire.Registered:
        return wire.Registered.model_validate(self._send("/api/agents/register", body))

    def heartbeat(self, body: wire.Heartbeat) -> wire.HeartbeatAnswer:
        return wire.HeartbeatAnswer.model_validate(self._send("/api/agents/heartbeat", body))

    def claim(self, body: wire.Heartbeat, wait_s: float = 0.0) -> Claimed:
        """The next job for this printer; with wait_s > 0 the coordinator holds the call up to
        that long for one (a long poll), so the HTTP timeout is longer by as much."""
        params = {"wait": wait_s} if wait_s > 0 else {}
        resp = self.request(
            "POST", "/api/agents/claim", params=params, json=wire.body(body), timeout=wait_s + 30.0
        )
        job = wire.Claim.model_validate(resp.json()) if resp.status_code != 204 else None
        return Claimed(job, resp.headers.get(wire.SNAPSHOT_WANTED) == "wanted")

    def next_gcode(self, printer: str) -> wire.NextGcode | None:
        """What this printer would print next (None: nothing queued), to fetch while the bed waits."""
        found = self.get("/api/agents/next", printer=printer)
        return wire.NextGcode.model_validate(found) if found is not None else None

    def report(self, job_id: int, body: wire.Report) -> wire.JobView:
        return wire.JobView.model_validate(self._send(f"/api/agents/jobs/{job_id}/report", body))

    # -- workers ----------------------------------------------------------------------------
    def worker_hello(self, body: wire.Hello) -> wire.WorkerView:
        return wire.WorkerView.model_validate(self._send("/api/workers", body))

    def cad_start(self, build_id: int, worker: str) -> wire.CadStart:
        claim = wire.WorkerClaim(worker=worker)
        return wire.CadStart.model_validate(self._send(f"/api/builds/{build_id}/cad/start", claim))

    def cad_heartbeat(self, build_id: int, worker: str) -> wire.Held:
        claim = wire.WorkerClaim(worker=worker)
        return wire.Held.model_validate(self._send(f"/api/builds/{build_id}/cad/heartbeat", claim))

    def cad_result(self, build_id: int, result: wire.CadResult) -> wire.BuildView:
        """The build as GET /api/builds/{id} shows it, after the result."""
        return wire.BuildView.model_validate(self._send(f"/api/builds/{build_id}/cad/result", result))

    def slice_start(self, slice_id: int, worker: str) -> wire.SliceStart:
        claim = wire.WorkerClaim(worker=worker)
        return wire.SliceStart.model_validate(self._send(f"/api/slices/{slice_id}/start", claim))

    def slice_heartbeat(self, slice_id: int, worker: str) -> wire.Held:
        claim = wire.WorkerClaim(worker=worker)
        return wire.Held.model_validate(self._send(f"/api/slices/{slice_id}/heartbeat", claim))

    def slice_result(self, slice_id: int, result: wire.SliceResult) -> wire.SliceView:
        return wire.SliceView.model_validate(self._send(f"/api/slices/{slice_id}/result", result))

    # -- people: the farm, its printers and jobs --------------------------------------------
    def status(self) -> wire.FarmStatus:
        return wire.FarmStatus.model_validate(self.get("/api/status"))

    def printers(self) -> list[wire.PrinterView]:
        return [wire.PrinterView.model_validate(p) for p in self.get_all("/api/printers")]

    def jobs(self, state: str | None = None, *, most: int | None = None) -> list[wire.JobView]:
        """Newest first; every one (or the newest `most`), only those in `state` if given."""
        params = {"state": state} if state else {}
        return [wire.JobView.model_validate(j) for j in self.get_all("/api/jobs", most=most, **params)]

    def job(self, job_id: int) -> wire.JobView:
        return wire.JobView.model_validate(self.get(f"/api/jobs/{job_id}"))

    def explain(self, job_id: int) -> wire.Explained:
        return wire.Explained.model_validate(self.get(f"/api/jobs/{job_id}/explain"))

    def history(
        self,
        *,
        limit: int,
        printer: str | None = None,
        material: str | None = None,
        owner: str | None = None,
        since: str | None = None,  # ISO 8601, UTC unless zoned
        until: str | None = None,
        state: str | None = None,  # done, failed or cancelled; None: all three
    ) -> wire.History:
        """The newest `limit` ended jobs that match, and the totals of all that match."""
        filters = dict(printer=printer, material=material, owner=owner, since=since, until=until, state=state)
        given = {k: v for k, v in filters.items() if v is not None}
        return wire.History.model_validate(self.get("/api/history", limit=limit, **given))

    # -- operators: what they change ----------------------------------------------------------
    def cancel(self, job_id: int) -> wire.JobView:
        return wire.JobView.model_validate(self.post(f"/api/jobs/{job_id}/cancel"))

    def retry(self, job_id: int) -> wire.JobView:
        return wire.JobView.model_validate(self.post(f"/api/jobs/{job_id}/retry"))

    def clear(self, printer: str) -> wire.PrinterView:
        """The printer's bed is empty: it takes the next job."""
        return wire.PrinterView.model_validate(self.post(f"/api/printers/{printer}/clear"))

    def set_printer(self, printer: str, body: wire.PrinterSettings) -> wire.PrinterView:
        resp = self.request("PATCH", f"/api/printers/{printer}", json=wire.body(body))
        return wire.PrinterView.model_validate(resp.json())

    def remove_printer(self, printer: str) -> wire.Removed:
        return wire.Removed.model_validate(self._delete(f"/api/printers/{printer}"))

    # -- revisions --------------------------------------------------------------------------
    def revisions(self, project: str, part: str, *, most: int | None = None) -> list[wire.Revision]:
        """Every build of a project's part (or the newest `most`), newest first."""
        path = f"/api/projects/{quote(project, safe='')}/parts/{quote(part, safe='')}/revisions"
        return [wire.Revision.model_validate(r) for r in self.get_all(path, most=most)]

    def diff(self, a: int, b: int) -> wire.BuildDiff:
        return wire.BuildDiff.model_validate(self.get(f"/api/builds/{a}/diff/{b}"))

    # -- camera stills ----------------------------------------------------------------------
    def request_snapshot(self, printer: str) -> wire.SnapshotAsked:
        """Ask the printer's agent for a still now: it answers on its next call."""
        return wire.SnapshotAsked.model_validate(
            self.post(f"/api/printers/{quote(printer, safe='')}/snapshot")
        )

    def printer_snapshots(self, printer: str, limit: int = 20) -> wire.PrinterSnapshots:
        path = f"/api/printers/{quote(printer, safe='')}/snapshots"
        return wire.PrinterSnapshots.model_validate(self.get(path, limit=limit))

    # -- enrolment and signing in -----------------------------------------------------------
    def enrol(self, body: wire.NewEnrolment) -> wire.EnrolmentCode:
        """Add a printer (if new) and make the one-time code its Pi enrols with (admin)."""
        return wire.EnrolmentCode.model_validate(self._send("/api/printers/enrol", body))

    def enrolment(self, code: str) -> wire.Enrolment:
        """What a code enrols, without spending it (no token needed)."""
        return wire.Enrolment.model_validate(self._send("/api/enroll/info", _code(code)))

    def enroll(self, code: str) -> wire.Enrolled:
        """Spend the code: its printer's agent token."""
        return wire.Enrolled.model_validate(self._send("/api/enroll", _code(code)))

    def signin_link(self) -> wire.SigninLink:
        return wire.SigninLink.model_validate(self.post("/api/signin-links"))

    # -- admins: tokens --------------------------------------------------------------------
    def tokens(self) -> list[wire.TokenView]:
        return [wire.TokenView.model_validate(t) for t in self.get_all("/api/tokens")]

    def create_token(self, body: wire.NewToken) -> wire.MadeToken:
        return wire.MadeToken.model_validate(self._send("/api/tokens", body))

    def revoke_token(self, name: str) -> wire.RevokedTokens:
        return wire.RevokedTokens.model_validate(self._delete(f"/api/tokens/{name}"))

    # -- admins: notifications --------------------------------------------------------------
    def notify_targets(self) -> list[wire.TargetView]:
        return [wire.TargetView.model_validate(t) for t in self.get("/api/notify/targets")]

    def add_notify_target(self, body: wire.NewTarget) -> wire.MadeTarget:
        return wire.MadeTarget.model_validate(self._send("/api/notify/targets", body))

    def test_notify_target(self, target_id: int) -> wire.QueuedTest:
        return wire.QueuedTest.model_validate(self.post(f"/api/notify/targets/{target_id}/test"))

    def remove_notify_target(self, target_id: int) -> wire.RemovedTarget:
        return wire.RemovedTarget.model_validate(self._delete(f"/api/notify/targets/{target_id}"))

    def notify_log(self, limit: int) -> list[wire.NotifyLogEntry]:
        """The latest `limit` deliveries, newest first."""
        return [wire.NotifyLogEntry.model_validate(d) for d in self.get("/api/notify/log", limit=limit)]

    # -- admins: projects -------------------------------------------------------------------
    def projects(self) -> list[wire.ProjectView]:
        return [wire.ProjectView.model_validate(p) for p in self.get("/api/projects")]

    def add_project(self, body: wire.NewProject) -> wire.MadeProject:
        return wire.MadeProject.model_validate(self._send("/api/projects", body))

    def project(self, name: str) -> wire.ProjectShown:
        return wire.ProjectShown.model_validate(self.get(f"/api/projects/{name}"))

    def remove_project(self, name: str) -> wire.Removed:
        return wire.Removed.model_validate(self._delete(f"/api/projects/{name}"))

    # -- artifacts ------------------------------------------------------------------------
    def upload_artifact(self, path: Path, name: str = "") -> str:
        resp = self.request(
            "PUT",
            "/api/artifacts",
            params={"name": name or path.name},
            content=FileChunks(path),
            headers={"Content-Length": str(path.stat().st_size)},
        )
        return str(resp.json()["sha256"])

    def download_artifact(self, sha256: str, dest: Path) -> Path:
        """Stream to a temp file, check the hash, then move into place: a crash leaves no half file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f, self._http.stream("GET", f"/api/artifacts/{sha256}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise FarmError(_detail(resp), resp.status_code)
                for chunk in resp.iter_bytes(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise FarmError(f"artifact {sha256} arrived corrupted; it will be fetched again")
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            raise FarmError(f"download of {sha256} from {self.url} failed: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    # -- builds ---------------------------------------------------------------------------
    def submit(self, path: Path, options: wire.SubmitOptions) -> wire.BuildView:
        """POST /api/builds: the file and the options the caller set (the coordinator checks them)."""
        with path.open("rb") as f:
            form = {"options": json.dumps(wire.body(options))}
            resp = self.request("POST", "/api/builds", files={"file": (path.name, f)}, data=form)
        return wire.BuildView.model_validate(resp.json())

    def build(self, build_id: int) -> wire.BuildView:
        return wire.BuildView.model_validate(self.get(f"/api/builds/{build_id}"))


def _code(code: str) -> wire.CodeBody:
    """Unchecked: the coordinator tells what is wrong with a code (its 403, 410 or 422)."""
    return wire.CodeBody.model_construct(code=code)


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        detail = resp.text
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"{detail} (HTTP {resp.status_code})"
