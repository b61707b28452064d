# The same guard on globals(), with ocp_vscode's show and the variable's own name.
from build123d import Box

plate = Box(40, 20, 2)

if "show" in globals():
    show(plate)  # noqa: F821
