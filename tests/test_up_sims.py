"""`farm up --sim`: counts, protocols and a chosen model per protocol."""

from __future__ import annotations

import pytest

from farm.commands.up import parse_sims


def test_counts_protocols_and_models() -> None:
    assert parse_sims("2") == ["prusalink", "prusalink"]
    assert parse_sims("prusalink=1,moonraker=1") == ["prusalink", "moonraker"]
    # Names as printed on the machine and aliases become the farm's model ids.
    sims = parse_sims("prusalink:MK3S+=1, bambu:A1 mini=2")
    assert sims == ["prusalink:MK3S", "bambu:A1MINI", "bambu:A1MINI"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("prusalink:MK3Z=1", "did you mean 'MK3S'"),
        ("bambu:MK4=1", "only Bambu Lab models"),
        ("octoprint:P1S=1", "no Bambu Lab model"),
        ("klipper=1", "protocols: prusalink, octoprint, moonraker, bambu"),
        ("prusalink:MK3S=x", "PROTOCOL[:MODEL]=N"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        parse_sims(spec)
