"""File names that came from users, made safe before they name anything on a disk or a printer.

A submitted name ends up in printer paths (`job<N>-<name>`), worker temp folders and download
headers, and printers' HTTP servers and httpx both collapse `..` segments: a name is reduced to
one plain file name here, at submit, and checked again (`check_segment`) where a driver builds a
path from it. Stdlib only: the agent imports this on a Raspberry Pi.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 96  # bytes-safe (ASCII) length of a user's name; `job<N>-` comes on top, FAT allows 255
# a name on a printer: the farm's prefix (with a retry's attempt, see printer_file_name) and a safe name
MAX_SEGMENT = MAX_NAME + len("job2147483647-a2147483647-")
MAX_SUFFIX = 12
DEFAULT_STEM = "upload"
# Suffixes of more than one part that decide a file's type: keep them whole.
COMPOUND_SUFFIXES = (".gcode.3mf",)
_ODD = re.compile(r"[^A-Za-z0-9._+-]+")
_SAFE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
_ENTRY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


class UnsafeName(ValueError):
    """A name that must not name a file; the message says why."""


def _ascii(text: str) -> str:
    """Accents dropped (é -> e), every other odd character to `_`, control characters removed."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")  # NUL, controls, format
    return _ODD.sub("_", text)


def _split_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    for compound in COMPOUND_SUFFIXES:
        if lower.endswith(compound):
            return name[: -len(compound)], name[-len(compound) :]
    dot = name.rfind(".")
    return (name, "") if dot < 0 else (name[:dot], name[dot:])


def safe_name(raw: str | None, default_stem: str = DEFAULT_STEM, max_len: int = MAX_NAME) -> str:
    """One plain ASCII file name from whatever a user sent: its last path segment (either slash),
    odd characters replaced, no leading dots or dashes, the type-deciding suffix kept, bounded.

    safe_name(safe_name(x)) == safe_name(x), which is what `check_segment` relies on."""
    base = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = _split_suffix(_ascii(base))
    suffix = "." + suffix.strip("._-")[:MAX_SUFFIX].strip("._-") if suffix.strip("._-") else ""
    stem = stem.lstrip(".-_").rstrip(".")[: max_len - len(suffix)].rstrip(".")
    return (stem or default_stem) + suffix


def printer_file_name(job_id: int, failed_attempts: int, name: str | None) -> str:
    """What job `job_id` is called on a printer: `job<N>-<name>`, and `job<N>-a<k>-<name>` for its
    k-th attempt after a failure. A retry must not land on an earlier attempt's file, which a
    printer may still hold, or print: a Bambu printer lets an upload overwrite the file it is
    printing, and that print dies. The name stays the same for the whole of one attempt, so an
    agent restarted mid-print still finds its job on the printer."""
    stem = safe_name(name) if name else f"job{job_id}.gcode"
    return f"job{job_id}-{stem}" if failed_attempts <= 0 else f"job{job_id}-a{failed_attempts + 1}-{stem}"


def check_segment(segment: str) -> str:
    """`segment` if it is a name `safe_name` would keep as it is, else UnsafeName."""
    if not _SAFE.fullmatch(segment) or safe_name(segment, max_len=MAX_SEGMENT) != segment:
        raise UnsafeName(f"{segment!r} is not a plain file name")
    return segment


def check_entry_path(path: str) -> str:
    """A project's entry file (`parts/gear.py`): relative, plain segments, no `..`; else UnsafeName."""
    parts = path.split("/")
    if len(path) > 255 or not all(_ENTRY_PART.fullmatch(p) and p.strip(".") for p in parts):
        raise UnsafeName(
            f"entry_file {path!r} must be a relative path inside the project: folders and a .py file "
            "named with letters, digits, '.', '_', '+' or '-' (no '..', no leading '/' or '-')"
        )
    return path
