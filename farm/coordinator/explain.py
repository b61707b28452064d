"""`farm jobs explain ID`: why each printer would, or would not, take a job.

The dispatcher's claim query (farm/coordinator/dispatch.py `_candidates`) decides; this says the same rules in
words, one printer at a time. tests/test_dispatch.py checks that the two agree.
"""

from __future__ import annotations

import shlex
from datetime import UTC
from typing import Any

from sqlmodel import Session, col, select

from farm.coordinator.api.views import printer_state
from farm.coordinator.dispatch import heating_in_group, queue_for
from farm.coordinator.models import Job, Printer, Slice, utcnow
from farm.core import tags
from farm.core.printer_models import UnknownChoice, check_color, check_material, get_model
from farm.core.states import READY_FOR_WORK, JobState, SliceState

QUEUE_DEPTH = 200  # how far down a printer's queue we look for the job's place


def explain(
    session: Session,
    job: Job,
    starvation_s: float,
    *,
    heatup_s: float = 300.0,
    heating_per_group: int = 1,
) -> list[dict[str, Any]]:
    """One entry per printer: `eligible`, the `reasons` it is not, and the job's place in its queue."""
    slices = {
        s.printer_model: s
        for s in session.exec(select(Slice).where(Slice.build_id == job.build_id, Slice.copies == job.copies))
    }
    out = []
    for printer in session.exec(select(Printer).order_by(col(Printer.name))).all():
        reasons = _reasons(job, printer, slices)
        if job.state == JobState.READY and heating_in_group(session, printer, heatup_s) >= heating_per_group:
            reasons.append(
                f"power group {printer.power_group} already has {heating_per_group} printer(s) heating up"
            )
        entry: dict[str, Any] = {"printer": printer.name, "eligible": not reasons, "reasons": reasons}
        if not reasons and job.state == JobState.READY:
            queue = queue_for(session, printer, starvation_s, limit=QUEUE_DEPTH)
            entry["position"] = queue.index(job.id) + 1 if job.id in queue else None
        out.append(entry)
    return out


def _reasons(job: Job, printer: Printer, slices: dict[str, Slice]) -> list[str]:
    name = printer.name
    reasons = []
    if job.printer == name and job.state in (JobState.CLAIMED, JobState.UPLOADING, JobState.PRINTING):
        return []  # it has the job
    state = printer_state(printer)
    if state == "awaiting_clear":
        reasons.append(f"its bed is not cleared yet: `farm printers clear {name}` once it is empty")
    elif state not in READY_FOR_WORK:
        reasons.append(f"it is {state}" + (f": {printer.message}" if printer.message else ""))
    if printer.job_id is not None and printer.job_id != job.id:
        reasons.append(f"it holds job {printer.job_id}")
    if job.pinned_printer and job.pinned_printer != name:
        reasons.append(f"the job is pinned to {job.pinned_printer}")
    if job.printer_model and job.printer_model != printer.model:
        reasons.append(f"the job is for the {job.printer_model}; this is the {printer.model}")
    else:
        sl = slices.get(printer.model)
        if sl is None:
            reasons.append(f"the job was not sliced for {printer.model}")
        elif sl.state == SliceState.FAILED:
            reasons.append(f"slicing for {printer.model} failed: {sl.error}")
        elif sl.state != SliceState.DONE:
            reasons.append(f"G-code for {printer.model} is not ready yet")
    if (job.material or "").upper() != (printer.material or "").upper():
        reasons.append(
            f"it has {printer.material} loaded, the job needs {job.material}" + _material_fix(job, printer)
        )
    if job.color and job.color.lower() != (printer.color or "").lower():
        reasons.append(
            f"it has {printer.color or 'no colour set'}, the job needs {job.color}" + _color_fix(job, name)
        )
    if job.nozzle is not None and job.nozzle != printer.nozzle:
        reasons.append(f"it has a {printer.nozzle:g} mm nozzle, the job needs {job.nozzle:g} mm")
    if lacking := tags.missing(job.tags, printer.tags):
        reasons.append(f"it lacks the tag(s) {', '.join(lacking)}" + _tags_fix(printer, lacking))
    if f",{name}," in (job.failed_on or ""):
        reasons.append("the job failed on it before; retries go to another printer")
    retry_at = job.retry_at and (job.retry_at if job.retry_at.tzinfo else job.retry_at.replace(tzinfo=UTC))
    if retry_at is not None and retry_at > utcnow():  # SQLite hands datetimes back naive
        until = retry_at.isoformat(timespec="seconds")
        reasons.append(f"the job waits out its retry back-off until {until}")
    return reasons


# Each suggests only a command `farm printers set` accepts (the same checks as api/operate.py):
# a job from before those checks may want what no printer can be set to; then it says so instead.


def _material_fix(job: Job, printer: Printer) -> str:
    model = get_model(printer.model)
    try:
        material = check_material(job.material or "", model)
    except UnknownChoice:
        where = f"the {model.name}" if model else "this printer"
        return f", which {where} cannot load: no setting fixes this (`farm cancel {job.id}`)"
    return f": `farm printers set {shlex.quote(printer.name)} --material {material}`"


def _color_fix(job: Job, name: str) -> str:
    try:
        color = check_color(job.color or "")
    except UnknownChoice:
        return ", not a colour a printer can be set to"
    return f": `farm printers set {shlex.quote(name)} --color {shlex.quote(color or '')}`"


def _tags_fix(printer: Printer, lacking: list[str]) -> str:
    wanted = [*tags.split(printer.tags), *lacking]
    if len(wanted) > tags.MAX_PRINTER_TAGS:
        return f", and a printer has at most {tags.MAX_PRINTER_TAGS} tags"
    # `--tag` replaces a printer's tags: the command names the ones it keeps as well.
    return ": `farm printers set " + shlex.quote(printer.name) + "".join(f" --tag {t}" for t in wanted) + "`"
