"""A parametric L-bracket: `farm submit examples/bracket.py --param length=60`."""

from build123d import Axis, Box, BuildPart, Hole, Locations, Mode, fillet


def bracket(length: float = 40.0, width: float = 20.0, thickness: float = 4.0, hole_d: float = 4.0):
    with BuildPart() as part:
        Box(length, width, thickness)
        with Locations((-length / 2 + thickness / 2, 0, width / 2 - thickness / 2 + thickness / 2)):
            Box(thickness, width, width)
        fillet(part.edges().filter_by(Axis.Y).group_by(Axis.Z)[-1], radius=min(1.0, thickness / 4))
        with Locations((length / 4, 0, 0)):
            Hole(radius=hole_d / 2, mode=Mode.SUBTRACT)
    return part.part
