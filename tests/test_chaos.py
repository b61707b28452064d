"""Issue #14: a farm keeps its promises while its parts are killed.

`farm up --sim prusalink=2,moonraker=1` prints a batch of 20 jobs (designs, meshes, pre-sliced
G-code, copies) while a seeded generator picks when to SIGKILL a CAD worker mid-build, a slicing
worker mid-slice, the coordinator, an agent mid-upload and one mid-print, and the Redis server;
`farm up` restarts each. Every job ends `done`, none is printed twice (the emulators' print logs),
no build stays in a non-final stage, and the batch finishes within the bound. The driver is
bench/chaos.py, which runs the same with `--jobs 200`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="reads /proc to find PrusaSlicer under the worker"
)


def _driver():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_chaos"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_chaos_batch_survives_kills(tmp_path: Path) -> None:
    chaos = _driver()
    result = chaos.run_chaos(tmp_path / "farm", jobs=20, seed=14, rounds=1, speed=250.0, bound_s=300.0)
    figures = json.dumps(result.figures(), indent=1)
    if not result.ok:  # what each part logged last, for the CI run's reader
        logs = sorted((tmp_path / "farm" / "logs").glob("*.log"))
        tails = {log.name: log.read_text(errors="replace").splitlines()[-15:] for log in logs}
        figures += "\n" + "\n".join(f"--- {n}\n" + "\n".join(t) for n, t in tails.items())
    assert result.jobs >= 20
    assert set(result.kills) == set(chaos.KINDS), f"not every part was killed: {figures}"
    assert result.ok, figures
    assert result.done == result.jobs and result.printed_twice == 0 and result.stuck_builds == 0, figures
