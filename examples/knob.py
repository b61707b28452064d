"""A knurled knob, written for the OCP viewer: the farm builds what `show()` is given."""

from build123d import Align, BuildPart, Cylinder, Hole, Locations, Mode, PolarLocations

DIAMETER, HEIGHT, RIDGES = 24.0, 12.0, 18

with BuildPart() as knob:
    Cylinder(DIAMETER / 2, HEIGHT, align=(Align.CENTER, Align.CENTER, Align.MIN))
    with PolarLocations(DIAMETER / 2, RIDGES), Locations((0, 0, HEIGHT / 2)):
        Cylinder(1.0, HEIGHT, mode=Mode.SUBTRACT)
    Hole(radius=3.0, depth=HEIGHT * 0.75)

show(knob)  # noqa: F821 - provided by the OCP viewer, and by the farm's CAD workers
