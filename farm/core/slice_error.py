"""The one error of slicing, shared by the profile, mesh, slicer and G-code modules."""

from __future__ import annotations


class SliceError(Exception):
    """Slicing cannot happen or failed. The message is written for the person who submitted."""
