"""Projects through a whole farm (real Redis, workers, build123d, pip, PrusaSlicer, PrusaLink):
`farm submit` of a MakerRepo project with parameters, a matrix, a git URL, and the errors a user
must be told about before or instead of a print."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, RunningFarm

pytestmark = pytest.mark.timeout(600)

PROJECT = EXAMPLES / "makerrepo_project" / "main.py"
PITCH = 12.0 + 3.0  # default pocket diameter + wall


def size(build: dict, axis: int) -> float:
    return float(build["bbox"][1][axis] - build["bbox"][0][axis])


def gcode_of(farm: RunningFarm, job: dict) -> str:
    files = [p for p in farm.received(job["printer"]) if p.name.startswith(f"job{job['id']}-")]
    assert len(files) == 1, farm.received(job["printer"])
    return files[0].read_text()


def test_makerrepo_project_with_parameters_builds_and_prints(farm: RunningFarm, tmp_path: Path) -> None:
    """@customizable with --params and a --matrix: one build per value, each printed, each different."""
    params = tmp_path / "tall.json"
    params.write_text(json.dumps({"height": 16, "wall": 3}))
    code, builds = farm.cli_json(
        "submit",
        str(PROJECT),
        "--artifact",
        "custom_tray",
        "--params",
        str(params),
        "--matrix",
        "pockets=2,5",
        "--printer-model",
        "MINI",
        "--wait",
    )
    assert code == 0, builds
    assert isinstance(builds, list) and len(builds) == 2
    assert [json.dumps(b["params"], sort_keys=True) for b in builds] == [  # JSON tells 16 from 16.0
        '{"height": 16.0, "pockets": 2, "wall": 3.0}',  # typed by TrayParams at submit time
        '{"height": 16.0, "pockets": 5, "wall": 3.0}',
    ]
    for build, pockets in zip(builds, (2, 5), strict=True):
        assert build["project"] is True and build["source"] == "main.py"
        assert [j["state"] for j in build["jobs"]] == ["done"], build
        assert size(build, 0) == pytest.approx(pockets * PITCH + 3, abs=0.01)  # pockets took effect
        assert size(build, 2) == pytest.approx(16, abs=0.01)  # so did the params file
    two, five = (gcode_of(farm, b["jobs"][0]) for b in builds)
    grams = [
        float(re.search(r"^; total filament used \[g\] = ([\d.]+)$", g, re.M).group(1)) for g in (two, five)
    ]  # type: ignore[union-attr]
    assert grams[1] > grams[0] * 1.5


def test_an_artifact_of_the_project_builds_without_parameters(farm: RunningFarm) -> None:
    code, build = farm.cli_json(
        "submit", str(PROJECT), "--artifact", "lid", "--printer-model", "MK3S", "--wait"
    )
    assert code == 0 and build["jobs"][0]["state"] == "done", build
    assert size(build, 2) == pytest.approx(2, abs=0.01)


def test_a_schema_violation_is_refused_at_submit_naming_the_field(farm: RunningFarm) -> None:
    before = farm.cli_json("status")[1]["builds"]
    done = farm.cli("submit", str(PROJECT), "--param", "pockets=40", "--json")
    assert done.returncode == 2  # a refusal of what was typed, as a bad option
    assert "HTTP 422" in done.stderr and "custom_tray(): parameter 'pockets'" in done.stderr, done.stderr
    assert "less than or equal to 12" in done.stderr and "Traceback" not in done.stderr
    done = farm.cli("submit", str(PROJECT), "--artifact", "custom_tray", "--param", "pocket=3")
    assert done.returncode == 2 and "unknown parameter 'pocket'; did you mean 'pockets'?" in done.stderr
    assert farm.cli_json("status")[1]["builds"] == before  # nothing was queued


def test_an_unknown_required_package_fails_the_build_clearly(farm: RunningFarm, tmp_path: Path) -> None:
    root = tmp_path / "needs_missing"
    root.mkdir()
    (root / "requirements.txt").write_text("printfarm-no-such-package-4b1d>=1\n")
    (root / "part.py").write_text("from build123d import Box\n\nresult = Box(5, 5, 5)\n")
    code, build = farm.cli_json("submit", str(root / "part.py"), "--wait")
    assert code == 1
    error = build["jobs"][0]["error"]
    assert build["jobs"][0]["state"] == "failed" and "could not install" in error, build
    assert "printfarm-no-such-package-4b1d" in error


def test_a_show_script_in_a_project_builds_as_it_is(farm: RunningFarm, tmp_path: Path) -> None:
    root = tmp_path / "viewer_project"
    (root / "lib").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "viewer"\ndependencies = ["build123d"]\n')
    (root / "lib" / "sizes.py").write_text("EDGE = 17\n")
    (root / "part.py").write_text(
        "from build123d import Box\nfrom ocp_vscode import show\nfrom lib.sizes import EDGE\n\n"
        "part = Box(EDGE, EDGE, 4)\nshow(part)\n"
    )
    code, build = farm.cli_json("submit", str(root / "part.py"), "--wait")
    assert code == 0 and build["jobs"][0]["state"] == "done", build
    assert size(build, 0) == pytest.approx(17, abs=0.01)


def test_a_git_url_and_ref_build_that_commit_and_record_it(farm: RunningFarm, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    part = work / "parts" / "spacer.py"
    part.parent.mkdir()

    def git(*args: str, cwd: Path = work) -> str:
        ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run(
            ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
        ).stdout

    part.write_text(textwrap.dedent("from build123d import Cylinder\n\nresult = Cylinder(10, 5)\n"))
    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-q", "-m", "v1")
    git("tag", "v1")
    v1 = git("rev-parse", "HEAD").strip()
    part.write_text("from build123d import Cylinder\n\nresult = Cylinder(20, 5)\n")
    git("commit", "-q", "-am", "v2")
    git("clone", "-q", "--bare", str(work), str(tmp_path / "spacers.git"), cwd=tmp_path)
    url = f"file://{tmp_path / 'spacers.git'}"

    code, build = farm.cli_json("submit", url, "--ref", "v1", "--file", "parts/spacer.py", "--wait")
    assert code == 0 and build["jobs"][0]["state"] == "done", build
    assert build["git"] == {"url": url, "ref": "v1", "commit": v1}
    assert size(build, 0) == pytest.approx(20, abs=0.01)  # v1's 10 mm radius, not main's 20

    done = farm.cli("submit", url, "--ref", "v1")
    assert done.returncode == 2 and "--file" in done.stderr


def test_no_cache_rebuilds_what_the_cache_has(farm: RunningFarm) -> None:
    args = ("submit", str(PROJECT), "--artifact", "sample_tray", "--printer-model", "MINI", "--wait")
    first = farm.cli_json(*args)[1]
    again = farm.cli_json(*args)[1]
    forced = farm.cli_json(*args, "--no-cache")[1]
    assert forced["use_cache"] is False and again["use_cache"] is True
    log = "\n".join(p.read_text() for p in (farm.data_dir / "logs").glob("*.log"))
    meshed = {
        int(m[1]): bool(m[2]) for m in re.finditer(r"build (\d+) meshed in [\d.]+ s( \(cache hit\))?", log)
    }
    assert meshed[again["id"]] is True and meshed[forced["id"]] is False, (first["id"], meshed)
