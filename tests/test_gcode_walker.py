"""The G-code walker the fidelity tests rely on: each rule it enforces, caught and let through."""

from __future__ import annotations

import pytest

from tests.gcode_walker import codes, hot_z_moves, loose_tool_changes, start_sequence, walk


def test_homing_a_hot_nozzle_is_caught() -> None:
    # The farm's old generic start G-code: heat to 215 °C, then home everything onto the plate.
    old = "M104 S215\nM190 S60\nG28 ; home all\nG1 Z0.3\n"
    hot = hot_z_moves(walk(old, flavor="bambu"), 150)
    assert [(s.line, s.text, s.nozzle_c) for s in hot] == [(3, "G28", 215.0)]


def test_cooling_counts_only_once_waited_for() -> None:
    gcode = "M109 S215\nM104 S140\nG28\nM109 R140\nG28\n"
    steps = walk(gcode)  # Marlin: M104 sets a target; M109 R waits until it is reached
    homes = [s for s in steps if s.kind == "home_z"]
    assert [s.nozzle_c for s in homes] == [215.0, 140.0]
    assert [s.line for s in hot_z_moves(steps, 170)] == [3]


def test_marlin_m109_s_does_not_wait_for_cooling_but_bambu_does() -> None:
    gcode = "M109 S215\nM109 S140\nG29\n"
    assert hot_z_moves(walk(gcode, flavor="marlin"), 150)
    assert not hot_z_moves(walk(gcode, flavor="bambu"), 150)


def test_heating_counts_at_once() -> None:
    # The nozzle may reach the new target while Z homes, so the bound rises with M104.
    steps = walk("M109 R140\nM104 S220\nG28 Z\n")
    assert steps[-1].kind == "home_z" and steps[-1].nozzle_c == 220.0


def test_what_touches_the_plate() -> None:
    gcode = "\n".join(
        [
            "G28 X",  # X only: not Z
            "G28 XY",
            "G28 Z P0 T300",  # Bambu low-precision Z home
            "G28 W",  # Prusa: home all without mesh
            "G29.2 S0",  # Bambu: turn ABL off, no motion
            "G29 P3.2",  # Buddy: interpolate the mesh
            "G29 A",  # Buddy: activate the mesh
            "G29 P9 X10 Y-4 W32 H4",  # Buddy: nozzle cleaning on the plate
            "G29 P1 X0 Y0 W50 H20 C",  # Buddy: probe an area
            "G380 S2 Z-25 F300",  # Bambu: move the plate up until contact
            "G380 S2 Z30 F300",
            "G80 X10 Y10 W30 H20",  # MK3S: mesh bed levelling
            "G30",
        ]
    )
    kinds = [s.kind for s in walk(gcode)]
    assert kinds == [
        "other",
        "other",
        "home_z",
        "home_z",
        "other",
        "other",
        "other",
        "probe",
        "probe",
        "probe",
        "other",
        "probe",
        "probe",
    ]


def test_per_tool_temperatures() -> None:
    # XL: each tool has its own nozzle; probing with tool 1 cares about tool 1's temperature.
    gcode = "M104 T0 S250\nM109 T1 R170\nT1 S1 L0 D0\nG29 P1\nT0\nG29 P1\n"
    probes = [s for s in walk(gcode) if s.kind == "probe"]
    assert [(s.tool, s.nozzle_c) for s in probes] == [(1, 170.0), (0, 250.0)]


def test_tool_changes_outside_ams_blocks_are_caught() -> None:
    good = "M620 S0A\nM109 S220\nT0\nM621 S0A\nT1000\n"  # T1000: Bambu's "no tool", allowed anywhere
    assert loose_tool_changes(walk(good, flavor="bambu")) == []
    bad = "M620 S0A\nT0\nM621 S0A\nT1\n"
    assert [s.text for s in loose_tool_changes(walk(bad, flavor="bambu"))] == ["T1"]
    # `M620 M` (enable remapping) does not open a block.
    assert [s.text for s in loose_tool_changes(walk("M620 M\nT2\n", flavor="bambu"))] == ["T2"]


def test_codes_and_start_sequence() -> None:
    gcode = 'M862.3 P "MK4S" ; check\n\n; comment\nG28\n;LAYER_CHANGE\nG1 X1\n'
    assert codes(gcode) == ["M862.3", "G28", "G1"]
    assert codes(start_sequence(gcode)) == ["M862.3", "G28"]
    with pytest.raises(ValueError):
        start_sequence("G28\n")
    with pytest.raises(ValueError):
        walk("G28", flavor="klipper")
