# A script that exports files beside itself, as many end: it builds on the farm too (the build
# writes into its own throwaway copy of the folder).
from pathlib import Path

from build123d import Box, export_stl

part = Box(10, 10, 10)
export_stl(part, "part-export.stl")
(Path(__file__).parent / "notes").mkdir()
(Path(__file__).parent / "notes" / "size.txt").write_text("10 mm")
show(part)  # noqa: F821
