"""Reading and writing index rows: the patient/study/series/instance hierarchy.

Writes run in short transactions: one per stored object, or one for the
objects that arrived together (put_many, the archive's group commit), each
object in a savepoint of its own. Concurrent first arrivals of the same study
race on its unique key; the loser retries and finds the winner's row (on
SQLite, BEGIN IMMEDIATE already serialises them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Insert, Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicomnode.storage.index.db import Database
from dicomnode.storage.index.models import DerivedObject, Instance, Patient, Series, Study, dicom_keywords, now, table
from dicomnode.storage.jobs import enqueue

WRITE_RETRIES = 5


@dataclass
class FileFacts:
    path: str
    file_size: int
    sha256: str
    calling_aet: str | None = None
    peer_address: str | None = None


@dataclass
class Put:
    """One object's rows to write: its index values and file, the duplicate rule, its jobs."""

    values: dict[str, dict[str, Any]]
    facts: FileFacts
    overwrite: bool = False
    actions: list[str] = field(default_factory=list)


class PutResult(Enum):
    INSERTED = "inserted"
    REPLACED = "replaced"
    EXISTS = "exists"


class Index:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine
        self.sessions = db.sessions

    # -- writes -----------------------------------------------------------

    def put_instance(self, values: dict[str, dict[str, Any]], facts: FileFacts, overwrite: bool = False,
                     actions: list[str] | None = None) -> tuple[PutResult, str | None]:
        """Insert the object's rows, or (overwrite) repoint an existing instance row.

        Returns what happened and the path the instance row points (EXISTS) or
        pointed (REPLACED) to; the caller removes a replaced file only after
        this commit, so a crash in between leaves an orphan, never a row
        without its file.
        """
        got = self.put_many([Put(values, facts, overwrite, actions or [])])[0]
        if isinstance(got, Exception):
            raise got
        return got

    def put_many(self, puts: list[Put]) -> list[tuple[PutResult, str | None] | Exception]:
        """Several objects' rows in one transaction (one commit, one fsync): what put_instance
        does for each, in order, as if one after the other.

        Each object's statements run in a savepoint of their own, so one that
        fails (a value the database refuses) fails alone; its exception takes
        its place in the list. A failed commit raises for all of them.
        """
        for attempt in range(WRITE_RETRIES):
            try:
                with self.db.writing_connection() as conn:
                    return [self._put_saved(conn, p) for p in puts]
            except IntegrityError:  # raised by the commit itself (a deferred check): all again
                if attempt == WRITE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _put_saved(self, conn: Connection, p: Put) -> tuple[PutResult, str | None] | Exception:
        for attempt in range(WRITE_RETRIES):
            saved = conn.begin_nested()
            try:
                result = self._put(conn, p.values, p.facts, p.overwrite)
                if result[0] is not PutResult.EXISTS:
                    enqueue(conn, p.values["IMAGE"]["SOPInstanceUID"], p.actions, now())
                saved.commit()
                return result
            except IntegrityError as exc:
                # another node inserted the same study/series first (PostgreSQL, several nodes):
                # its row is committed, so the next attempt finds it
                saved.rollback()
                if attempt == WRITE_RETRIES - 1:
                    return exc
            except SQLAlchemyError as exc:
                saved.rollback()
                return exc
        raise AssertionError("unreachable")

    def _put(self, conn: Connection, values: dict[str, dict[str, Any]], facts: FileFacts,
             overwrite: bool) -> tuple[PutResult, str | None]:
        """Core statements, not ORM objects: this runs once per received object.

        The common case (a further image of a known series) costs two indexed
        SELECTs and one INSERT.
        """
        t = now()
        iv = values["IMAGE"]
        old = conn.execute(select(INS.c.id, INS.c.path, INS.c.series_pk)
                           .where(INS.c.SOPInstanceUID == iv["SOPInstanceUID"])).first()
        if old is not None and not overwrite:
            return PutResult.EXISTS, old.path
        series_pk = _series_pk(conn, values, t)
        row = {**iv, "path": facts.path, "file_size": facts.file_size, "sha256": facts.sha256,
               "received_at": t, "calling_aet": facts.calling_aet, "peer_address": facts.peer_address,
               "series_pk": series_pk}
        if old is None:
            conn.execute(insert(INS).values(**row))
            return PutResult.INSERTED, None
        cleared = {k: None for k in dicom_keywords(Instance) if k not in row}
        conn.execute(update(INS).where(INS.c.id == old.id).values(**cleared, **row))
        if old.series_pk != series_pk:
            _prune_empty(Session(bind=conn), old.series_pk)
        return PutResult.REPLACED, old.path

    def delete(self, uid: str) -> list[str]:
        """Remove a study, series or instance (and parents left empty); return its files' paths."""
        with self.db.writing() as s:
            level, row = _find_any(s, uid)
            if level is None or row is None:
                return []
            q = _instances_under(level, row.id)
            paths = list(s.scalars(q.with_only_columns(Instance.path)))
            ids = list(s.scalars(q.with_only_columns(Instance.id)))
            series_ids = set(s.scalars(q.with_only_columns(Instance.series_pk)))
            s.execute(delete(Instance).where(Instance.id.in_(ids)))
            for sid in series_ids:
                _prune_empty(s, sid)
            if level == "STUDY":
                _prune_study(s, row.id)
            return paths

    def drop_instances(self, paths: list[str]) -> int:
        """Drop the rows of instances whose files are gone (check --repair)."""
        n = 0
        with self.db.writing() as s:
            for p in paths:
                inst = s.scalar(select(Instance).where(Instance.path == p))
                if inst is None:
                    continue
                sid = inst.series_pk
                s.delete(inst)
                s.flush()
                _prune_empty(s, sid)
                n += 1
        return n

    def record_derived(self, source_uid: str, kind: str, uid: str | None = None, path: str | None = None) -> None:
        """Link something made from an instance to it (idempotent: a job may run twice)."""
        with self.db.writing_connection() as conn:
            # a derived instance is known by its UID, a derived file by its path (a PNG and the
            # series thumbnail are both kind png)
            same = DER.c.uid == uid if uid is not None else DER.c.path == path
            exists_ = conn.scalar(select(DER.c.id).where(DER.c.source_uid == source_uid, DER.c.kind == kind, same))
            if exists_ is None:
                conn.execute(insert(DER).values(source_uid=source_uid, kind=kind, uid=uid, path=path, created_at=now()))

    # -- reads ------------------------------------------------------------

    def derived(self, uid: str) -> dict[str, list[dict[str, Any]]]:
        """What was made from an instance, and what an instance was made from."""
        with self.engine.connect() as conn:
            made = [dict(r._mapping) for r in conn.execute(
                select(DER.c.kind, DER.c.uid, DER.c.path, DER.c.created_at).where(DER.c.source_uid == uid))]
            src = [dict(r._mapping) for r in conn.execute(
                select(DER.c.kind, DER.c.source_uid, DER.c.created_at).where(DER.c.uid == uid))]
        return {"derived": made, "derived_from": src}

    def known_paths(self, paths: list[str]) -> set[str]:
        """Which of these archive-relative object paths the index lists."""
        with self.engine.connect() as conn:
            return set(conn.scalars(select(INS.c.path).where(INS.c.path.in_(paths))))

    def instance_path(self, sop_instance_uid: str) -> str | None:
        """The archive-relative path of an instance (one indexed lookup, for the workers)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(INS.c.path).where(INS.c.SOPInstanceUID == sop_instance_uid))

    def stats(self) -> dict[str, int]:
        with self.sessions() as s:
            return {
                "patients": s.scalar(select(func.count(Patient.id))) or 0,
                "studies": s.scalar(select(func.count(Study.id))) or 0,
                "series": s.scalar(select(func.count(Series.id))) or 0,
                "instances": s.scalar(select(func.count(Instance.id))) or 0,
                "bytes": s.scalar(select(func.coalesce(func.sum(Instance.file_size), 0))) or 0,
            }

    def all_files(self) -> Iterator[tuple[str, str, str]]:
        """(path, sha256, SOPInstanceUID) of every instance, streamed."""
        with self.sessions() as s:
            for row in s.execute(select(Instance.path, Instance.sha256, Instance.SOPInstanceUID)
                                 .execution_options(yield_per=1000)):
                yield row[0], row[1], row[2]


PAT, STU, SER, INS = (table(m) for m in (Patient, Study, Series, Instance))
DER = table(DerivedObject)


def _series_pk(conn: Connection, values: dict[str, dict[str, Any]], t: datetime) -> int:
    """The series row's id, creating it (and its study and patient) on first sight."""
    sv, stv, pv = values["SERIES"], values["STUDY"], values["PATIENT"]
    pk = conn.scalar(select(SER.c.id).where(SER.c.SeriesInstanceUID == sv["SeriesInstanceUID"]))
    if pk is not None:
        return pk
    study_pk = conn.scalar(select(STU.c.id).where(STU.c.StudyInstanceUID == stv["StudyInstanceUID"]))
    if study_pk is None:
        ident = {"PatientID": pv.get("PatientID") or "", "IssuerOfPatientID": pv.get("IssuerOfPatientID") or ""}
        patient_pk = conn.scalar(select(PAT.c.id).where(PAT.c.PatientID == ident["PatientID"],
                                                        PAT.c.IssuerOfPatientID == ident["IssuerOfPatientID"]))
        if patient_pk is None:
            patient_pk = _new_id(conn, insert(PAT).values(**{**pv, **ident}, created_at=t))
        study_pk = _new_id(conn, insert(STU).values(**stv, patient_pk=patient_pk, created_at=t))
    return _new_id(conn, insert(SER).values(**sv, study_pk=study_pk, created_at=t))


def _new_id(conn: Connection, stmt: Insert) -> int:
    key = conn.execute(stmt).inserted_primary_key
    assert key is not None
    return int(key[0])


def _find_any(s: Session, uid: str) -> tuple[str, Study | Series | Instance] | tuple[None, None]:
    for level, model, key in (("STUDY", Study, Study.StudyInstanceUID),
                              ("SERIES", Series, Series.SeriesInstanceUID),
                              ("IMAGE", Instance, Instance.SOPInstanceUID)):
        row: Study | Series | Instance | None = s.scalar(select(model).where(key == uid))  # type: ignore[assignment]
        if row is not None:
            return level, row
    return None, None


def _instances_under(level: str, pk: int) -> Select[int]:
    q = select(Instance.id)
    if level == "IMAGE":
        return q.where(Instance.id == pk)
    if level == "SERIES":
        return q.where(Instance.series_pk == pk)
    return q.join(Series, Instance.series_pk == Series.id).where(Series.study_pk == pk)


# Upwards from a series: each level, the attribute naming its parent, and its children's key to it.
_UPWARDS: tuple[tuple[type[Series | Study | Patient], str | None, Any], ...] = (
    (Series, "study_pk", Instance.series_pk),
    (Study, "patient_pk", Series.study_pk),
    (Patient, None, Study.patient_pk),
)


def _prune_empty(s: Session, series_pk: int) -> None:
    """Remove a series without instances, and its study and patient when they become empty."""
    _prune(s, 0, series_pk)


def _prune_study(s: Session, study_pk: int) -> None:
    """Remove a study without series, and its patient when it becomes empty."""
    _prune(s, 1, study_pk)


def _prune(s: Session, start: int, pk: int) -> None:
    for model, parent, children in _UPWARDS[start:]:
        if s.scalar(select(func.count()).where(children == pk)):
            return
        row = s.get(model, pk)
        if row is None:
            return
        up = getattr(row, parent) if parent else None
        s.delete(row)
        s.flush()
        if up is None:
            return
        pk = up
