"""`farm notify`: where the farm tells people what happened (farm/coordinator/notify.py sends)."""

from __future__ import annotations

from typing import Annotated

import typer

from farm.commands.common import JsonOpt, ask, change, emit, shown_time, table
from farm.core.client import FarmClient
from farm.core.wire import NewTarget

notify_app = typer.Typer(
    help="Notifications: webhooks (JSON, Discord, Slack, ntfy) and e-mail for job, printer and queue events.",
    no_args_is_help=True,
)
EVENT_HELP = (
    "An event to send (repeat the option); none: every event. job.done, job.failed, printer.attention, "
    "printer.offline, printer.back, printer.bed (needs clearing), build.failed, queue.empty."
)

TargetArg = Annotated[int, typer.Argument(help="The target's id (farm notify list).")]


@notify_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https://… (a webhook) or mailto:ops@example.com.")],
    event: Annotated[list[str] | None, typer.Option("--event", "-e", help=EVENT_HELP)] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="json (signed), discord, slack, ntfy; mailto: URLs are e-mail."),
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="JSON: the HMAC key to sign with (default: a new one, shown once).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a target. JSON deliveries carry X-Farm-Timestamp and X-Farm-Signature:
    sha256=HMAC-SHA256(secret, timestamp + "." + body)."""
    # Unchecked here: the coordinator's refusal (a 422) is what this has always said.
    body = NewTarget.model_construct(url=url, format=fmt, events=event or [], secret=secret)
    data = change(lambda farm: farm.add_notify_target(body))
    if as_json:
        emit(data)
        return
    typer.echo(f"target {data.id}: {data.format} to {data.url} for {', '.join(data.events)}")
    if data.secret and not secret:
        typer.echo(f"signing secret (shown only now): {data.secret}")


@notify_app.command("list")
def list_targets(as_json: JsonOpt = False) -> None:
    """The targets and the events each gets."""
    data = ask(FarmClient.notify_targets)
    if as_json:
        emit(data)
        return
    table(
        "notification targets",
        ["id", "format", "url", "events", "signed"],
        [[t.id, t.format, t.url, ",".join(t.events), t.signed] for t in data],
    )


@notify_app.command("test")
def test(
    target: TargetArg,
    as_json: JsonOpt = False,
) -> None:
    """Send a test event to one target; `farm notify log` shows whether it arrived."""
    data = change(lambda farm: farm.test_notify_target(target))
    emit(data) if as_json else typer.echo(f"test queued for target {target} (delivery {data.delivery})")


@notify_app.command("remove")
def remove(
    target: TargetArg,
    as_json: JsonOpt = False,
) -> None:
    """Remove a target and drop its pending deliveries."""
    data = change(lambda farm: farm.remove_notify_target(target))
    emit(data) if as_json else typer.echo(f"target {target}: removed")


@notify_app.command("log")
def log(
    limit: Annotated[int, typer.Option(help="How many of the latest deliveries.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The latest deliveries and how each went (sent, pending with its next try, or failed)."""
    data = ask(lambda farm: farm.notify_log(limit))
    if as_json:
        emit(data)
        return
    table(
        "deliveries",
        ["id", "event", "target", "state", "tries", "status", "error", "sent / next try", "summary"],
        [
            [
                d.id,
                d.event,
                d.url,
                d.state,
                d.attempts,
                d.last_status,
                d.last_error,
                shown_time(d.sent_at or d.next_at),
                d.summary,
            ]
            for d in data
        ],
    )
