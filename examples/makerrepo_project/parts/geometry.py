"""Plain build123d helpers and the parameter model of the tray."""

from build123d import Box, BuildPart, Cylinder, Locations, Mode
from more_itertools import sliding_window
from pydantic import BaseModel, Field


class TrayParams(BaseModel):
    """A tray of round pockets, e.g. for nozzles or bits."""

    pockets: int = Field(4, ge=1, le=12, description="Pockets in the row")
    pocket_diameter: float = Field(12.0, gt=2, le=40, description="Pocket diameter, mm")
    wall: float = Field(3.0, ge=1.2, le=10, description="Wall between pockets, mm")
    height: float = Field(10.0, gt=2, le=60, description="Tray height, mm")


def pocket_centres(params: TrayParams) -> list[float]:
    pitch = params.pocket_diameter + params.wall
    first = -pitch * (params.pockets - 1) / 2
    return [first + i * pitch for i in range(params.pockets)]


def tray(params: TrayParams):
    centres = pocket_centres(params)
    length = params.pockets * (params.pocket_diameter + params.wall) + params.wall
    width = params.pocket_diameter + 2 * params.wall
    with BuildPart() as part:
        Box(length, width, params.height)
        with Locations(*[(x, 0, params.wall / 2) for x in centres]):
            Cylinder(params.pocket_diameter / 2, params.height, mode=Mode.SUBTRACT)
        # A finger channel across the wall between neighbouring pockets, to lift the parts out.
        with Locations(*[((a + b) / 2, 0, params.height / 2) for a, b in sliding_window(centres, 2)]):
            Box(params.wall + 4, params.pocket_diameter / 2, params.height / 2, mode=Mode.SUBTRACT)
    return part.part
