"""The JSON shapes the API returns (and `--json` prints): plain dicts with stable keys, in the
order of their models in farm/core/wire.py (JobView, SliceView, BuildView, PrinterView), which the
routes declare as their answers: a key added here and not there is dropped (tests/test_wire.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from farm.coordinator.models import Build, Job, Printer, Slice
from farm.core.states import READY_FOR_WORK
from farm.core.tags import split as split_tags


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_view(job: Job, sl: Slice | None = None, source: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "build": job.build_id,
        "owner": job.owner,
        "source": source,
        "copy": job.copy_index,
        "copies": job.copies,
        "state": job.state,
        "printer": job.printer,
        "printer_model": sl.printer_model if sl else job.printer_model,
        "material": job.material,
        "color": job.color,
        "priority": job.priority,
        "nozzle": job.nozzle,
        "tags": split_tags(job.tags),
        "pinned_printer": job.pinned_printer,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "retry_at": _ts(job.retry_at),
        "progress": job.progress,
        "remaining_s": job.remaining_s,
        "print_time_s": sl.print_time_s if sl else None,
        "filament_g": sl.filament_g if sl else None,
        "error": job.error,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
    }


def slice_view(sl: Slice) -> dict[str, Any]:
    return {
        "id": sl.id,
        "printer_model": sl.printer_model,
        "copies": sl.copies,
        "state": sl.state,
        "worker": sl.worker,  # pending with a worker: being sliced
        "gcode": sl.gcode_sha256,
        "print_time_s": sl.print_time_s,
        "filament_g": sl.filament_g,
        "filament_mm": sl.filament_mm,
        "seconds": sl.slice_seconds,
        "error": sl.error,
    }


def build_view(build: Build, jobs: list[Job], slices: list[Slice]) -> dict[str, Any]:
    by_id = {s.id: s for s in slices}
    return {
        "id": build.id,
        "owner": build.owner,
        "source": build.source_name,
        "kind": build.source_kind,
        "source_sha256": build.source_sha256,
        "project": build.project,
        "git": {"url": build.git_url, "ref": build.git_ref, "commit": build.git_commit}
        if build.git_url
        else None,
        # A registered project's part (printfarm.toml), built by a push hook: its revisions.
        "project_name": build.project_name,
        "part_name": build.part_name,
        "git_tag": build.git_tag,
        "use_cache": build.use_cache,
        "entry": build.entry,
        "params": json.loads(build.params_json),
        "preview_only": not jobs,  # built to be looked at: no jobs (submit's `preview`)
        "material": build.material,
        "quality": build.quality,
        "slicer_settings": json.loads(build.overrides_json or "{}"),
        "stage": build.stage,
        "cad_worker": build.cad_worker,
        "error": build.error,
        "stl": build.stl_sha256,
        "threemf": build.threemf_sha256,
        "step_requested": build.want_step,
        "step": build.step_sha256,
        "preview": build.preview_sha256,
        "preview_small": build.preview_small_sha256,
        "objects": build.objects,
        "skipped": json.loads(build.skipped_json) if build.skipped_json else [],
        "bbox": json.loads(build.bbox_json) if build.bbox_json else None,
        "volume_mm3": build.volume_mm3,
        "cad_seconds": build.cad_seconds,
        "slices": [slice_view(s) for s in slices],
        "jobs": [job_view(j, by_id.get(j.slice_id), build.source_name) for j in jobs],
        "created_at": _ts(build.created_at),
    }


def printer_state(p: Printer) -> str:
    """What the farm calls the printer's state: the printer's own, or `awaiting_clear` once idle."""
    if not p.bed_clear and p.state in READY_FOR_WORK:
        return "awaiting_clear"
    return p.state


def printer_view(p: Printer) -> dict[str, Any]:
    return {
        "name": p.name,
        "model": p.model,
        "protocol": p.protocol,
        "state": printer_state(p),
        "bed_clear": p.bed_clear,
        "auto_eject": p.auto_eject,
        "message": p.message,
        "job": p.job_id,
        "progress": p.progress,
        "material": p.material,
        "color": p.color,
        "nozzle": p.nozzle,
        "tags": split_tags(p.tags),
        "location": p.location,
        "power_group": p.power_group,
        "last_seen": _ts(p.last_seen),
        "snapshot": p.snapshot_id,  # its camera's latest still: GET /api/printers/NAME/snapshot?id=N
        "snapshot_wanted": p.snapshot_wanted is not None,
        "snapshot_error": p.snapshot_error,
    }
