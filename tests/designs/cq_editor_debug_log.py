# Imports from cq_editor; debug() draws a helper that is never printed; log() writes to the build log.
from build123d import Box, Cylinder, Pos
from cq_editor import debug, log, show_object

body = Box(30, 30, 10)
drill = Pos(0, 0, 0) * Cylinder(4, 12)
log("drilling the body")
debug(drill, name="drill")
show_object(body - drill, name="body", options={"color": "steelblue"})
