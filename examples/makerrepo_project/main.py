"""A MakerRepo-style project: `farm submit examples/makerrepo_project/main.py --param pockets=6`."""

from build123d import Box
from mr import artifact, customizable
from parts.geometry import TrayParams, tray


@artifact
def sample_tray():
    """The tray with its default parameters."""
    return tray(TrayParams())


@customizable
def custom_tray(params: TrayParams):
    """A tray sized by its parameters (validated against TrayParams when submitted)."""
    return tray(params)


@artifact
def lid():
    """A flat lid for the default tray."""
    params = TrayParams()
    return Box(params.pockets * (params.pocket_diameter + params.wall) + params.wall, 18, 2)
