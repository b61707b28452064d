# Many solids that touch face to face: the boards of a stud wall, one Part.
from build123d import Align, Box, Part, Pos

A = (Align.MIN, Align.MIN, Align.MIN)
boards = [Box(100, 4, 2, align=A), Pos(0, 0, 42) * Box(100, 4, 2, align=A)]  # bottom and top plates
boards += [Pos(x, 0, 2) * Box(2, 4, 40, align=A) for x in range(0, 100, 14)]  # studs between them
wall = Part(boards)
show(wall)  # noqa: F821
