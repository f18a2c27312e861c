"""The durable job queue of on-arrival work, kept in the index database.

Jobs are inserted in the same transaction as the instance they are about, so
an acknowledged instance always has its jobs. A worker claims a job with a
conditional UPDATE (pending -> running) that only one claimant can win, on
SQLite and PostgreSQL alike, and holds it with a lease: the node's name
(`owner`) and a time (`lease_until`) that a heartbeat keeps pushing forward
while the node lives. Several nodes can share one index: a node takes back
to pending only the running jobs that are its own from before it started, or
whose lease ran out (a dead node's), never a live node's; and a node whose
lease was taken over no longer records its outcome over the new claimant's.
Actions are written to be idempotent, so running one twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from dicomnode.storage.index.db import Database
from dicomnode.storage.index.models import Instance, Job, now, table

JOBS = table(Job)
INS = table(Instance)
MAX_BACKOFF = 300.0


def pending(sop_instance_uid: str, actions: list[str], t: datetime) -> list[dict[str, Any]]:
    """The rows of one pending job per action, inserted inside the instance's own transaction."""
    return [{"sop_instance_uid": sop_instance_uid, "action": a, "state": "pending", "attempts": 0,
             "not_before": t, "created_at": t, "updated_at": t} for a in actions]


@dataclass
class ClaimedJob:
    id: int
    sop_instance_uid: str
    action: str
    attempts: int


@dataclass
class Outcome:
    """What running a claimed job came to: done (error None) or a failure to retry or give up on."""

    job: ClaimedJob
    error: str | None = None
    permanent: bool = False
    max_attempts: int = 1
    base_delay: float = 0.0
    figures: dict[str, Any] | None = None
    note: str | None = None  # done, but the operator should know (e.g. no picture: pixel data undecodable)

    @property
    def state_after_failure(self) -> str:
        return "failed" if self.permanent or self.job.attempts >= self.max_attempts else "pending"

    @property
    def retry_delay(self) -> float:
        if self.state_after_failure == "failed":
            return 0.0
        return min(self.base_delay * (2 ** (self.job.attempts - 1)), MAX_BACKOFF)


class JobQueue:
    def __init__(self, db: Database, owner: str = "", lease: float = 60.0) -> None:
        self.db = db
        self.engine = db.engine
        self.owner = owner  # this node's name in the leases it takes
        self.lease = lease  # seconds a claim holds without a heartbeat

    def claim(self, limit: int = 1) -> list[ClaimedJob]:
        """Take up to `limit` due jobs (pending -> running) in one transaction.

        UPDATE ... RETURNING hands each job to exactly one claimant, also when
        several worker processes share a PostgreSQL index.
        """
        with self.db.writing_connection() as conn:
            t = now()
            ids = list(conn.scalars(select(JOBS.c.id).where(JOBS.c.state == "pending", JOBS.c.not_before <= t)
                                    .order_by(JOBS.c.id).limit(limit)))
            if not ids:
                return []
            rows = conn.execute(update(JOBS).where(JOBS.c.id.in_(ids), JOBS.c.state == "pending")
                                .values(state="running", attempts=JOBS.c.attempts + 1, updated_at=t,
                                        owner=self.owner, lease_until=t + timedelta(seconds=self.lease))
                                .returning(JOBS.c.id, JOBS.c.sop_instance_uid, JOBS.c.action, JOBS.c.attempts)).all()
        return sorted((ClaimedJob(r.id, r.sop_instance_uid, r.action, r.attempts) for r in rows), key=lambda j: j.id)

    def finish(self, outcomes: list[Outcome]) -> None:
        """Record the outcomes of a batch (and analysis figures) in one transaction."""
        t = now()
        with self.db.writing_connection() as conn:
            for o in outcomes:
                if o.error is None:
                    values: dict[str, Any] = {"state": "done", "last_error": o.note and o.note[:2000], "updated_at": t}
                else:
                    values = {"state": o.state_after_failure, "last_error": o.error[:2000], "updated_at": t,
                              "not_before": t + timedelta(seconds=o.retry_delay)}
                # only while the claim is still ours: a job taken over (our lease ran out) is the new
                # claimant's to record; ours is dropped, and the job simply runs again there
                mine = conn.execute(update(JOBS).where(JOBS.c.id == o.job.id, JOBS.c.state == "running",
                                                       JOBS.c.owner == self.owner)
                                    .values(**values, lease_until=None)).rowcount
                if mine and o.figures is not None:
                    _record_analysis(conn, o.job.sop_instance_uid, o.figures, t)

    def heartbeat(self) -> int:
        """Push the leases of this node's running jobs forward; the number still held."""
        t = now()
        with self.db.writing_connection() as conn:
            return conn.execute(update(JOBS).where(JOBS.c.state == "running", JOBS.c.owner == self.owner)
                                .values(lease_until=t + timedelta(seconds=self.lease))).rowcount

    def requeue(self, own: bool = False) -> int:
        """Running jobs whose lease ran out (a dead node's) back to pending; with `own` (at start-up)
        also this node's own from its last run, which a crash cut short. A live node's, never."""
        t = now()
        stale = or_(JOBS.c.lease_until.is_(None), JOBS.c.lease_until < t)
        if own:
            stale = or_(stale, JOBS.c.owner == self.owner)
        with self.db.writing_connection() as conn:
            return conn.execute(update(JOBS).where(JOBS.c.state == "running", stale)
                                .values(state="pending", not_before=t, updated_at=t, owner=None,
                                        lease_until=None)).rowcount

    def retry(self, job_id: int | None = None, all_failed: bool = False) -> int:
        q = update(JOBS).values(state="pending", attempts=0, not_before=now(), updated_at=now())
        if all_failed:
            q = q.where(JOBS.c.state == "failed")
        else:
            q = q.where(JOBS.c.id == job_id, JOBS.c.state.in_(("failed", "done")))
        with self.db.writing_connection() as conn:
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


def _record_analysis(conn: Connection, sop_instance_uid: str, figures: dict[str, Any], t: datetime) -> None:
    conn.execute(update(INS).where(INS.c.SOPInstanceUID == sop_instance_uid).values(
        analyzed_at=t, pixel_data_offset=figures.get("pixel_data_offset"),
        pixel_data_size=figures.get("actual_size"), finding_errors=figures.get("errors"),
        finding_warnings=figures.get("warnings"), finding_codes=",".join(figures.get("codes", []))))
