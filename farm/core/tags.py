"""Tags: a job names the tags a printer must have (`--tag enclosed`); a printer has a few.

Both are stored as one canonical string, ",a,b," (sorted, lower case), so the claim query can
match with plain SQL: a job fits when its string is one of the printer's tag subsets.
"""

from __future__ import annotations

import itertools
import re

MAX_PRINTER_TAGS = 8  # 2**8 subsets keep the claim query's IN list small
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


class BadTag(ValueError):
    pass


def canonical(tags: list[str] | None) -> str:
    clean = sorted({t.strip().lower() for t in tags or [] if t.strip()})
    for tag in clean:
        if not _TAG_RE.match(tag):
            raise BadTag(f"bad tag {tag!r}: use letters, digits, '-', '_' or '.', up to 32 characters")
    return f",{','.join(clean)}," if clean else ""


def split(stored: str | None) -> list[str]:
    return [t for t in (stored or "").split(",") if t]


def subsets(stored: str) -> list[str]:
    """Every canonical tag string a job may carry and still fit a printer with these tags."""
    tags = split(stored)
    out = [""]
    for n in range(1, len(tags) + 1):
        out += [f",{','.join(combo)}," for combo in itertools.combinations(tags, n)]
    return out


def missing(job_tags: str, printer_tags: str) -> list[str]:
    return [t for t in split(job_tags) if t not in split(printer_tags)]
