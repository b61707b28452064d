"""Printers report filament colour as RGBA hex (Bambu: "FF6A13FF"); jobs ask for a name ("orange").

The nearest of a few plain names is what the farm matches on, so a job for "red" finds a printer
whose AMS holds Bambu's "Red" (C12E1F) as well as a pure FF0000.
"""

from __future__ import annotations

NAMED: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "red": (200, 30, 30),
    "orange": (255, 120, 20),
    "yellow": (245, 215, 30),
    "green": (30, 160, 60),
    "blue": (20, 80, 200),
    "purple": (120, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 70, 30),
    "beige": (225, 200, 160),
}


def color_name(rgba: str | None) -> str | None:
    """'C12E1FFF' -> 'red'; None for anything that is not 6 or 8 hex digits, or fully transparent."""
    text = (rgba or "").strip().lstrip("#")
    if len(text) not in (6, 8):
        return None
    try:
        r, g, b = (int(text[i : i + 2], 16) for i in (0, 2, 4))
        alpha = int(text[6:8], 16) if len(text) == 8 else 255
    except ValueError:
        return None
    if alpha == 0:
        return None  # an empty slot reports 00000000
    return min(NAMED, key=lambda n: sum((a - b) ** 2 for a, b in zip(NAMED[n], (r, g, b), strict=True)))
