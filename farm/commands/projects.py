"""`farm projects`: repositories whose pushes the farm builds (admin; farm/coordinator/api/projects.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.commands.common import JsonOpt, ask, change, emit, shown_time, table
from farm.core.client import FarmClient
from farm.core.wire import NewProject

projects_app = typer.Typer(
    help="Projects: git repositories whose push and tag hooks (GitHub, Gitea/Forgejo, GitLab) build "
    "their parts as printfarm.toml says (admin only).",
    no_args_is_help=True,
)
WHERE = {
    "github": "GitHub: Settings > Webhooks > Add webhook; content type application/json; Secret",
    "gitea": "Gitea/Forgejo: Settings > Webhooks > Add webhook > Gitea (Forgejo); Secret; push events",
    "gitlab": "GitLab: Settings > Webhooks; Secret token; Push events and Tag push events",
}


def _read_token(path: Path) -> str:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    token = text.strip()
    if not token:
        raise typer.BadParameter(f"{path} holds no token")
    return token


@projects_app.command("add")
def add(
    name: Annotated[
        str, typer.Argument(help="A name for it: letters, digits, '_', '.', '-'; in its hook URLs.")
    ],
    git: Annotated[str, typer.Option("--git", help="The repository's URL, as the coordinator fetches it.")],
    branch: Annotated[
        str,
        typer.Option(help="The branch whose pushes are built (a pattern: 'release/*', '*'); tags always."),
    ] = "main",
    secret: Annotated[
        str | None, typer.Option(help="The hooks' secret (16+ characters); default: a new one, shown once.")
    ] = None,
    git_username: Annotated[
        str | None, typer.Option(help="HTTPS user for a private repository (with --git-token-file).")
    ] = None,
    git_token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the HTTPS password or access token ('-': read it from stdin). Kept on "
            "the coordinator, never shown again.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a repository and print the hook URLs to paste into GitHub, Gitea/Forgejo or GitLab."""
    body: dict[str, Any] = {"name": name, "git_url": git, "branch": branch, "secret": secret}
    if git_token_file is not None:
        body |= {"git_username": git_username, "git_token": _read_token(git_token_file)}
    elif git_username:
        raise typer.BadParameter("--git-username needs --git-token-file")
    # Unchecked here: the coordinator's refusal (a 422) is what this has always said.
    made = change(lambda farm: farm.add_project(NewProject.model_construct(**body)))
    if as_json:
        emit(made)
        return
    typer.echo(f"project '{made.name}': builds pushes to {made.branch} and tags of {made.git_url}")
    if made.secret:
        typer.echo(f"hook secret (shown only now): {made.secret}")
    typer.echo("hook URLs (the service must reach this address):")
    for service, url in made.hooks.items():
        typer.echo(f"  {url}\n      {WHERE[service]}")


@projects_app.command("list")
def list_projects(as_json: JsonOpt = False) -> None:
    """The registered projects."""
    data = ask(FarmClient.projects)
    if as_json:
        emit(data)
        return
    table(
        "projects",
        ["name", "git", "branch", "credentials", "created"],
        [[p.name, p.git_url, p.branch, p.credentials or "", shown_time(p.created_at)] for p in data],
    )


@projects_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The project (farm projects list).")], as_json: JsonOpt = False
) -> None:
    """A project, its hook URLs and its latest deliveries: what each push built, or why not."""
    data = ask(lambda farm: farm.project(name))
    if as_json:
        emit(data)
        return
    typer.echo(f"{data.name}: {data.git_url} (branch {data.branch})")
    if data.credentials:
        typer.echo(f"credentials: {data.credentials}")
    for service, url in data.hooks.items():
        typer.echo(f"{service} hook: {url}")
    table(
        "deliveries",
        ["id", "service", "ref", "commit", "state", "builds", "what happened"],
        [
            [
                d.id,
                d.service,
                d.ref,
                d.commit[:12],
                d.state,
                ",".join(map(str, d.builds)),
                d.error or d.message or (f"next try {shown_time(d.next_try_at)}" if d.next_try_at else ""),
            ]
            for d in data.deliveries
        ],
    )


@projects_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The project (farm projects list).")], as_json: JsonOpt = False
) -> None:
    """Forget a project: its hooks are refused from now on; its builds stay."""
    data = change(lambda farm: farm.remove_project(name))
    emit(data) if as_json else typer.echo(f"project '{name}': removed")
