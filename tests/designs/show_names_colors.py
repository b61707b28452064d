# ocp_vscode's show with names and colours, in each spelling a viewer accepts.
from build123d import Box, Color, Cylinder, Pos, Sphere
from ocp_vscode import Camera, set_defaults, show

set_defaults(reset_camera=Camera.ISO)
base = Box(20, 20, 5)
peg = Pos(30, 0, 0) * Cylinder(3, 10)
ball = Pos(-30, 0, 0) * Sphere(4)
show(base, peg, ball, names=["base", "peg", "ball"], colors=["orange", "#0000FF", Color(0, 1, 0)])
