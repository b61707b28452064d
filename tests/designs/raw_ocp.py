# A raw OCP shape shown, as scripts that call OCP directly do: a TopoDS_Compound and a TopoDS_Solid.
from build123d import Box, BuildPart, Cylinder, Mode, Pos
from ocp_vscode import show_object

with BuildPart() as plate:
    Box(30, 30, 4)
    Cylinder(5, 4, mode=Mode.SUBTRACT)
show_object(plate.part.wrapped, name="plate")
show_object((Pos(40, 0, 0) * Box(10, 10, 10)).solids()[0].wrapped, name="cube")
