"""`farm tokens`: tokens for people, workers and agents (admin only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, cast

import typer

from farm.commands.common import DURATION, UNIT_S, JsonOpt, ask, change, emit, table
from farm.core.client import FarmClient
from farm.core.wire import NewToken, Role

tokens_app = typer.Typer(help="Tokens for people, workers and agents (admin only).", no_args_is_help=True)


def _expiry(text: str) -> datetime:
    """`30d`, `12h`, `2w`, `90m` from now, or an ISO date/time (UTC unless it says otherwise)."""
    now = datetime.now(UTC)
    if m := DURATION.fullmatch(text.strip().lower()):
        return now + timedelta(seconds=int(m[1]) * UNIT_S[m[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is neither a duration (30d, 12h, 2w, 90m) nor an ISO date (2027-01-31)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="A name to know it by, e.g. 'alice' or 'agent-mk4-1'.")],
    role: Annotated[
        str,
        typer.Option(
            help="admin (everything), submitter (submits; cancels and retries its own jobs), "
            "viewer (reads only), worker (CAD and slicing) or agent (one printer's agent)."
        ),
    ] = "submitter",
    printer: Annotated[
        str | None, typer.Option(help="For an agent token: the one printer it acts for.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="Refused after: a duration (30d, 12h, 2w) or an ISO date. Default: never."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a token. Its secret is printed once: give it to the person or machine as FARM_TOKEN."""
    # Unchecked here (a role may be none of Role's): the coordinator's refusal, a 422 naming the
    # field, is what a bad name, role or printer has always been told.
    body = NewToken.model_construct(
        name=name, role=cast(Role, role), printer=printer, expires_at=_expiry(expires) if expires else None
    )
    data = change(lambda farm: farm.create_token(body))
    if as_json:
        emit(data)
        return
    bound = f" for printer {data.printer}" if data.printer else ""
    until = f", until {data.expires_at}" if data.expires_at else ""
    typer.echo(f"{data.role} token '{name}'{bound}{until} (shown only now):\n{data.token}")


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """List tokens (names and roles; secrets are never shown again)."""
    data = ask(FarmClient.tokens)
    if as_json:
        emit(data)
        return
    table(
        "tokens",
        ["name", "role", "printer", "created", "expires", "revoked"],
        [[t.name, t.role, t.printer, t.created_at, t.expires_at, t.revoked_at] for t in data],
    )


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="The token to revoke, by name.")], as_json: JsonOpt = False
) -> None:
    """Revoke a token for good: the coordinator refuses it from now on (its name may be given again)."""
    data = change(lambda farm: farm.revoke_token(name))
    emit(data) if as_json else typer.echo(f"token '{name}': revoked")
