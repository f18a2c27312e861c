"""The durable job queue of on-arrival work, kept in the index database.

Jobs are inserted in the same transaction as the instance they are about, so
an acknowledged instance always has its jobs. A worker claims a job with a
conditional UPDATE (pending -> running) that only one claimant can win, on
SQLite and PostgreSQL alike. Jobs left running by a crash go back to pending
when the node starts; actions are written to be idempotent, so running one
twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, update

from storage.models import Instance, Job, now

if TYPE_CHECKING:
    from storage.index import Index

JOBS = Job.__table__
INS = Instance.__table__
MAX_BACKOFF = 300.0


def enqueue(conn: Connection, sop_instance_uid: str, actions: list[str], t: datetime) -> None:
    """Add one pending job per action; called inside the instance's own transaction."""
    if actions:
        conn.execute(insert(JOBS), [
            {"sop_instance_uid": sop_instance_uid, "action": a, "state": "pending", "attempts": 0,
             "not_before": t, "created_at": t, "updated_at": t} for a in actions])


@dataclass
class ClaimedJob:
    id: int
    sop_instance_uid: str
    action: str
    attempts: int


class JobQueue:
    def __init__(self, index: "Index") -> None:
        self.index = index
        self.engine = index.sessions.kw["bind"]

    def _write(self):  # type: ignore[no-untyped-def]
        return self.index.writing_connection()

    def claim(self) -> ClaimedJob | None:
        with self._write() as conn:
            t = now()
            row = conn.execute(select(JOBS.c.id, JOBS.c.sop_instance_uid, JOBS.c.action, JOBS.c.attempts)
                               .where(JOBS.c.state == "pending", JOBS.c.not_before <= t)
                               .order_by(JOBS.c.id).limit(1)).first()
            if row is None:
                return None
            won = conn.execute(update(JOBS).where(JOBS.c.id == row.id, JOBS.c.state == "pending")
                               .values(state="running", attempts=JOBS.c.attempts + 1, updated_at=t)).rowcount
            if not won:
                return None
            return ClaimedJob(row.id, row.sop_instance_uid, row.action, row.attempts + 1)

    def done(self, job: ClaimedJob) -> None:
        with self._write() as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == job.id)
                         .values(state="done", last_error=None, updated_at=now()))

    def failed(self, job: ClaimedJob, error: str, max_attempts: int, base_delay: float) -> str:
        """Back to pending after a backoff, or failed for good; returns the new state."""
        final = job.attempts >= max_attempts
        delay = min(base_delay * (2 ** (job.attempts - 1)), MAX_BACKOFF)
        t = now()
        with self._write() as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == job.id).values(
                state="failed" if final else "pending", last_error=error[:2000], updated_at=t,
                not_before=t + timedelta(seconds=0 if final else delay)))
        return "failed" if final else "pending"

    def requeue_running(self) -> int:
        """At start-up: what a crash left running is run again."""
        with self._write() as conn:
            return conn.execute(update(JOBS).where(JOBS.c.state == "running")
                                .values(state="pending", not_before=now(), updated_at=now())).rowcount

    def retry(self, job_id: int | None = None, all_failed: bool = False) -> int:
        q = update(JOBS).values(state="pending", attempts=0, not_before=now(), updated_at=now())
        if all_failed:
            q = q.where(JOBS.c.state == "failed")
        else:
            q = q.where(JOBS.c.id == job_id, JOBS.c.state.in_(("failed", "done")))
        with self._write() as conn:
            return conn.execute(q).rowcount

    def depth(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state)).all()
        out = {"pending": 0, "running": 0, "failed": 0, "done": 0}
        out.update({r[0]: r[1] for r in rows})
        return out

    def list(self, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = select(JOBS).order_by(JOBS.c.id.desc()).limit(limit)
        if state:
            q = q.where(JOBS.c.state == state)
        with self.engine.connect() as conn:
            return [{**r._mapping, "not_before": r.not_before.isoformat() + "Z",
                     "created_at": r.created_at.isoformat() + "Z", "updated_at": r.updated_at.isoformat() + "Z"}
                    for r in conn.execute(q)]

    def record_analysis(self, sop_instance_uid: str, figures: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(update(INS).where(INS.c.SOPInstanceUID == sop_instance_uid).values(
                analyzed_at=now(), pixel_data_offset=figures.get("pixel_data_offset"),
                pixel_data_size=figures.get("actual_size"), finding_errors=figures.get("errors"),
                finding_warnings=figures.get("warnings"), finding_codes=",".join(figures.get("codes", []))))
