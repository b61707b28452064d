"""Tables for the operators' tools: metric tallies (farm/coordinator/metrics.py) and the notification outbox
(notify.py). Kept apart from models.py; db.py imports this module so they are created."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from farm.coordinator.models import utcnow


class MetricTally(SQLModel, table=True):
    """One counter or histogram series, shared by every coordinator process through the database.

    `le` is "" for a counter, else a histogram bucket's bound ("0.5", "+Inf"), "sum" or "count"."""

    name: str = Field(primary_key=True)
    labels: str = Field(default="", primary_key=True)  # "k=v,k=v", sorted
    le: str = Field(default="", primary_key=True)
    value: float = 0.0


class NotifyTarget(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    url: str  # http(s)://… or mailto:someone@example.com
    format: str = "json"  # json | discord | slack | ntfy | email
    events: str = ""  # ",job.done,job.failed," ; "" means every event
    secret: str | None = None  # json: the HMAC key for X-Farm-Signature
    created_at: datetime = Field(default_factory=utcnow)


class NotifyEvent(SQLModel, table=True):
    """The outbox: written in the same transaction as the move it tells of."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str  # job.done, job.failed, printer.attention, ... (farm/coordinator/notify.py EVENTS)
    data_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)
    fanned_out: bool = Field(default=False, index=True)  # deliveries made for each matching target


class NotifyDelivery(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(index=True)
    target_id: int = Field(index=True)
    state: str = Field(default="pending", index=True)  # pending | sent | failed (gave up)
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow)  # not tried again before this (back-off)
    last_status: int | None = None  # the receiver's HTTP status (or 250 for SMTP)
    last_error: str | None = None
    sent_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class NotifyWatch(SQLModel, table=True):
    """What the notifier last saw of things that change without an ORM move (heartbeats):
    `printer:NAME` -> its state, `queue` -> busy | empty."""

    key: str = Field(primary_key=True)
    value: str = ""
