# A part shown with what it was made from: its centre line (a BuildLine), its profile (a BuildSketch),
# a face and a Location. Only the part prints; the rest is listed as skipped.
from build123d import (
    BuildLine,
    BuildPart,
    BuildSketch,
    Circle,
    Line,
    Location,
    Rectangle,
    extrude,
)
from ocp_vscode import show

with BuildLine() as center_line:
    Line((0, 0), (0, 30))
with BuildSketch() as outline:
    Rectangle(10, 6)
with BuildPart() as handle:
    with BuildSketch():
        Rectangle(10, 6)
    extrude(amount=30)
marker = Circle(2).faces()[0]
origin = Location((0, 0, 0))
show(handle, center_line, outline, marker, origin)
