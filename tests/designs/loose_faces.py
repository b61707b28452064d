# One compound holding a solid and a loose face (a label plate drawn beside the part).
from build123d import Box, Compound, Pos, Rectangle
from ocp_vscode import show

kit = Compound([Box(10, 10, 10), Pos(20, 0, 0) * Rectangle(5, 5)])
show(kit)
