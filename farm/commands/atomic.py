"""Writing what `-o` names all or nothing: into a folder beside it first, then renamed into place.

A rename within one file system replaces a file at once, so a reader sees the old file or the new
one, never half of one, and a command that fails (the slicer refuses, the disk fills, Ctrl-C) leaves
the old file as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A fresh temporary folder inside `folder` (made if missing), removed with whatever is left."""
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".farm-partial-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(moves: Mapping[Path, Path]) -> None:
    """Rename each staged file onto its destination (in the same folder's file system)."""
    for staged, final in moves.items():
        os.replace(staged, final)


def copy_into_place(files: Mapping[Path, Path], folder: Path) -> None:
    """Copy each source to its destination in `folder`: every copy is staged before any is
    renamed, so a copy that fails replaces none of the old files."""
    with staging(folder) as stage:
        moves = {}
        for i, (source, final) in enumerate(files.items()):
            staged = stage / f"{i}-{final.name}"
            shutil.copyfile(source, staged)
            moves[staged] = final
        publish(moves)
