"""Workers announce themselves, so that `farm status` can say who builds and how builds are walled in."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlmodel import col, select

from farm.coordinator.api.deps import SessionDep, require
from farm.coordinator.api.errors import AUTH, errors
from farm.coordinator.models import Worker, utcnow
from farm.core.wire import Hello, WorkerView

router = APIRouter(prefix="/api/workers", tags=["workers"], responses=AUTH)


def worker_view(worker: Worker) -> dict:
    return {
        "name": worker.name,
        "queues": [q for q in worker.queues.split(",") if q],
        "sandbox": worker.sandbox,
        "layers": [layer for layer in worker.layers.split(",") if layer],
        "seen_at": worker.seen_at,
    }


@router.post("", dependencies=[Depends(require("worker"))], response_model=WorkerView, responses=errors(422))
def hello(body: Hello, session: SessionDep) -> dict:
    worker = session.get(Worker, body.name) or Worker(name=body.name)
    worker.queues = ",".join(body.queues)
    worker.sandbox = body.sandbox
    worker.layers = ",".join(name[:40] for name in body.layers)
    worker.seen_at = utcnow()
    session.add(worker)
    session.commit()
    return worker_view(worker)


def recent_workers(session: SessionDep, limit: int = 50) -> list[dict]:
    rows = session.exec(select(Worker).order_by(col(Worker.seen_at).desc()).limit(limit)).all()
    return [worker_view(w) for w in rows]
