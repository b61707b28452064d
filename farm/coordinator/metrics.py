"""Prometheus metrics: what the farm holds, read from the database at scrape time, and tallies
(counters and histograms) kept in the database too, so that every coordinator process (PostgreSQL
mode, several hosts) adds to the same series and any one of them answers a scrape with the total.

The one exception is API latency, a property of each process: an in-memory histogram, summed over
the processes of one host through prometheus_client's multiprocess mode when `farm server
--workers N` runs several (PROMETHEUS_MULTIPROC_DIR). With several hosts, scrape each one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from farm.coordinator.models import Build, Job, Printer, utcnow
from farm.coordinator.ops_tables import MetricTally
from farm.core.states import BuildStage, JobState

# Seconds: a cache hit's second to a long print's day.
STAGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0)
STAGES = ("cad", "slicing", "upload", "print", "bed_clear")
STAGE_SECONDS = "printfarm_stage_duration_seconds"
CACHE = "printfarm_cache_requests_total"
LEASE_EXPIRIES = "printfarm_lease_expiries_total"
UPLOAD_BYTES = "printfarm_upload_bytes_total"
UPLOAD_SECONDS = "printfarm_upload_seconds_total"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUEST_SECONDS = Histogram(
    "printfarm_api_request_duration_seconds",
    "API request latency by route template and method",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,  # exposed by scrape(), alone or summed over processes
)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse(labels: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in labels.split(",")) if labels else {}


def _add(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add to tallies in one statement; a series missing so far starts from zero."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    stmt = insert(MetricTally).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name", "labels", "le"], set_={"value": MetricTally.value + stmt.excluded.value}
    )
    conn.execute(stmt)


def count(conn: Connection | OrmSession, name: str, amount: float = 1.0, **labels: str) -> None:
    """Add to a counter, in the caller's transaction."""
    conn = conn.connection() if isinstance(conn, OrmSession) else conn
    _add(conn, [{"name": name, "labels": _labels(labels), "le": "", "value": amount}])


def observe(conn: Connection | OrmSession, name: str, value: float, **labels: str) -> None:
    """One observation of a histogram with STAGE_BUCKETS, in the caller's transaction."""
    conn = conn.connection() if isinstance(conn, OrmSession) else conn
    key = _labels(labels)
    bounds = [*(repr(b) for b in STAGE_BUCKETS), "+Inf"]
    rows = [
        {"name": name, "labels": key, "le": le, "value": 1.0 if value <= float(le) else 0.0} for le in bounds
    ]
    rows += [
        {"name": name, "labels": key, "le": "sum", "value": value},
        {"name": name, "labels": key, "le": "count", "value": 1.0},
    ]
    _add(conn, rows)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)  # SQLite gives naive UTC back
    return max((end - start).total_seconds(), 0.0)


class FarmCollector(Collector):
    """Everything but API latency, from the database, at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        with Session(self.engine) as session:
            yield from self._states(session)
            yield from self._queue(session)
            yield from self._agents(session)
            yield from self._tallies(session)

    def _states(self, session: Session) -> Iterator[Any]:
        jobs = GaugeMetricFamily("printfarm_jobs", "Jobs by state", labels=["state"])
        have = dict(session.exec(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            jobs.add_metric([state.value], have.get(state, 0))
        yield jobs
        builds = GaugeMetricFamily("printfarm_builds", "Builds by stage", labels=["stage"])
        have = dict(session.exec(select(Build.stage, func.count()).group_by(Build.stage)).all())
        for stage in BuildStage:
            builds.add_metric([stage.value], have.get(stage, 0))
        yield builds
        # what `farm printers` shows, awaiting_clear included
        from farm.coordinator.api.views import printer_state  # lazy: cycle, api → db → observe → metrics

        printers = GaugeMetricFamily("printfarm_printers", "Printers by state", labels=["state"])
        counted: dict[str, int] = {}
        for printer in session.exec(select(Printer)).all():
            counted[printer_state(printer)] = counted.get(printer_state(printer), 0) + 1
        for shown in sorted(set(counted) | {"idle", "printing", "attention", "offline", "awaiting_clear"}):
            printers.add_metric([shown], counted.get(shown, 0))
        yield printers
        claims = CounterMetricFamily("printfarm_claims", "Jobs handed to printers (every claim)")
        claims.add_metric([], session.exec(select(func.coalesce(func.sum(Job.fence), 0))).one())
        yield claims

    def _queue(self, session: Session) -> Iterator[Any]:
        model = func.coalesce(Job.printer_model, literal("any"))
        rows = session.exec(
            select(model, func.count(), func.min(Job.created_at))
            .where(Job.state == JobState.READY)
            .group_by(model)
        ).all()
        depth = GaugeMetricFamily(
            "printfarm_queue_depth_jobs", "Ready jobs by the printer model they ask for", labels=["model"]
        )
        age = GaugeMetricFamily(
            "printfarm_queue_oldest_ready_age_seconds",
            "Age of the oldest ready job by the printer model it asks for",
            labels=["model"],
        )
        now = utcnow()
        for name, n, oldest in rows:
            depth.add_metric([name], n)
            age.add_metric([name], seconds_between(oldest, now) or 0.0)
        yield depth
        yield age

    def _agents(self, session: Session) -> Iterator[Any]:
        age = GaugeMetricFamily(
            "printfarm_agent_heartbeat_age_seconds",
            "Seconds since each printer's agent last called",
            labels=["printer", "model"],
        )
        now = utcnow()
        for name, model, seen in session.exec(
            select(Printer.name, Printer.model, Printer.last_seen).where(col(Printer.last_seen).is_not(None))
        ).all():
            age.add_metric([name, model], seconds_between(seen, now) or 0.0)
        yield age

    def _tallies(self, session: Session) -> Iterator[Any]:
        rows = session.exec(select(MetricTally)).all()
        counters: dict[str, CounterMetricFamily] = {}
        helps = {
            CACHE: ("Cache lookups by stage and result", ["stage", "result"]),
            LEASE_EXPIRIES: (
                "Leases that ran out (claim: an agent, cad/slice: a worker went silent)",
                ["kind"],
            ),
            UPLOAD_BYTES: ("Bytes sent to printers, as their agents report", ["printer"]),
            UPLOAD_SECONDS: ("Seconds spent sending files to printers, as their agents report", ["printer"]),
        }
        for name, (text, label_names) in helps.items():
            counters[name] = CounterMetricFamily(name.removesuffix("_total"), text, labels=label_names)
        buckets: dict[str, dict[str, float]] = {}
        sums: dict[str, float] = {}
        for row in rows:
            if row.name == STAGE_SECONDS:
                if row.le == "sum":
                    sums[row.labels] = row.value
                elif row.le != "count":
                    buckets.setdefault(row.labels, {})[row.le] = row.value
            elif row.name in counters:
                labels = _parse(row.labels)
                counters[row.name].add_metric([labels.get(k, "") for k in helps[row.name][1]], row.value)
        # A counter family with no sample yet is still announced: zero by its usual labels.
        if not any(r.name == CACHE for r in rows):
            for stage in ("cad", "slicing"):
                for result in ("hit", "miss"):
                    counters[CACHE].add_metric([stage, result], 0.0)
        expired = {_parse(r.labels).get("kind") for r in rows if r.name == LEASE_EXPIRIES}
        for kind in sorted({"claim", "cad", "slice"} - expired):
            counters[LEASE_EXPIRIES].add_metric([kind], 0.0)
        yield from counters.values()
        stages = HistogramMetricFamily(STAGE_SECONDS, "Time spent in each stage of a print", labels=["stage"])
        for stage in STAGES:
            key = _labels({"stage": stage})
            have = buckets.get(key, {})
            series = [(le, have.get(le, 0.0)) for le in [*(repr(b) for b in STAGE_BUCKETS), "+Inf"]]
            stages.add_metric([stage], series, sum_value=sums.get(key, 0.0))
        yield stages


class _Latency(Collector):
    def collect(self) -> Iterable[Any]:
        return REQUEST_SECONDS.collect()


def scrape(engine: Engine) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(engine))
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(_Latency())
    return generate_latest(registry)


def time_request(route: str, method: str, started: float) -> None:
    REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)
