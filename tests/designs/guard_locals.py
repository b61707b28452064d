# CQ-editor style: show only when a viewer is there, with a name and a 0..255 colour.
from build123d import Cylinder

knob = Cylinder(10, 8)

if "show_object" in locals():
    show_object(knob, name="knob", options={"color": (255, 0, 0), "alpha": 0.8})  # noqa: F821
