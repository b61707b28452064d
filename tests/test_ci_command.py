"""`farm ci build` and `farm ci submit` on copies of examples/makerrepo_project, and the example workflow.

The builds are real (the farm's sandbox and CAD cache); the JUnit file is read by junitparser, the
step summary's previews by Pillow, the workflow by check-jsonschema against GitHub's workflow schema;
`ci submit` talks to a real coordinator.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from junitparser import Error, Failure, JUnitXml
from markdown_it import MarkdownIt
from PIL import Image

from farm.commands.ci_report import Outcome, junit_xml, markdown_summary
from farm.commands.ci_submit import read_checkout, strip_credentials
from tests.conftest import EXAMPLES, REPO, farm_server, run_farm

PROJECT = EXAMPLES / "makerrepo_project"
CI_VARS = ("GITHUB_STEP_SUMMARY", "GITHUB_REF_NAME", "GITHUB_REF_TYPE", "CI_COMMIT_TAG", "CI_COMMIT_BRANCH")
BROKEN_MANIFEST = """
[[parts]]
name = "sample-tray"
file = "main.py"
artifact = "sample_tray"

[[parts]]
name = "lid"
file = "main.py"
artifact = "lid"
"""


def _env(data: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CI_VARS and k != "FARM_TOKEN"}
    return {**env, "FARM_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", **more}


def _copy(dest: Path) -> Path:
    shutil.copytree(PROJECT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@dataclass
class Run:
    folder: Path
    junit: Path
    summary: Path
    proc: subprocess.CompletedProcess[str]


def _start(folder: Path, data: Path, summary: Path) -> tuple[subprocess.Popen[str], Path]:
    junit = folder.parent / f"{folder.name}-junit.xml"
    argv = [sys.executable, "-m", "farm", "ci", "build", "--manifest", str(folder), "--junit", str(junit)]
    proc = subprocess.Popen(
        argv,
        env=_env(data, GITHUB_STEP_SUMMARY=str(summary)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, junit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """One `farm ci build` of a good copy and one of a broken copy, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ci")
    good = _copy(tmp / "good")
    broken = _copy(tmp / "broken")
    (broken / "printfarm.toml").write_text(BROKEN_MANIFEST)
    main = (broken / "main.py").read_text()
    # A message with control characters, as a design's error may hold: the XML must still parse.
    docstring = '    """A flat lid for the default tray."""\n'
    main = main.replace(docstring, docstring + '    raise ValueError("lid too thin \\x1b[31m\\x00")\n')
    assert "lid too thin" in main
    (broken / "main.py").write_text(main)
    summaries = {name: tmp / f"{name}-summary.md" for name in ("good", "broken")}
    summaries["good"].write_text("## an earlier step's summary\n")
    # One after the other: the second reuses the project's requirements the first installed.
    done: dict[str, Run] = {}
    for name, folder in (("good", good), ("broken", broken)):
        proc, junit = _start(folder, tmp / "data", summaries[name])
        out, err = proc.communicate(timeout=300)
        done[name] = Run(
            folder, junit, summaries[name], subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        )
    yield done


def _cases(junit: Path) -> list:  # type: ignore[type-arg]
    xml = JUnitXml.fromfile(str(junit))
    return [case for suite in xml for case in suite]


def test_a_good_checkout_builds_every_part_and_parameter_set(runs: dict[str, Run]) -> None:
    run = runs["good"]
    assert run.proc.returncode == 0, run.proc.stderr
    # The manifest: sample-tray, tray x {pockets 3, 6}, lid.
    cases = _cases(run.junit)
    assert sorted(c.name for c in cases) == [
        "lid",
        "sample-tray",
        "tray[pocket_diameter=14, pockets=3]",
        "tray[pocket_diameter=14, pockets=6]",
    ]
    assert all(c.is_passed for c in cases)
    assert {c.classname for c in cases} == {"printfarm.lid", "printfarm.sample-tray", "printfarm.tray"}
    root = ET.parse(run.junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"
    for case in suite.iter("testcase"):
        assert {"name", "classname", "time"} <= set(case.attrib)
    # A progress line per build, then the table and the totals.
    assert len(re.findall(r"^\[\d/4\] .*: ok", run.proc.stderr, re.M)) == 4, run.proc.stderr
    assert "4 builds: 4 passed" in run.proc.stdout
    assert "tray" in run.proc.stdout and "lid" in run.proc.stdout


def test_the_step_summary_shows_each_build_with_its_preview(runs: dict[str, Run]) -> None:
    text = runs["good"].summary.read_text()
    assert text.startswith("## an earlier step's summary\n"), "the summary is appended to, not replaced"
    assert "printfarm: 4 of 4 builds passed" in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    # GitHub renders it as GitHub Flavored Markdown: a table whose rows each hold a preview.
    html = MarkdownIt("commonmark").enable("table").render(text)
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert len(rows) == 5 and all('<img src="data:image/png;base64,' in row for row in rows[1:])
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.size == (256, 256)
    assert len(text.encode()) < 1 << 20


def test_a_broken_part_fails_the_run_naming_its_file_and_line(runs: dict[str, Run]) -> None:
    run = runs["broken"]
    assert run.proc.returncode == 1, run.proc.stdout + run.proc.stderr
    line = next(i for i, text in enumerate((run.folder / "main.py").read_text().splitlines(), 1)
                if "lid too thin" in text)  # fmt: skip
    where = f"main.py, line {line}, in lid: ValueError: lid too thin"
    assert where in run.proc.stderr
    assert "2 builds: 1 passed, 1 failed" in run.proc.stdout
    cases = {c.name: c for c in _cases(run.junit)}
    assert cases["sample-tray"].is_passed
    problems = cases["lid"].result
    assert len(problems) == 1 and isinstance(problems[0], Failure) and not isinstance(problems[0], Error)
    assert where in problems[0].message and problems[0].type == "exception"
    assert where in runs["broken"].summary.read_text()
    assert "printfarm: 1 of 2 builds passed" in runs["broken"].summary.read_text()


def test_a_rebuild_comes_from_the_cache_farm_build_shares(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["good"]
    data = run.folder.parent / "data"
    done = run_farm(_env(data), "ci", "build", "--manifest", str(run.folder / "printfarm.toml"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"] == 4 and report["failed"] == 0
    assert all(b["cached"] for b in report["builds"])
    tray = next(b for b in report["builds"] if b["params"].get("pockets") == 6)
    assert tray["size"][0] > next(b for b in report["builds"] if b["params"].get("pockets") == 3)["size"][0]
    # `farm build` of the same part and parameters is a hit in the same cache.
    built = run_farm(
        _env(data), "build", str(run.folder / "main.py"), "--artifact", "lid", "-o", str(tmp_path), "--json"
    )
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout.strip().splitlines()[-1])["cached"] is True


def test_a_bad_manifest_is_a_usage_error_that_says_where(tmp_path: Path) -> None:
    folder = _copy(tmp_path / "p")
    (folder / "printfarm.toml").write_text("[[parts]]\nname = 'x'\nfile = 'main.py'\ncopies = 2\n")
    done = run_farm(_env(tmp_path / "data"), "ci", "build", "--manifest", str(folder), timeout=60)
    assert done.returncode == 2
    assert 'printfarm.toml: parts[0] ("x").copies: Extra inputs are not permitted' in done.stderr


def test_junit_and_summary_hold_hostile_errors() -> None:
    """Any text a design raises (control characters, markup, fences) stays text."""
    evil = Outcome(
        "p",
        "main.py",
        None,
        {"n": "<b>|"},
        error="x\x00\x1b ```\n<script>alert(1)</script>",
        kind="exception",
    )
    root = ET.fromstring(junit_xml([evil]))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == "x\ufffd\ufffd ```"
    text = markdown_summary([evil], 1 << 20)
    assert "<script>" not in text.split("```\n", 1)[0]  # the table escapes it
    assert "````\nx\x00\x1b ```\n<script>alert(1)</script>\n````" in text  # a fence longer than any inside
    big, small = b"\x89PNG" + bytes(60_000), bytes(4000)
    many = [Outcome(f"p{i}", "main.py", None, {}, preview=big, preview_small=small) for i in range(30)]
    text = markdown_summary(many, 1 << 20)
    assert len(text.encode()) < 1 << 20 and "left out" not in text
    assert text.count('width="128"') == 0 and text.count('width="96"') == 30
    text = markdown_summary(many, 100_000)
    assert len(text.encode()) < 100_000 and "left out" in text and 0 < text.count('width="96"') < 30


# -- farm ci submit -------------------------------------------------------------------------------
def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


REMOTE = "https://git.example.org/team/trays.git"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = _copy(tmp_path / "trays")
    _git(folder, "init", "-q", "-b", "main")
    _git(folder, "add", "-A")
    _git(folder, "commit", "-q", "-m", "trays")
    _git(folder, "tag", "v1.0")
    _git(folder, "remote", "add", "origin", REMOTE.replace("https://", "https://ci:s3cret@"))
    return folder


def test_submit_sends_each_part_with_the_manifest_targets_and_the_commit(
    repo: Path, tmp_path: Path, redis_url: str
) -> None:
    env = _env(tmp_path / "data", FARM_REDIS_URL=redis_url.rsplit("/", 1)[0] + "/14")
    with farm_server(env, tmp_path / "server.log") as (_, base):
        admin = (tmp_path / "data" / "admin.token").read_text().strip()
        made = httpx.post(f"{base}/api/tokens", json={"name": "ci", "role": "submitter"},
                          headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
        assert made.status_code in (200, 201), made.text
        token = made.json()["token"]

        def submit(*args: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
            return run_farm(
                env, "ci", "submit", "--manifest", str(repo), "--url", base, "--token", token,
                *(["--json"] if json_out else []), *args,
            )  # fmt: skip

        done = submit("--print")
        assert done.returncode == 0, done.stderr
        sent = json.loads(done.stdout.strip().splitlines()[-1])
        commit = _git(repo, "rev-parse", "HEAD")
        assert sent["git"] == {"url": REMOTE, "ref": "v1.0", "commit": commit}  # no credentials

        def fetch(build_id: int) -> dict:
            resp = httpx.get(f"{base}/api/builds/{build_id}", headers={"Authorization": f"Bearer {admin}"})
            return resp.json()  # type: ignore[no-any-return]

        builds = [(s["part"], s["print"], fetch(s["build"]["id"])) for s in sent["builds"]]
        # At tag v1.0: the on-tag tray prints (twice: its matrix) on its target; the others are previews.
        assert [(part, prints) for part, prints, _ in builds] == [
            ("sample-tray", False), ("tray", True), ("tray", True), ("lid", False),
        ]  # fmt: skip
        for _, prints, build in builds:
            assert build["git"] == {"url": REMOTE, "ref": "v1.0", "commit": commit}
            assert build["preview_only"] is not prints
            if prints:
                assert build["material"] == "PETG"
                assert [(j["printer_model"], j["material"], j["copies"]) for j in build["jobs"]] == [
                    ("MK4", "PETG", 1)
                ]
        assert [b["params"] for p, _, b in builds if p == "tray"] == [
            {"pocket_diameter": 14, "pockets": 3}, {"pocket_diameter": 14, "pockets": 6},
        ]  # fmt: skip
        assert [b["entry"] for _, _, b in builds] == ["sample_tray", "custom_tray", "custom_tray", "lid"]

        # Named with --part, a manual or on-push part prints too: the lid, 2 copies on one plate.
        done = submit("--print", "--part", "lid", json_out=False)
        assert done.returncode == 0, done.stderr
        said = re.fullmatch(r"lid: build (\d+), 2 x PLA on any printer \(1 job\)", done.stdout.strip())
        assert said, done.stdout
        jobs = fetch(int(said[1]))["jobs"]
        assert [(j["material"], j["copies"]) for j in jobs] == [("PLA", 2)]

        # A part the manifest does not have: nothing is sent.
        done = submit("--part", "nope")
        assert done.returncode == 2 and "no part nope in the manifest" in done.stderr


def test_a_changed_checkout_records_no_commit(repo: Path) -> None:
    assert read_checkout(repo).git is not None
    (repo / "main.py").write_text((repo / "main.py").read_text() + "\n# changed\n")
    checkout = read_checkout(repo)
    assert checkout.git is None and "uncommitted changes" in checkout.notes[0]
    assert (
        strip_credentials("https://x-access-token:ghs_abc@github.com/o/r.git") == "https://github.com/o/r.git"
    )
    assert strip_credentials("https://tok@[::1]:8443/r.git") == "https://[::1]:8443/r.git"
    assert strip_credentials("https://u:p@host:notaport/r.git") == "https://host:notaport/r.git"


# -- the example workflow -------------------------------------------------------------------------
WORKFLOW = REPO / "docs" / "ci-github-actions.yml"


def test_the_example_workflow_builds_on_every_push_and_submits_on_tags() -> None:
    data = yaml.safe_load(WORKFLOW.read_text())
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and triggers["push"]["tags"]
    jobs = data["jobs"]
    assert set(jobs) == {"build", "submit"}
    for job in jobs.values():
        assert job["runs-on"] and job["steps"]
        assert all(("uses" in step) != ("run" in step) for step in job["steps"])
    runs = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    assert "farm ci build" in runs["build"] and "--junit" in runs["build"]
    assert "farm ci submit" in runs["submit"] and "refs/tags/" in jobs["submit"]["if"]
    assert jobs["submit"]["needs"] == "build"


def test_the_example_workflow_passes_the_github_workflow_schema() -> None:
    """SchemaStore's schema for GitHub workflows, as check-jsonschema ships it (no download)."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    assert checker.exists(), "check-jsonschema is missing: run scripts/setup (a dev dependency)"
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
