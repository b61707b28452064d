"""The printer agent: one small process beside each printer that dials out to the coordinator.

It claims a job under a lease, downloads the G-code, uploads it to the printer, starts it and
reports progress until the print ends. On start it first asks the coordinator which job it is
bound to and checks the printer, so a restart never sends the same job to the printer twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from farm.core import wire
from farm.core.client import FarmClient, FarmError
from farm.core.states import PRINT_ENDED, READY_FOR_WORK, JobState, PrinterState
from printers.config import AgentConfig
from printers.drivers.base import Driver, DriverError, PrinterStatus

log = logging.getLogger("farm.agent")
VERSION = "0.2.0"  # 0.2: claims wait at the coordinator for work (wait_s)
IDLE_GRACE_S = 30.0
UPLOAD_FAILURE_REST_S = 30.0  # a printer may report idle for a moment between upload and start
# After a restart, how long a job we held may be refused by the printer (still taking, or already
# printing, the last agent's upload of it) before the refusal counts as a failed attempt.
UPLOAD_SETTLE_S = 30.0
PREFETCH_EVERY_S = 15.0  # while a finished print waits on the bed, ask what comes next this often
PREFETCH_LEFT_S = 120.0  # while printing, fetch the next job's G-code once this little is left
END_CHECK_S = 0.25  # near a print's end, ask the printer this often (at most), not every poll_s
# The print is on the printer and not over (ATTENTION: it waits for a person, mid-print).
UNDER_WAY = frozenset({PrinterState.PRINTING, PrinterState.PAUSED, PrinterState.ATTENTION})


class ConfigMistake(Exception):
    """The coordinator refuses the token, or the printer the credentials: asking again with the
    same configuration cannot help, so the agent stops and says which setting to fix."""


def _not_registered(exc: FarmError) -> bool:
    """The coordinator has no such printer: someone ran `farm printers remove` on it."""
    return exc.status == 404 and "is not registered" in str(exc)


@dataclass
class CurrentJob:
    id: int
    fence: int
    gcode: str
    remote_name: str
    started: float  # monotonic time the print was started (or adopted)


def _same_file(reported: str | None, remote_name: str) -> bool:
    return reported is not None and PurePath(reported).name.lower() == remote_name.lower()


class Agent:
    def __init__(
        self, config: AgentConfig, client: FarmClient, driver: Driver, *, token_source: str = "agent.toml"
    ) -> None:
        self.config = config
        self.client = client
        self.driver = driver
        self.token_source = token_source  # named when the coordinator refuses the token
        self.name = config.printer.name
        self.removed = False  # the printer was taken out of the farm while we ran: wait quietly
        self._bed_unseen = True  # registered before the printer could say whether a part is on the bed
        self.job: CurrentJob | None = None
        self._last_report = 0.0
        self._resting_until = 0.0
        self._unsettled: wire.Claim | None = None  # a held job to ask the printer about again
        self._settle_until = 0.0
        self._next_prefetch = 0.0
        self._snapshot_wanted = False  # an operator asked for a still: the coordinator's last answer said so
        self._prefetched_for: int | None = None  # the printing job during which we fetched the next
        assert config.spool_dir is not None
        self.spool = config.spool_dir
        self.spool.mkdir(parents=True, exist_ok=True)

    # -- life cycle -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Register, then rounds until `stop`: every poll_s, sooner when a print is about to end,
        at once after a claim that waited at the coordinator. ConfigMistake when the coordinator
        does not take the token or the printer the credentials: no point asking again."""
        try:
            while not stop.is_set():
                try:
                    self._register(self._first_status())
                    break
                except FarmError as exc:
                    self._refused(exc)
                    log.warning("%s: cannot register yet: %s", self.name, exc)
                    stop.wait(self.config.poll_s)
            while not stop.is_set():
                pause = self.config.poll_s
                try:
                    if not self.removed:
                        pause = self.tick()
                except DriverError as exc:  # e.g. the printer went away mid-command
                    log.warning("%s: printer: %s", self.name, exc)
                except FarmError as exc:
                    self._refused(exc)
                    if _not_registered(exc):
                        self._removed(exc)
                    else:
                        log.warning("%s: coordinator: %s", self.name, exc)
                except Exception:  # one bad round must not kill the agent beside a printer
                    log.exception("%s: unexpected error; carrying on", self.name)
                if pause > 0:
                    self.driver.pause_until_change(stop, pause)
        finally:
            self.driver.close()

    def _first_status(self) -> PrinterStatus:
        try:
            return self.driver.status()
        except DriverError as exc:  # OFFLINE is a status; a refused password or key raises
            raise ConfigMistake(f"{self.name}: the printer refused us: {exc}") from exc

    def _refused(self, exc: FarmError) -> None:
        if exc.status in (401, 403):
            # Not the server's own words: they send the CLI's user to FARM_TOKEN.
            detail = "it does not know that token (HTTP 401)" if exc.status == 401 else str(exc)
            raise ConfigMistake(
                f"{self.name}: the coordinator at {self.client.url} refused the token from "
                f"{self.token_source}: {detail}"
            ) from exc

    def _removed(self, exc: FarmError) -> None:
        """Said once; then the agent waits. Registering again would undo the operator's removal:
        a restart of the agent registers the printer again."""
        self.removed, self.job = True, None
        log.warning(
            "%s: the coordinator no longer knows this printer (`farm printers remove`?): waiting; "
            "restart the agent to add it back (%s)",
            self.name,
            exc,
        )

    def _register(self, status: PrinterStatus) -> None:
        """Register (again: it is idempotent), saying what the printer shows: a finished or failed
        print found at start is a part on the bed, and the coordinator sends nothing until it is
        cleared (unless the printer ejects its own parts)."""
        p = self.config.printer
        self._bed_unseen = status.state == PrinterState.OFFLINE
        reply = self.client.register(
            wire.Register(
                printer=p.name,
                model=p.model,
                protocol=p.driver,
                agent_version=VERSION,
                auto_eject=p.auto_eject,
                state=status.state,
            )
        )
        if reply.job and self.job is None:
            self._settle_until = time.monotonic() + UPLOAD_SETTLE_S
            self._reconcile(reply.job)

    def _reconcile(self, job: wire.Claim) -> None:
        """We were bound to a job before a restart: find out from the printer what became of it."""
        status = self.driver.status()
        current = CurrentJob(job.id, job.fence, job.gcode, job.gcode_name, time.monotonic())
        on_printer = _same_file(status.file, current.remote_name)
        if on_printer and status.state in UNDER_WAY | PRINT_ENDED:
            log.info("%s: adopting job %s, which the printer has (%s)", self.name, current.id, status.state)
            self.job = current
            if job.state != JobState.PRINTING:
                self._report(JobState.PRINTING, progress=status.progress)
            self._follow(status)
        elif job.state == JobState.PRINTING:
            # The coordinator thinks it printed but the printer has no trace of it: do not guess.
            self.job = current
            self._follow(status)
        else:
            log.info("%s: job %s never reached the printer; sending it now", self.name, current.id)
            self._start(job, resuming=True)

    # -- one round ------------------------------------------------------------------------
    def tick(self) -> float:
        """One round; returns how long to pause before the next."""
        pause = self._round()
        if self._snapshot_wanted:
            self._requested_snapshot()
            pause = min(pause, self.config.poll_s)
        return pause

    def _round(self) -> float:
        poll = self.config.poll_s
        if self._unsettled is not None and self.job is None:
            job, self._unsettled = self._unsettled, None
            self._reconcile(job)  # the last agent's upload has had a round to arrive
            return poll
        status = self.driver.status()
        if self.job is not None:
            self._follow(status)
            if self.job is not None:
                return self._follow_pause(status)
            # The print ended and is reported: with a bed that clears itself, claim the next now.
        if self._bed_unseen and status.state != PrinterState.OFFLINE:
            # The printer was off when we registered: now it can say whether a part is on the bed.
            self._register(status)
            if self.job is not None:
                return poll
        body = self._status_body(status)
        if status.state in READY_FOR_WORK and time.monotonic() >= self._resting_until:
            waited = time.monotonic()
            claimed = self._claim(body)
            if claimed:
                self._start(claimed)
                return poll
            if status.state in PRINT_ENDED:
                # A part is on the bed (the coordinator, which knows whether the printer ejects,
                # gave no job): fetch the next G-code while someone clears it.
                self._prefetch()
            # A claim the coordinator held for wait_s was the pause; one it answered at once
            # (a coordinator before long polls, or one that wants a still) was not.
            return 0.0 if time.monotonic() - waited >= self.config.wait_s / 2 > 0 else poll
        self._note_wanted(self.client.heartbeat(body))
        return poll

    def _claim(self, body: wire.Heartbeat) -> wire.Claim | None:
        """The next job (None: nothing to print), waiting up to wait_s at the coordinator for one;
        the answer's header says whether a still is wanted."""
        claimed = self.client.claim(body, self.config.wait_s)
        self._snapshot_wanted |= claimed.snapshot_wanted
        return claimed.job

    def _note_wanted(self, beat: wire.HeartbeatAnswer) -> None:
        self._snapshot_wanted |= beat.snapshot

    def _follow_pause(self, status: PrinterStatus) -> float:
        """poll_s, or less when the printer says the print ends sooner: the next job then starts
        within END_CHECK_S of the end, not up to poll_s later. Near the end, the next job's G-code
        is fetched, so that it is ready before this print is done."""
        poll = self.config.poll_s
        left = status.remaining_s
        if status.state != PrinterState.PRINTING or left is None:
            return poll
        job = self.job
        if job is not None and left <= PREFETCH_LEFT_S and self._prefetched_for != job.id:
            self._prefetched_for = job.id
            self._next_prefetch = 0.0
            try:
                self._prefetch()
            except FarmError as exc:  # only a head start: the claim fetches it otherwise
                log.info("%s: no prefetch: %s", self.name, exc)
        return min(poll, max(END_CHECK_S, float(left)))

    def _prefetch(self) -> None:
        now = time.monotonic()
        if now < self._next_prefetch:
            return
        self._next_prefetch = now + PREFETCH_EVERY_S
        hint = self.client.next_gcode(self.name)
        path = self.spool / f"{hint.gcode}.gcode" if hint else None
        if hint is not None and path is not None and not path.exists():
            self.client.download_artifact(hint.gcode, path)
            log.info("%s: prefetched the next G-code (%s) while the bed waits", self.name, hint.gcode[:12])

    def _status_body(self, status: PrinterStatus) -> wire.Heartbeat:
        body = wire.Heartbeat(
            printer=self.name, state=status.state, message=status.message, progress=status.progress
        )
        # Sent only when the printer reports them (an absent key, not null), as before the models.
        if status.material:
            body.material = status.material
        if status.color:
            body.color = status.color
        return body

    def _start(self, job: wire.Claim, *, resuming: bool = False) -> None:
        """Send a job to the printer and start it. `resuming`: a job we held before a restart,
        which the printer did not show as its print (yet)."""
        current = CurrentJob(job.id, job.fence, job.gcode, job.gcode_name, time.monotonic())
        self.job = current
        path = self.spool / f"{job.gcode}.gcode"
        try:
            if not path.exists():
                self.client.download_artifact(job.gcode, path)
            self._report(JobState.UPLOADING, progress=0.0)
        except FarmError:
            # The coordinator went away before anything reached the printer. We still hold the
            # lease, and our next claim hands this same job back: start over then, rather than
            # follow a print that never began.
            self.job = None
            raise
        if self.job is not current:
            return  # the lease was lost while downloading
        try:
            if not current.remote_name.startswith(f"job{current.id}-"):  # only names the farm made
                raise DriverError(f"{current.remote_name!r} is not a name the farm gives job {current.id}")
            self.driver.want_filament(job.material, job.color)
            upload_began = time.monotonic()
            self.driver.upload(path, current.remote_name, start=True, progress=self._upload_progress)
        except DriverError as exc:
            if resuming and time.monotonic() < self._settle_until:
                # The killed agent's upload of this job may still be arriving (what it had written
                # to its socket is delivered after it died), and the printer may be about to start
                # it, or have just started it: it refuses ours. Sending it again, or failing the
                # attempt so that another printer takes it, could print it twice: ask the printer
                # again next round; only a refusal that lasts is a failed attempt.
                log.info("%s: job %s: the printer refused it (%s); asking again", self.name, current.id, exc)
                self.job, self._unsettled = None, job
                return
            # It never reached the printer. A failed upload is a failed attempt (the coordinator
            # retries it elsewhere while attempts last): handing it back as `ready` let a printer
            # that refuses a file take the same job again and again, forever. Rest before claiming
            # again so that a printer in trouble does not take (and drop) every job in turn.
            log.warning("%s: job %s: upload failed: %s", self.name, current.id, exc)
            self._report(JobState.FAILED, error=f"upload to {self.name} failed: {exc}")
            self.job = None
            self._resting_until = time.monotonic() + UPLOAD_FAILURE_REST_S
            return
        current.started = time.monotonic()
        self.job = current  # the printer has it now, whatever happened to the lease meanwhile
        sent = {"upload_bytes": path.stat().st_size, "upload_s": round(time.monotonic() - upload_began, 3)}
        self._report(JobState.PRINTING, progress=0.0, **sent)  # the sizes and times feed /metrics
        log.info("%s: job %s started (%s)", self.name, current.id, current.remote_name)
        self._snapshot(current.id, "start")
        for old in self.spool.glob("*.gcode"):  # keep the spool small: the printer has the file now
            if old != path:
                old.unlink(missing_ok=True)

    def _upload_progress(self, sent: int, total: int) -> None:
        now = time.monotonic()
        if (
            self.job is not None and now - self._last_report >= 2.0
        ):  # also renews the lease during long uploads
            self._last_report = now
            try:
                self._report(JobState.UPLOADING, progress=100.0 * sent / max(total, 1))
            except FarmError as exc:  # a coordinator restart must not cut the upload to the printer
                log.warning("%s: progress report failed, uploading on: %s", self.name, exc)

    def _follow(self, status: PrinterStatus) -> None:
        job = self.job
        assert job is not None
        bound = self.client.heartbeat(self._status_body(status))
        self._note_wanted(bound)
        if bound.job != job.id:
            self._abandon(job, status)
            return
        state = status.state
        mine = _same_file(status.file, job.remote_name) or status.file is None
        if state == PrinterState.FINISHED and mine:
            self._report(JobState.DONE)
            log.info("%s: job %s done", self.name, job.id)
            self.job = None
            self._snapshot(job.id, "end")
        elif state == PrinterState.FAILED and mine:
            self._report(JobState.FAILED, error=status.message or "the printer stopped the print")
            self.job = None
            self._snapshot(job.id, "failure")
        elif state in UNDER_WAY:
            self._report(JobState.PRINTING, progress=status.progress, remaining_s=status.remaining_s)
        elif state == PrinterState.IDLE and time.monotonic() - job.started > IDLE_GRACE_S:
            self._report(JobState.FAILED, error=f"{self.name} went idle without finishing the print")
            self.job = None
        # OFFLINE or BUSY: keep the job bound and wait; the heartbeat tells the coordinator why.

    def _snapshot(self, job_id: int, moment: str) -> None:
        """A still from the printer's camera, kept with the job; printers without one send nothing."""
        take = getattr(self.driver, "snapshot", None)
        try:
            shot = take() if take is not None else None
            if shot is not None:
                image, media_type = shot
                self.client.request(
                    "POST",
                    f"/api/agents/jobs/{job_id}/snapshots",
                    params={"moment": moment},
                    content=image,
                    headers={"Content-Type": media_type},
                )
        except Exception as exc:  # a camera's trouble must never stop or fail a print
            log.warning("%s: job %s: no %s snapshot: %s", self.name, job_id, moment, exc)

    def _requested_snapshot(self) -> None:
        """An operator asked for a still: upload one, or say why there is none (the CLI waiting
        for it then says so instead of timing out). A failed upload is asked for again: the
        coordinator keeps asking until one of the two arrives."""
        self._snapshot_wanted = False
        where = f"/api/agents/printers/{quote(self.name, safe='')}"
        take = getattr(self.driver, "snapshot", None)
        try:
            shot = take() if take is not None else None
            error = None if shot else f"{self.name} has no camera the farm can read"
        except Exception as exc:  # the camera's trouble is the answer, not the agent's
            shot, error = None, f"the camera of {self.name} failed: {exc}"
        if shot is None:
            log.warning("%s: no snapshot on request: %s", self.name, error)
            self.client.post(f"{where}/snapshot-error", {"error": error})
            return
        image, media_type = shot
        self.client.request("POST", f"{where}/snapshots", content=image, headers={"Content-Type": media_type})
        log.info("%s: snapshot taken on request", self.name)

    def _abandon(self, job: CurrentJob, status: PrinterStatus) -> None:
        """The coordinator no longer gives us this job (an operator cancelled it): stop printing it."""
        log.info("%s: job %s was cancelled; stopping it on the printer", self.name, job.id)
        self.job = None
        if status.state in UNDER_WAY and (status.file is None or _same_file(status.file, job.remote_name)):
            try:
                self.driver.cancel()
            except DriverError as exc:
                log.warning("%s: could not stop job %s on the printer: %s", self.name, job.id, exc)

    def _report(self, state: JobState, **fields: Any) -> None:
        assert self.job is not None
        body = wire.Report(printer=self.name, fence=self.job.fence, state=state, **fields)
        try:
            self.client.report(self.job.id, body)
        except FarmError as exc:
            if exc.status == 409:  # our lease is gone: someone else owns the job now
                log.warning("%s: dropping job %s: %s", self.name, self.job.id, exc)
                self.job = None
                return
            raise
