"""Notifications: events are written to an outbox (farm/coordinator/ops_tables.py) in the transaction of the
move they tell of (farm/coordinator/observe.py) or by the watcher below; the coordinator's housekeeper fans
them out to the targets that want them and delivers each, with back-off, off the request path.

A delivery is at least once: a coordinator that dies between sending and recording sends again.
Receivers tell repeats apart by X-Farm-Delivery (JSON format)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy import func, insert, update
from sqlalchemy.orm import Session
from sqlmodel import col, select

# db imports observe, which imports this module: so db.write_session, looked up at call time
from farm.coordinator import db
from farm.coordinator.models import Build, Job, Printer, stored_id, utcnow
from farm.coordinator.ops_tables import NotifyDelivery, NotifyEvent, NotifyTarget, NotifyWatch
from farm.core.settings import Settings
from farm.core.states import JobState

log = logging.getLogger("farm.coordinator.notify")

EVENTS = {
    "job.done": "a job printed",
    "job.failed": "a job failed for good (with the error)",
    "printer.attention": "a printer waits for a person",
    "printer.offline": "a printer's agent went silent",
    "printer.back": "an offline printer is back",
    "printer.bed": "a print ended: the bed needs clearing",
    "build.failed": "a build produced nothing printable",
    "queue.empty": "the last queued job left the queue",
}
FORMATS = ("json", "discord", "slack", "ntfy", "email")
MAX_ATTEMPTS = 12  # 5 s doubling, capped at an hour: about 8 hours of trying
SEND_TIMEOUT_S = 10.0
CLAIM_S = 120.0  # a delivery being sent is not picked again for this long (another coordinator)
REPLAY_WINDOW_S = 300  # receivers should refuse a timestamp further off than this
_ACTIVE = (JobState.WAITING, JobState.READY, JobState.CLAIMED, JobState.UPLOADING, JobState.PRINTING)


def raise_event(session: Session, kind: str, data: dict[str, Any]) -> None:
    """Put an event in the outbox, in the caller's transaction."""
    session.add(NotifyEvent(kind=kind, data_json=json.dumps(data, default=str)))


def job_data(session: Session, job: Job) -> dict[str, Any]:
    build = session.get(Build, job.build_id)
    return {
        "job": job.id,
        "build": job.build_id,
        "source": build.source_name if build else None,
        "state": str(job.state),
        "printer": job.printer,
        "model": job.printer_model,
        "error": job.error,
    }


@dataclass
class Seen:
    """What a watch round found: the events to raise and the values to remember for next time."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    first: dict[str, str] = field(default_factory=dict)  # key: value, never seen before
    changed: dict[str, str] = field(default_factory=dict)  # key: value, different from last time

    def __bool__(self) -> bool:
        return bool(self.events or self.first or self.changed)


def look(session: Session) -> Seen:
    """Events that heartbeats carry (single statements, no ORM hook): compare with what was seen.
    Reads only, so the round takes no writer's turn for it (1,000 printers: 30-100 ms)."""
    seen = {key: value for key, value in session.execute(select(NotifyWatch.key, NotifyWatch.value)).all()}
    found = Seen()

    def remember(key: str, now: str) -> None:
        if key not in seen:
            found.first[key] = now
        elif seen[key] != now:
            found.changed[key] = now

    printers = select(Printer.name, Printer.model, Printer.state, Printer.message)
    for name, model, now, message in session.execute(printers).all():
        key = f"printer:{name}"
        before = seen.get(key)
        data = {"printer": name, "model": model, "state": now, "message": message}
        if before is not None and before != now:
            if now == "attention":
                found.events.append(("printer.attention", data))
            elif now == "offline":
                found.events.append(("printer.offline", data))
            elif before == "offline":
                found.events.append(("printer.back", data))
        remember(key, now)
    active = session.execute(select(func.count()).where(col(Job.state).in_(_ACTIVE))).scalar_one()
    queue = "busy" if active else "empty"
    if seen.get("queue") == "busy" and queue == "empty":
        found.events.append(("queue.empty", {"message": "nothing left to print"}))
    remember("queue", queue)
    return found


def record(session: Session, found: Seen) -> None:
    """Write what `look` found, in the caller's transaction: one statement each for the new and
    the changed values (a row at a time through the ORM held the writers' lock for 30-80 ms when
    200 printers had moved)."""
    for kind, data in found.events:
        raise_event(session, kind, data)
    if found.first:
        session.execute(insert(NotifyWatch), [{"key": k, "value": v} for k, v in found.first.items()])
    if found.changed:
        # SQLAlchemy's bulk UPDATE by primary key: the rows' keys are in the parameters.
        session.execute(update(NotifyWatch), [{"key": k, "value": v} for k, v in found.changed.items()])


def watch(session: Session) -> None:
    """look and record in one transaction."""
    record(session, look(session))


_not_fanned_out = col(NotifyEvent.fanned_out) == False  # noqa: E712


def fan_out(session: Session) -> int:
    """One delivery per new event and target that wants it; events no target wants are dropped."""
    events = (
        session.execute(select(NotifyEvent).where(_not_fanned_out).order_by(col(NotifyEvent.id)))
        .scalars()
        .all()
    )
    if not events:
        return 0
    targets = session.execute(select(NotifyTarget)).scalars().all()
    made = 0
    for ev in events:
        wanted = [t for t in targets if wants(t, ev.kind) and _naive(t.created_at) <= _naive(ev.created_at)]
        for target in wanted:
            session.add(NotifyDelivery(event_id=stored_id(ev), target_id=stored_id(target), next_at=utcnow()))
        made += len(wanted)
        if wanted:
            ev.fanned_out = True
        else:
            session.delete(ev)
    return made


def wants(target: NotifyTarget, kind: str) -> bool:
    return not target.events or f",{kind}," in target.events


def _naive(when: Any) -> Any:
    return when.replace(tzinfo=None) if when is not None else None


def backoff_s(attempts: int) -> float:
    return min(3600.0, 5.0 * 2 ** max(attempts - 1, 0))


def summary(kind: str, data: dict[str, Any]) -> str:
    """One line for people (chat messages, e-mail subjects)."""
    job = f"Job {data.get('job')} ({data.get('source')})"
    printer = data.get("printer")
    lines = {
        "job.done": f"{job} printed on {printer}",
        "job.failed": f"{job} failed on {printer or 'no printer'}: {data.get('error')}",
        "printer.attention": f"{printer} needs attention: {data.get('message') or 'see the printer'}",
        "printer.offline": f"{printer} is offline: {data.get('message') or 'its agent is silent'}",
        "printer.back": f"{printer} is back ({data.get('state')})",
        "printer.bed": f"{printer}: the print ended, the bed needs clearing (farm printers clear {printer})",
        "build.failed": f"Build {data.get('build')} ({data.get('source')}) failed: {data.get('error')}",
        "queue.empty": "The print queue is empty",
        "test": "A test notification from printfarm",
    }
    return lines.get(kind, kind)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """X-Farm-Signature: HMAC-SHA256 over `timestamp` "." body, hex, prefixed "sha256="."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None) -> bool:
    """What a receiver checks: the signature, and a timestamp within REPLAY_WINDOW_S of now."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= REPLAY_WINDOW_S and hmac.compare_digest(sign(secret, timestamp, body), signature)


def render(
    target: NotifyTarget, delivery_id: int, kind: str, data: dict[str, Any], at: str
) -> tuple[dict[str, str], bytes]:
    """The headers and body of one HTTP delivery in the target's format."""
    text = summary(kind, data)
    if target.format == "discord":
        return {"Content-Type": "application/json"}, json.dumps({"content": text}).encode()
    if target.format == "slack":
        return {"Content-Type": "application/json"}, json.dumps({"text": text}).encode()
    if target.format == "ntfy":
        tags = "warning" if kind.endswith(("failed", "attention", "offline")) else "white_check_mark"
        return {"Title": f"printfarm: {kind}", "Tags": tags}, text.encode()
    body = json.dumps(
        {"event": kind, "delivery": delivery_id, "at": at, "summary": text, "data": data}, sort_keys=True
    ).encode()
    headers = {"Content-Type": "application/json", "X-Farm-Event": kind, "X-Farm-Delivery": str(delivery_id)}
    if target.secret:
        stamp = str(int(time.time()))
        headers |= {"X-Farm-Timestamp": stamp, "X-Farm-Signature": sign(target.secret, stamp, body)}
    return headers, body


def _send(
    target: NotifyTarget, delivery_id: int, kind: str, data: dict[str, Any], at: str, s: Settings
) -> int:
    """Deliver once; the receiver's status (2xx), else raise."""
    if target.format == "email":
        return _email(target.url.removeprefix("mailto:"), kind, data, s)
    headers, body = render(target, delivery_id, kind, data, at)
    reply = httpx.post(target.url, content=body, headers=headers, timeout=SEND_TIMEOUT_S)
    if reply.status_code >= 300:
        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
    return reply.status_code


def _subject(kind: str, data: dict[str, Any]) -> str:
    """One header line: errors carry newlines (tracebacks, the offending source line)."""
    line = " ".join(summary(kind, data).split())
    return f"[printfarm] {line if len(line) <= 150 else line[:149] + '…'}"


def _email(to: str, kind: str, data: dict[str, Any], s: Settings) -> int:
    if not s.smtp_host:
        raise RuntimeError("no SMTP server: set FARM_SMTP_HOST (and FARM_SMTP_PORT, FARM_SMTP_FROM)")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = s.smtp_from, to, _subject(kind, data)
    msg.set_content(
        summary(kind, data) + "\n\n" + "\n".join(f"{k}: {v}" for k, v in data.items() if v is not None)
    )
    with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SEND_TIMEOUT_S) as smtp:
        if s.smtp_starttls:
            smtp.starttls()
        if s.smtp_user:
            smtp.login(s.smtp_user, s.smtp_password or "")
        smtp.send_message(msg)
    return 250


def deliver_due(engine: Any, settings: Settings, limit: int = 20) -> int:
    """Send the deliveries that are due; record each outcome. Sends happen outside any transaction."""
    now = utcnow()
    is_due = (NotifyDelivery.state == "pending", col(NotifyDelivery.next_at) <= now)
    with db.session_scope(engine) as reading:  # most rounds: none, and no writer's turn taken
        if reading.execute(select(NotifyDelivery.id).where(*is_due).limit(1)).first() is None:
            return 0
    with db.write_session(engine) as session:
        due = session.execute(
            select(NotifyDelivery, NotifyTarget, NotifyEvent)
            .join(NotifyTarget, col(NotifyTarget.id) == NotifyDelivery.target_id)
            .join(NotifyEvent, col(NotifyEvent.id) == NotifyDelivery.event_id)
            .where(*is_due)
            .order_by(col(NotifyDelivery.next_at))
            .limit(limit)
            # PostgreSQL: housekeepers on other hosts skip what this one is claiming (SQLite: no-op).
            .with_for_update(of=NotifyDelivery, skip_locked=True)
        ).all()
        for delivery, _t, _e in due:  # claimed for a while: another coordinator leaves them alone
            delivery.next_at = now + timedelta(seconds=CLAIM_S)
        session.commit()
    for delivery, target, ev in due:
        status, error = None, None
        try:
            status = _send(
                target, delivery.id, ev.kind, json.loads(ev.data_json), ev.created_at.isoformat(), settings
            )
        except Exception as exc:  # any failure is retried: the receiver may be down, slow or wrong
            error = f"{type(exc).__name__}: {exc}"[:500]
            if isinstance(exc, RuntimeError) and str(exc).startswith("HTTP "):
                status = int(str(exc)[5:8])
        with db.write_session(engine) as session:
            row = session.get(NotifyDelivery, delivery.id)
            if row is None:
                continue
            row.attempts += 1
            row.last_status, row.last_error = status, error
            if error is None:
                row.state, row.sent_at = "sent", utcnow()
            elif row.attempts >= MAX_ATTEMPTS:
                row.state = "failed"
            else:
                row.next_at = utcnow() + timedelta(seconds=backoff_s(row.attempts))
            session.commit()
        if error:
            log.info(
                "notification %s to %s failed (attempt %d): %s", ev.kind, target.url, row.attempts, error
            )
    return len(due)


def one_round(engine: Any, settings: Settings) -> int:
    """The housekeeper's round: watch, fan out, deliver. It looks without the writers' lock, which
    the agents' heartbeats and claims queue on: holding it for the look stalled them every round
    (bench/coordinator.py, 1,000 agents: 30-110 ms every 2 s). What changes between the look and
    the write is seen next round."""
    with db.session_scope(engine) as reading:
        found = look(reading)
        unsent = reading.execute(select(NotifyEvent.id).where(_not_fanned_out).limit(1)).first()
    if found or unsent is not None:
        with db.write_session(engine) as session:
            record(session, found)
            fan_out(session)
            session.commit()
    return deliver_due(engine, settings)


def send_test(session: Session, target: NotifyTarget) -> NotifyDelivery:
    ev = NotifyEvent(kind="test", data_json=json.dumps({"target": target.id}), fanned_out=True)
    session.add(ev)
    session.flush()
    delivery = NotifyDelivery(event_id=stored_id(ev), target_id=stored_id(target))
    session.add(delivery)
    session.commit()
    return delivery
