"""A plain script: the farm prints whatever it leaves in `result`."""

from build123d import BuildPart, Cylinder, Hole

with BuildPart() as spacer:
    Cylinder(radius=8.0, height=6.0)
    Hole(radius=2.6)

result = spacer.part
