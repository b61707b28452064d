# show_all(): every shape variable, by name; the sketch among them is skipped.
from build123d import Box, Circle, Pos
from ocp_vscode import show_all

left = Box(10, 10, 10)
right = Pos(20, 0, 0) * Box(10, 10, 5)
sketch = Circle(5)
_hidden = Pos(40, 0, 0) * Box(1, 1, 1)
show_all()
