"""What the farm can know at submit time it says at once (issue #14): a printer model, material,
quality or colour no printer could take, and a parameter or artifact the design does not define,
are a 422 and `farm submit` exits 2, by the same rules `farm printers set` uses; `farm jobs explain`
suggests only commands the farm accepts; `farm submit --wait` follows every build of a matrix at
once, with an ETA. A real `farm server` (SQLite, a real Redis) and the real CLI; the test plays the
slicing worker and the printers' agents where a build has to move."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from farm.coordinator.db import make_engine
from farm.core.settings import Settings
from tests.conftest import EXAMPLES, REPO, farm_server, run_farm, wait_until
from tests.coordinator_fixtures import create_build

BRACKET = EXAMPLES / "bracket.py"


@dataclass
class Server:
    url: str
    data_dir: Path
    env: dict[str, str]
    api: httpx.Client

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_farm(self.env, *args, timeout=timeout)

    def builds(self) -> int:
        return len(self.api.get("/api/builds").json())

    def register(self, name: str, model: str) -> None:
        reg = {"printer": name, "model": model, "protocol": "prusalink"}
        assert self.api.post("/api/agents/register", json=reg).status_code == 200


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`farm server` alone: no workers, so what is queued stays queued unless the test moves it."""
    data = tmp_path_factory.mktemp("coordinator")
    env = {
        **os.environ,
        "FARM_DATA_DIR": str(data),
        # A database of its own on the session's Redis: no worker of another farm takes these builds.
        "FARM_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/6",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FARM_TOKEN", None)
    with farm_server(env, data / "server.out") as (_proc, url):
        env["FARM_URL"] = url
        token = (data / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            yield Server(url, data, env, api)


# -- (7) submit refuses at once what would fail later -----------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--printer-model", "MK3"], "unknown printer model 'MK3'; did you mean 'MK3S'?"),
        (["--material", "PLAA"], "unknown material 'PLAA'; did you mean 'PLA'?"),
        (["--param", "lenght=60"], "unknown parameter 'lenght'; did you mean 'length'?"),
        (["--artifact", "brackett"], "no entry point 'brackett' in bracket.py; did you mean 'bracket'?"),
        (["--quality", "fien"], "unknown quality 'fien'; did you mean 'fine'?"),
        (["--color", "red;rm"], "colour 'red;rm' has characters a colour name does not"),
        (["--param", "length=long"], "parameter 'length' expects a number, got 'long'"),  # as before
    ],
)
def test_submit_refuses_at_once_what_no_printer_could_take(
    server: Server, args: list[str], words: str
) -> None:
    before = server.builds()
    done = server.cli("submit", str(BRACKET), *args)  # without --wait: it used to exit 0
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert words in done.stderr and "HTTP 422" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert server.builds() == before  # nothing was queued


def test_what_is_right_or_an_alias_is_taken_as_the_farm_spells_it(server: Server) -> None:
    done = server.cli(
        "submit", str(BRACKET), "--param", "length=60", "--artifact", "bracket", "--printer-model", "mk3s+",
        "--material", "petg", "--quality", "Fine", "--color", "  Galaxy   Black ", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    build = json.loads(done.stdout)
    job = build["jobs"][0]
    assert (job["printer_model"], job["material"], job["color"]) == ("MK3S", "PETG", "Galaxy Black"), job
    assert build["params"] == {"length": 60.0} and build["quality"] == "fine", build


def test_a_matrix_with_one_bad_name_or_value_is_refused_before_any_build(server: Server) -> None:
    before = server.builds()
    done = server.cli("submit", str(BRACKET), "--matrix", "length=40,60", "--matrix", "widht=10,20")
    assert done.returncode == 2 and "did you mean 'width'?" in done.stderr, done.stderr
    assert server.builds() == before
    # Only the second value is wrong: the first build must not be queued alone either.
    done = server.cli("submit", str(BRACKET), "--matrix", "length=40,long")
    assert done.returncode == 2, done.stderr
    assert "parameter 'length' expects a number, got 'long'" in done.stderr
    assert "nothing was submitted" in done.stderr
    assert server.builds() == before


def test_printers_set_and_submit_share_the_rules(server: Server) -> None:
    server.register("rules-mini", "MINI")
    for material, said in (("PLAA", "did you mean 'PLA'?"), ("wood", "choose from PLA, PETG")):
        refused = server.cli("printers", "set", "rules-mini", "--material", material)
        submitted = server.cli("submit", str(EXAMPLES / "cube.stl"), "--material", material)
        for done in (refused, submitted):
            assert done.returncode == 2 and f"unknown material '{material}'" in done.stderr, done.stderr
            assert said in done.stderr
    refused = server.cli("printers", "set", "rules-mini", "--color", "red;rm")
    assert refused.returncode == 2 and "a colour name does not: ';'" in refused.stderr, refused.stderr
    accepted = server.cli(
        "printers", "set", "rules-mini", "--material", "petg", "--color", " Galaxy  Black", "--json"
    )
    assert accepted.returncode == 0, accepted.stderr
    printer = json.loads(accepted.stdout)
    assert (printer["material"], printer["color"]) == ("PETG", "Galaxy Black")


def test_explain_suggests_only_commands_the_farm_accepts(server: Server) -> None:
    """Every `farm printers set …` that explain suggests, run as it is written, is accepted. A job
    from before the submit-time checks may want a material no printer loads: no command then."""
    server.register("explain-mini", "MINI")
    server.cli("printers", "set", "explain-mini", "--tag", "enclosed", "--material", "PLA")
    wants = server.cli(
        "submit", str(EXAMPLES / "cube.stl"), "--material", "PETG", "--color", "galaxy black",
        "--tag", "enclosed", "--tag", "hardened", "--json",
    )  # fmt: skip
    assert wants.returncode == 0, wants.stderr
    jobs = [json.loads(wants.stdout)["jobs"][0]["id"]]
    settings = Settings(data_dir=server.data_dir)
    engine = make_engine(settings.db_url)
    with Session(engine) as s:  # what an older coordinator accepted
        _build, old, _out = create_build(s, source_name="old.stl", material="PLAA", printer_model="MINI")
        s.commit()
        jobs.append(old[0].id)
    engine.dispose()

    suggested = []
    for job_id in jobs:
        explained = server.cli("jobs", "explain", str(job_id))
        assert explained.returncode == 0, explained.stderr
        line = next(x for x in explained.stdout.splitlines() if "explain-mini" in x)
        suggested += [c for c in re.findall(r"`([^`]+)`", line) if c.startswith("farm printers set")]
        if job_id == jobs[1]:
            assert "PLAA, which the MINI cannot load" in line and "--material PLAA" not in line, line
    assert len(suggested) == 3, suggested  # material, colour and tags of the first job
    for command in suggested:
        done = server.cli(*shlex.split(command)[1:])
        assert done.returncode == 0, (command, done.stderr)
    printer = next(p for p in server.api.get("/api/printers").json() if p["name"] == "explain-mini")
    assert (printer["material"], printer["color"]) == ("PETG", "galaxy black")
    assert sorted(printer["tags"]) == ["enclosed", "hardened"], printer


# -- (9) --wait follows every build of a matrix at once, with an ETA ---------------------------


def _lines(stream: object) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], pattern: str, seen: list[str], timeout: float = 30) -> str:
    def found() -> str | None:
        while not lines.empty():
            seen.append(lines.get())
        return next((x for x in seen if re.search(pattern, x)), None)

    try:
        return str(wait_until(found, timeout, f"a line matching {pattern!r}", interval=0.1))
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the lines were: {seen}") from None


def test_wait_follows_every_build_of_a_matrix_at_once_with_an_eta(server: Server, tmp_path: Path) -> None:
    for name in ("wait-a", "wait-b"):
        server.register(name, "MK4")
    gcode = tmp_path / "part.gcode"
    gcode.write_text("; printer_model = MK4\nG28\n")
    argv = [sys.executable, "-m", "farm", "submit", str(gcode), "--matrix", "n=1,2", "--wait"]
    argv += ["--printer-model", "MK4"]
    proc = subprocess.Popen(
        argv, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        lines, seen = _lines(proc.stderr), []
        builds = wait_until(lambda: _newest(server, 2), 30, "the matrix's two builds")
        for build in builds:  # the slicing worker's part: the G-code, with the slicer's estimate
            up = server.api.put("/api/artifacts", params={"name": "part.gcode"}, content=gcode.read_bytes())
            result = {"gcode": up.json()["sha256"], "meta": {"printer_model": "MK4", "print_time_s": 1800}}
            assert (
                server.api.post(f"/api/slices/{build['slices'][0]['id']}/result", json=result).status_code
                == 200
            )
        first, second = (b["jobs"][0]["id"] for b in builds)
        _wait_for_line(lines, rf"job {first} .*prints in about 30m", seen)  # the slicer's estimate

        claims = {}
        for name in ("wait-a", "wait-b"):
            claim = server.api.post("/api/agents/claim", json={"printer": name, "state": "idle"})
            assert claim.status_code == 200, claim.text
            claims[claim.json()["id"]] = (name, claim.json()["fence"])
        assert set(claims) == {first, second}

        def report(job: int, state: str, **extra: object) -> None:
            name, fence = claims[job]
            body = {"printer": name, "fence": fence, "state": state, **extra}
            assert server.api.post(f"/api/agents/jobs/{job}/report", json=body).status_code == 200

        for job in (first, second):
            report(job, "uploading")
        report(first, "printing", progress=40, remaining_s=1500)
        report(second, "printing", progress=90, remaining_s=120)
        report(second, "done")
        # The first build still prints, and the second's end is told all the same.
        _wait_for_line(lines, rf"job {second} .*: done on wait-", seen)
        _wait_for_line(lines, rf"job {first} .*: printing on wait-.*25%, ETA 25m00s \(at \d\d:\d\d\)", seen)
        assert proc.poll() is None  # still following the first
        report(first, "done")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen
    assert "build" in out


def _newest(server: Server, count: int) -> list[dict] | None:
    builds = server.api.get("/api/builds", params={"limit": count}).json()
    fresh = [b for b in builds if b["source"] == "part.gcode" and b["slices"]]
    return sorted(fresh, key=lambda b: b["id"]) if len(fresh) == count else None
