# A board made as a part object, turned on its side and aligned to a corner: its faces' transforms
# put the vertices on the axis at 0.0 in one face and at -4e-15 in the next.
from build123d import Align, BasePartObject, BuildPart, BuildSketch, Mode, RectangleRounded, extrude


class Board(BasePartObject):
    def __init__(self, length: float, rotation=(0, 0, 0), align=None, mode=Mode.ADD):
        with BuildPart() as blank:
            with BuildSketch():
                RectangleRounded(38.1, 88.9, 6.35)
            extrude(amount=length)
        super().__init__(part=blank.part, rotation=rotation, align=align, mode=mode)


board = Board(3962.4, rotation=(0, -90, 0), align=(Align.MIN, Align.CENTER, Align.MAX))
show(board)  # noqa: F821
