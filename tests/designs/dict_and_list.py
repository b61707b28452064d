# A dict shows its values under their keys; a list, its items numbered (or by their labels).
from build123d import Box, Pos

legs = [Pos(x, 0, 0) * Box(4, 4, 20) for x in (0, 10, 20)]
legs[2].label = "back_leg"
show_object({"top": Pos(0, 30, 0) * Box(30, 10, 2), "shelf": Pos(0, 50, 0) * Box(30, 10, 2)})  # noqa: F821
show(legs)  # noqa: F821
