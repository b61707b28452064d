"""POST /api/inspect: a design's entry points and their parameters, read from its source without
running it (what `farm inspect` prints), for the dashboard's submit form."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, UploadFile

from farm.api.deps import require
from farm.api.errors import AUTH, errors

MAX_SOURCE = 1 << 20  # a design's one .py file; a project is inspected with `farm inspect`
router = APIRouter(prefix="/api", tags=["builds"], responses=AUTH)


@router.post("/inspect", dependencies=[Depends(require("submitter"))], responses=errors(413, 415, 422))
async def inspect_source(file: UploadFile) -> dict:
    """The entry points of one build123d .py file with their parameters, defaults and bounds."""
    from workers.entry_points import list_entry_points

    if not (file.filename or "").endswith(".py"):
        raise HTTPException(415, "only a .py design can be inspected")
    data = await file.read(MAX_SOURCE + 1)
    if len(data) > MAX_SOURCE:
        raise HTTPException(413, f"a design's .py file is at most {MAX_SOURCE >> 10} KiB here")
    with tempfile.TemporaryDirectory(prefix="farm-inspect-") as folder:
        path = Path(folder) / "design.py"
        path.write_bytes(data)
        try:
            entries = list_entry_points(path)
        except SyntaxError as exc:
            raise HTTPException(422, f"line {exc.lineno}: SyntaxError: {exc.msg}") from None
        except UnicodeDecodeError:
            raise HTTPException(422, "the file is not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:  # a NUL byte; nesting too deep to parse
            raise HTTPException(422, f"the file cannot be read as Python: {exc}") from None
    return {"entries": entries}
