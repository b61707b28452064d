# Shown while it was drawn, then with the rest at the end (ocp_vscode's show() replaces what the
# viewer showed before): each part prints once, under the name and colour it was last shown with.
from build123d import Box, BuildPart, Pos
from ocp_vscode import show, show_object

with BuildPart() as base:
    Box(20, 20, 4)
show(base)
show_object(base.part.wrapped, name="first_try")
lid = Pos(0, 0, 10) * Box(20, 20, 2)
show(base, lid, names=["base", "lid"], colors=["orange", "blue"])
