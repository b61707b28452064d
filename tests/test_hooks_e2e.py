"""Push hooks through a whole farm (`farm up`: coordinator, CAD and slicing worker, a PrusaLink
MK4 emulator and its agent): `farm projects add` on a local bare repository of
examples/makerrepo_project, a signed GitHub push builds every part at that commit (the on-push lid
prints), and a tag prints the on-tag trays on the MK4 in PETG, as printfarm.toml says, their CAD
taken from the cache the push filled."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hook_payloads as payloads
from tests.conftest import RunningFarm, running_farm, wait_until
from tests.test_hooks import Repo, make_repo

pytestmark = pytest.mark.timeout(600)
ZERO = payloads.ZERO


@pytest.fixture(scope="module")
def farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(redis_url, tmp_path_factory.mktemp("hooks"), "prusalink:MK4=1", redis_db=11) as running:
        yield running


def project_builds(farm: RunningFarm) -> list[dict]:
    found = httpx.get(
        f"{farm.url}/api/builds", params={"limit": 100}, headers=farm.admin_headers(), timeout=30
    ).json()
    return sorted((b for b in found if b["project_name"] == "trays"), key=lambda b: b["id"])


def finished(build: dict) -> bool:
    if build["stage"] == "failed":
        raise AssertionError(f"build {build['id']} failed: {build['error']}")
    if build["preview_only"]:
        return build["stage"] == "ready"
    return all(j["state"] == "done" for j in build["jobs"])


def cad_cache_hits(farm: RunningFarm) -> float:
    text = httpx.get(f"{farm.url}/metrics", headers=farm.admin_headers(), timeout=30).text
    found = re.search(
        r'^printfarm_cache_requests_total\{[^}]*result="hit"[^}]*stage="cad"[^}]*\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def push(farm: RunningFarm, secret: str, payload: dict) -> dict:
    body = payloads.encode(payload)
    reply = httpx.post(
        f"{farm.url}/api/hooks/github/trays",
        content=body,
        headers=payloads.headers("github", secret, body),
        timeout=30,
    )
    assert reply.status_code == 202, reply.text
    return reply.json()


def test_a_push_builds_the_commit_and_a_tag_prints_it(farm: RunningFarm, tmp_path: Path) -> None:
    repo: Repo = make_repo(tmp_path)
    added = farm.cli("projects", "add", "trays", "--git", repo.url)
    assert added.returncode == 0, added.stderr
    secret = re.search(r"hook secret \(shown only now\): (\S+)", added.stdout).group(1)  # type: ignore[union-attr]
    for service in ("github", "gitea", "gitlab"):
        assert f"{farm.url}/api/hooks/{service}/trays" in added.stdout

    commit = repo.head()
    push(farm, secret, payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
    wait_until(
        lambda: len(project_builds(farm)) == 4 and all(map(finished, project_builds(farm))),
        300,
        "the push's builds",
    )
    built = project_builds(farm)
    assert sorted(b["part_name"] for b in built) == ["lid", "sample-tray", "tray", "tray"]
    assert {b["git"]["commit"] for b in built} == {commit} and {b["git_tag"] for b in built} == {None}
    assert all(b["stl"] and b["preview"] for b in built)  # each part's mesh was made
    [lid] = [b for b in built if b["part_name"] == "lid"]
    assert [j["copies"] for j in lid["jobs"]] == [2] and lid["jobs"][0]["state"] == "done"  # on-push: printed

    printer = farm.printers[0]["name"]
    assert farm.cli("printers", "set", printer, "--material", "PETG").returncode == 0
    hits = cad_cache_hits(farm)
    tag_object, tagged = repo.tag("v1")
    push(farm, secret, payloads.github("refs/tags/v1", ZERO, tag_object, tagged, repo.url))
    wait_until(
        lambda: len(project_builds(farm)) == 6 and all(map(finished, project_builds(farm))), 300, "the prints"
    )
    trays = [b for b in project_builds(farm) if b["git_tag"] == "v1"]
    assert sorted(b["params"]["pockets"] for b in trays) == [3, 6] and all(
        b["part_name"] == "tray" for b in trays
    )
    for build in trays:
        [job] = build["jobs"]
        assert (job["state"], job["printer"], build["material"]) == ("done", printer, "PETG")
        assert any(p.name.startswith(f"job{job['id']}-") for p in farm.received(printer))
    assert cad_cache_hits(farm) >= hits + 2  # the tag's trays: the push had built them already

    shown = farm.cli("projects", "show", "trays")
    assert shown.returncode == 0 and "refs/tags/v1" in shown.stdout and "done" in shown.stdout
    assert secret not in shown.stdout + farm.cli("projects", "list", "--json").stdout


def test_farm_projects_keeps_a_token_to_itself(farm: RunningFarm, tmp_path: Path) -> None:
    token = "glpat-" + "x7Q" * 8
    (tmp_path / "token.txt").write_text(token + "\n")
    url = "https://gitlab.example.com/ada/private.git"
    code, made = farm.cli_json(
        "projects",
        "add",
        "private",
        "--git",
        url,
        "--git-username",
        "ada",
        "--git-token-file",
        str(tmp_path / "token.txt"),
    )
    assert code == 0 and made["credentials"] == "user 'ada' and a token" and made["secret"], made  # type: ignore[call-overload]
    piped = subprocess.run(
        [sys.executable, "-m", "farm", "projects", "add", "piped", "--git", url, "--git-token-file", "-"],
        input=token,
        env=farm.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and "hook secret" in piped.stdout, piped.stderr
    shown = [
        farm.cli("projects", *args) for args in (["show", "private"], ["show", "private", "--json"], ["list"])
    ]
    shown.append(farm.cli("projects", "list", "--json"))
    assert all(done.returncode == 0 for done in shown)
    text = "".join(done.stdout + done.stderr for done in [*shown, piped]) + json.dumps(made)
    assert "user 'ada' and a token" in text and token not in text
    refused = farm.cli("projects", "add", "other", "--git", url, "--git-username", "ada")
    assert refused.returncode == 2 and "--git-token-file" in refused.stderr
    for name in ("private", "piped"):
        assert farm.cli("projects", "remove", name).returncode == 0
    logs = [p.read_text(errors="replace") for p in (farm.data_dir / "logs").glob("*.log")]
    assert logs and not any(token in log for log in logs)
