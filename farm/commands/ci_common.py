"""What `farm ci build` and `farm ci submit` share: the --manifest option and how it is read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from farm.commands.common import die
from farm.core.manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest, parse_manifest

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help=f"The manifest ({MANIFEST_NAME}) or the folder holding it (default: the current folder); "
        "a folder without one has every @artifact of its scripts built, none printed.",
        show_default=False,
    ),
]


def read_manifest(path: Path | None) -> tuple[Path, Manifest]:
    """(the checkout's folder, its manifest) for --manifest: a folder, or a manifest file by any name."""
    path = path or Path(".")
    try:
        if path.is_dir():
            return path, load_manifest(path)
        if not path.is_file():
            die(f"{path} does not exist: give --manifest the manifest file or its folder", 2)
        folder = path.parent
        if path.name == MANIFEST_NAME:
            return folder, load_manifest(folder)
        try:
            manifest = parse_manifest(path.read_text(encoding="utf-8"), source=str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: cannot be read: {exc}") from None
        for part in manifest.parts:
            script = (folder / part.file).resolve()
            if not script.is_relative_to(folder.resolve()) or not script.is_file():
                raise ManifestError(f"{path}: part '{part.name}': {part.file} is not a script in {folder}")
        return folder, manifest
    except ManifestError as exc:
        die(str(exc), 2)
