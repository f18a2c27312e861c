"""What a probe or an operator asks of the archive: is it ready to store, and what does it hold.

Shared by the HTTP side (/readyz, and /metrics' values read at scrape time:
node/web/health.py) and `dicomnode status`, so both say the same. Every
figure costs an indexed read or a count, never a walk over the files: a
scrape every few seconds must not compete with the receiver.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.storage.archive import Archive
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.index.models import Instance, Patient, Series, Study

MB = 1024 * 1024


@dataclass
class Snapshot:
    """The archive as it stands; `problems` is empty when it is ready to store."""

    free_bytes: int
    min_free_bytes: int
    index_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # patients, studies, series, instances, bytes
    jobs: dict[str, int] = field(default_factory=dict)  # queue depth by state
    last_received_at: datetime | None = None  # naive UTC, as in the index

    @property
    def problems(self) -> list[str]:
        found = [f"index unreachable: {self.index_error}"] if self.index_error else []
        if self.free_bytes < self.min_free_bytes:
            found.append(f"free disk {self.free_bytes // MB} MB is below min_free_mb {self.min_free_bytes // MB}")
        return found


def free_bytes(layout: Layout) -> int:
    """Free space where objects arrive (tmp/, the folder the ingest path checks against min_free_mb;
    before there is one, on the file system it will be made on)."""
    return shutil.disk_usage(next(p for p in (layout.tmp, *layout.tmp.parents) if p.is_dir())).free


def index_error(arc: Archive) -> str | None:
    """Why the index cannot be read (one round trip), or None."""
    try:
        with arc.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return _reason(exc)
    return None


def readiness(arc: Archive, min_free_bytes: int) -> Snapshot:
    """Only what /readyz needs: the index answers, the disk has room."""
    return Snapshot(free_bytes(arc.layout), min_free_bytes, index_error(arc))


def snapshot(arc: Archive, min_free_bytes: int) -> Snapshot:
    """Readiness, and (when the index answers) what it holds and the job queue's depth."""
    snap = readiness(arc, min_free_bytes)
    if snap.index_error:
        return snap
    try:
        with arc.db.engine.connect() as conn:
            counted = conn.execute(select(
                select(func.count(Patient.id)).scalar_subquery(), select(func.count(Study.id)).scalar_subquery(),
                select(func.count(Series.id)).scalar_subquery(), select(func.count(Instance.id)).scalar_subquery(),
                select(func.max(Instance.received_at)).scalar_subquery())).one()
        snap.counts = dict(zip(("patients", "studies", "series", "instances"), map(int, counted[:4])))
        snap.counts["bytes"] = arc.index.counters().get("archive_bytes", 0)  # a running total: one row
        snap.last_received_at = counted[4]
        snap.jobs = arc.jobs.depth()
    except SQLAlchemyError as exc:  # went away between the two reads
        snap.index_error = _reason(exc)
    return snap


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def arrivals_and_findings(arc: Archive, since: datetime) -> dict[str, object]:
    """What arrived since `since` (naive UTC) and what the analysis reports found over the whole
    archive: instances with errors or warnings, and how often each finding code occurs (the codes
    are kept comma-joined per instance; only analysed instances with findings are read)."""
    with arc.db.engine.connect() as conn:
        received = conn.execute(select(func.count(Instance.id)).where(Instance.received_at >= since)).scalar_one()
        analysed, errors, warnings = conn.execute(select(
            func.count(Instance.analyzed_at), func.count(Instance.id).filter(Instance.finding_errors > 0),
            func.count(Instance.id).filter(Instance.finding_warnings > 0))).one()
        codes: dict[str, int] = {}
        for (joined,) in conn.execute(select(Instance.finding_codes).where(Instance.finding_codes != "")):
            for code in (joined or "").split(","):
                if code:
                    codes[code] = codes.get(code, 0) + 1
    return {"received": int(received), "since": since.isoformat() + "Z", "analysed": int(analysed),
            "with_errors": int(errors), "with_warnings": int(warnings),
            "codes": dict(sorted(codes.items(), key=lambda kv: -kv[1]))}


def start_of_day(t: datetime) -> datetime:
    return t - timedelta(hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond)
