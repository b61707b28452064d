# An assembly: a Compound with labelled, coloured children, moved as a whole. Each child prints as
# its own object, named by its label, in its colour, where the assembly put it.
from build123d import Box, Color, Compound, Cylinder, Location, Pos

lid = Pos(0, 0, 12) * Box(20, 20, 2)
lid.label, lid.color = "lid", Color("red")
tub = Box(20, 20, 10)
tub.label, tub.color = "tub", Color("blue")
knob = Pos(0, 0, 15) * Cylinder(2, 4)
knob.label = "knob"
box = Compound(label="box", children=[tub, Compound(label="top", children=[lid, knob])])
box.location = Location((100, 0, 0))
show_object(box)  # noqa: F821
