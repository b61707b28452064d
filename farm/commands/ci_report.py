"""What `farm ci build` reports: JUnit XML for any CI, and a Markdown step summary for GitHub's.

Stdlib only. One testcase per part and parameter set; the failure's message is the design's error.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# GitHub refuses a step's summary larger than 1 MiB ("$GITHUB_STEP_SUMMARY upload aborted, supports
# content up to a size of 1024k") and then shows none of it: stay well below, whatever came before.
SUMMARY_LIMIT = 1 << 20
SUMMARY_MARGIN = 64 << 10
# XML 1.0 allows no control characters but tab and newlines: a design's error may hold any.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_ERROR_CHARS = 4000  # of each error in the summary (the JUnit file has it whole)
USER_KINDS = {"syntax", "entry", "params", "exception", "empty", "mesh", "source"}


@dataclass
class Outcome:
    """One build of one part with one parameter set."""

    part: str
    file: str
    artifact: str | None
    params: dict[str, Any]
    seconds: float = 0.0
    error: str | None = None
    kind: str | None = None  # workers.cad_runner.CadError.kind, or "source"
    cached: bool = False
    size: tuple[float, float, float] | None = None
    volume: float | None = None
    triangles: int | None = None
    objects: int | None = None
    warnings: list[str] = field(default_factory=list)  # what the build said, such as skipped sketches
    preview: bytes | None = field(default=None, repr=False)  # 256 x 256 PNG
    preview_small: bytes | None = field(default=None, repr=False)  # 96 x 96 PNG

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        """`tray[pocket_diameter=14, pockets=3]`: the part, and its parameters when it has any."""
        if not self.params:
            return self.part
        return f"{self.part}[{', '.join(f'{k}={json.dumps(v)}' for k, v in self.params.items())}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "file": self.file,
            "artifact": self.artifact,
            "params": self.params,
            "ok": self.ok,
            "error": self.error,
            "kind": self.kind,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "size": list(self.size) if self.size else None,
            "volume": self.volume,
            "triangles": self.triangles,
            "objects": self.objects,
            "warnings": self.warnings,
        }


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(outcomes: list[Outcome], suite: str = "printfarm") -> bytes:
    """A JUnit XML document: <testsuites> with one <testsuite>, a <testcase> per build.

    A design that fails (its code, its parameters, a mesh that would not print) is a <failure>; a
    build stopped by a limit or a crash is an <error>, as JUnit tells a failed assertion from a
    test that could not run."""
    failures = sum(1 for o in outcomes if not o.ok and o.kind in USER_KINDS)
    errors = sum(1 for o in outcomes if not o.ok) - failures
    total = f"{sum(o.seconds for o in outcomes):.3f}"
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": str(errors), "time": total}
    root = ET.Element("testsuites", {"name": suite, **counts})
    testsuite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": suite,
            **counts,
            "skipped": "0",
            "timestamp": datetime.now(UTC).replace(microsecond=0, tzinfo=None).isoformat(),
            "hostname": _xml_text(socket.gethostname()),
        },
    )
    for o in outcomes:
        case = ET.SubElement(
            testsuite,
            "testcase",
            {
                "name": _xml_text(o.label),
                "classname": _xml_text(f"{suite}.{o.part}"),
                "file": _xml_text(o.file),
                "time": f"{o.seconds:.3f}",
            },
        )
        if o.error is not None:
            tag = "failure" if o.kind in USER_KINDS else "error"
            first = o.error.strip().splitlines()[0] if o.error.strip() else o.error
            problem = ET.SubElement(case, tag, {"message": _xml_text(first), "type": o.kind or "error"})
            problem.text = _xml_text(o.error)
        elif o.cached:
            ET.SubElement(case, "system-out").text = "from the CAD cache"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _md(text: str) -> str:
    """Text for a Markdown table cell: no pipes or line breaks, no HTML."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return escaped.replace("\n", " ")


def _image(o: Outcome, png: bytes | None, width: int) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" alt="{_md(o.part)}">'


def markdown_summary(outcomes: list[Outcome], budget: int) -> str:
    """The step summary: a line of totals, a table with each build's preview, then each error.

    Previews are embedded as data: URIs (a summary cannot reference files). Within `budget`
    bytes: the 256 px previews if all fit, else the 96 px ones while they fit (the rest: said so)."""
    passed = sum(1 for o in outcomes if o.ok)
    head = [
        f"## printfarm: {passed} of {len(outcomes)} builds passed"
        + ("" if passed == len(outcomes) else " ❌"),
        "",
        "| preview | part | parameters | result | size (mm) | volume (mm³) | time |",
        "|---|---|---|---|---|---|---|",
    ]
    failures = []
    for o in outcomes:
        if not o.ok:
            error = o.error or ""
            error = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "\n[...]"
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", error)), default=0))
            failures += [f"### ❌ {_md(o.label)} ({_md(o.file)})", "", fence, error, fence, ""]
    footer_parts = [*failures]
    rows: list[tuple[Outcome, str]] = []
    for o in outcomes:
        size = " x ".join(f"{v:g}" for v in o.size) if o.size else ""
        volume = f"{o.volume:.6g}" if o.volume is not None else ""
        result = ("✅ cached" if o.cached else "✅ built") if o.ok else f"❌ {_md(o.kind or 'failed')}"
        params = _md(", ".join(f"{k}={json.dumps(v)}" for k, v in o.params.items()))
        cells = f"| {_md(o.part)} | {params} | {result} | {size} | {volume} | {o.seconds:.1f} s |"
        rows.append((o, cells))
    text_size = len("\n".join(head + [c for _, c in rows] + footer_parts).encode()) + 200 * len(rows)
    left = budget - text_size
    # The 256 px previews if all fit, else the 96 px ones while they fit: one size for the table.
    large = [_image(o, o.preview, 128) for o, _ in rows]
    images = large if sum(map(len, large)) <= left else [_image(o, o.preview_small, 96) for o, _ in rows]
    lines = list(head)
    dropped = 0
    for (o, cells), image in zip(rows, images, strict=True):
        if len(image) > left:
            dropped += o.preview is not None
            image = ""
        left -= len(image)
        lines.append(f"| {image} {cells}")
    lines.append("")
    if dropped:
        lines += [f"{dropped} preview(s) left out: a step summary holds at most 1 MiB.", ""]
    return "\n".join(lines + footer_parts) + "\n"


def append_step_summary(path: Path, outcomes: list[Outcome]) -> None:
    """Append the summary to GitHub's (or Gitea's) GITHUB_STEP_SUMMARY file, within what is left
    of the step's 1 MiB."""
    used = path.stat().st_size if path.exists() else 0
    budget = max(0, SUMMARY_LIMIT - SUMMARY_MARGIN - used)
    with path.open("a", encoding="utf-8") as f:
        f.write(markdown_summary(outcomes, budget))
