# Nothing solid: a path and its profile. The build fails and names them.
from build123d import BuildLine, BuildSketch, Circle, Line

with BuildLine() as path:
    Line((0, 0), (10, 0))
with BuildSketch() as profile:
    Circle(3)
show(path, profile)  # noqa: F821
