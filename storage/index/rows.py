"""Reading and writing index rows: the patient/study/series/instance hierarchy.

Writes run in short transactions: one per stored object, or one for the
objects that arrived together (put_many, the archive's group commit), each
object in a savepoint of its own. Concurrent first arrivals of the same study
race on its unique key; the loser retries and finds the winner's row (on
SQLite, BEGIN IMMEDIATE already serialises them).

The archive's size is a counter (models.Counter) changed in the same
transactions as the instance rows, as the last statement of each, so that
the one row every writer updates is locked for the shortest time and always
last. Just before it, the studies received into get their arrival time, once
each and in key order: row locks taken in one order by every writer (the
DIMSE and the DICOMweb process on PostgreSQL) cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Select,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicomnode.storage.index.db import Database
from dicomnode.storage.index.models import (
    Counter,
    DerivedObject,
    Instance,
    Patient,
    Series,
    Study,
    dicom_keywords,
    now,
    table,
)
from dicomnode.storage.index.prepared import Cursor, Inserts, Prepared
from dicomnode.storage.jobs import JOBS, pending

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


# what one object's rows did: the result, the path of the instance row before, bytes the archive grew
# by, the study it went into (None: a duplicate, nothing written)
_Done = tuple[PutResult, str | None, int, int | None]


@dataclass
class Removed:
    """What a delete took out of the index: the files to remove now, and their size."""

    paths: list[str]
    bytes: int


@dataclass(frozen=True)
class Candidate:
    """A study recycling may remove, as seen when it was chosen."""

    StudyInstanceUID: str
    last_received_at: datetime | None


class Index:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine
        self.sessions = db.sessions
        self._prepared: _Writes | None = None

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
        The statements are prepared.py's: this runs once per received object.
        """
        for attempt in range(WRITE_RETRIES):
            try:
                with self.db.writing_connection() as conn:
                    cur = Cursor(conn)
                    w = self._writes(conn)
                    done = [self._put_saved(cur, w, p) for p in puts]
                    ok = [d for d in done if not isinstance(d, Exception)]
                    t = now()
                    for pk in sorted({d[3] for d in ok if d[3] is not None}):  # in key order: the docstring
                        cur.run(w.received, {"pk_": pk, "t_": t})
                    grown = sum(d[2] for d in ok)
                    if grown:  # the last statement (the docstring)
                        cur.run(w.count, {"name_": "archive_bytes", "delta_": grown})
                    cur.close()
                    return [d if isinstance(d, Exception) else d[:2] for d in done]
            except IntegrityError:  # raised by the commit itself (a deferred check): all again
                if attempt == WRITE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _writes(self, conn: Connection) -> _Writes:
        if self._prepared is None:
            self._prepared = _Writes(conn.dialect)
        return self._prepared

    def _put_saved(self, cur: Cursor, w: _Writes, p: Put) -> _Done | Exception:
        for attempt in range(WRITE_RETRIES):
            cur.raw("SAVEPOINT put")
            try:
                result = self._put(cur, w, p.values, p.facts, p.overwrite)
                if result[0] is not PutResult.EXISTS and p.actions:
                    rows = [w.jobs.row(j) for j in pending(p.values["IMAGE"]["SOPInstanceUID"], p.actions, now())]
                    cur.run_many(rows[0][0], [r for _stmt, r in rows])
                cur.raw("RELEASE SAVEPOINT put")
                return result
            except IntegrityError as exc:
                # another node inserted the same study/series first (PostgreSQL, several nodes):
                # its row is committed, so the next attempt finds it
                cur.raw("ROLLBACK TO SAVEPOINT put")
                cur.raw("RELEASE SAVEPOINT put")
                if attempt == WRITE_RETRIES - 1:
                    return exc
            except SQLAlchemyError as exc:
                cur.raw("ROLLBACK TO SAVEPOINT put")
                cur.raw("RELEASE SAVEPOINT put")
                return exc
        raise AssertionError("unreachable")

    def _put(self, cur: Cursor, w: _Writes, values: dict[str, dict[str, Any]], facts: FileFacts,
             overwrite: bool) -> _Done:
        """The common case (a further image of a known series) costs two indexed SELECTs and one
        INSERT (and, for the batch, the study's arrival time and the size counter: put_many)."""
        t = now()
        iv = values["IMAGE"]
        old = cur.run(w.find_instance, {"uid_": iv["SOPInstanceUID"]}).fetchone()
        if old is not None and not overwrite:
            return PutResult.EXISTS, old[1], 0, None
        series_pk, study_pk = _series_pk(cur, w, values, t)
        row = {**iv, "path": facts.path, "file_size": facts.file_size, "sha256": facts.sha256,
               "received_at": t, "calling_aet": facts.calling_aet, "peer_address": facts.peer_address,
               "series_pk": series_pk}
        if old is None:
            cur.run(*w.instances.row(row))
            return PutResult.INSERTED, None, facts.file_size, study_pk
        old_id, old_path, old_series, old_size = old
        conn = cur.connection
        cleared = {k: None for k in dicom_keywords(Instance) if k not in row}
        conn.execute(update(INS).where(INS.c.id == old_id).values(**cleared, **row))
        if old_series != series_pk:
            _prune_empty(Session(bind=conn), old_series)
        return PutResult.REPLACED, old_path, facts.file_size - old_size, study_pk

    def delete(self, uid: str) -> Removed | None:
        """Remove a study, series or instance (and parents left empty); None when it is not indexed."""
        with self.db.writing() as s:
            level, row = _find_any(s, uid)
            if level is None or row is None:
                return None
            return _delete_under(s, level, row.id)

    def recycle(self, seen: Candidate) -> Removed | None:
        """Remove a study chosen for recycling, if it is still as it was seen: there, unprotected,
        and nothing received into it since (another process may have stored or protected it in
        between). Counted in the recycled_* counters, in the same transaction."""
        with self.db.writing() as s:
            same = Study.last_received_at.is_(None) if seen.last_received_at is None \
                else Study.last_received_at == seen.last_received_at
            pk = s.scalar(select(Study.id).where(Study.StudyInstanceUID == seen.StudyInstanceUID,
                                                 Study.protected == false(), same))
            if pk is None:
                return None
            removed = _delete_under(s, "STUDY", pk)
            _count(s, "recycled_studies", 1)
            _count(s, "recycled_bytes", removed.bytes)
            return removed

    def protect(self, uid: str, protected: bool = True) -> str | None:
        """Mark the study of a study, series or instance UID as kept from recycling (or no longer);
        its Study Instance UID, or None when the UID is not indexed."""
        with self.db.writing() as s:
            level, row = _find_any(s, uid)
            if row is None:
                return None
            study = row if isinstance(row, Study) else row.study if isinstance(row, Series) else row.series.study
            study.protected = protected
            return study.StudyInstanceUID

    def drop_instances(self, paths: list[str]) -> int:
        """Drop the rows of instances whose files are gone (check --repair)."""
        n = size = 0
        with self.db.writing() as s:
            for p in paths:
                inst = s.scalar(select(Instance).where(Instance.path == p))
                if inst is None:
                    continue
                sid = inst.series_pk
                size += inst.file_size
                s.delete(inst)
                s.flush()
                _prune_empty(s, sid)
                n += 1
            _count(s, "archive_bytes", -size)
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
        known: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(paths), 500):  # bound the IN list (SQLite's variable limit)
                known.update(conn.scalars(select(INS.c.path).where(INS.c.path.in_(paths[i:i + 500]))))
        return known

    def stored_files(self, sop_instance_uids: list[str]) -> dict[str, tuple[str, str, str]]:
        """SOP Instance UID -> (SOP Class UID, path, sha256) of those that are indexed."""
        out: dict[str, tuple[str, str, str]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(sop_instance_uids), 500):  # bound the IN list (SQLite's variable limit)
                rows = conn.execute(select(INS.c.SOPInstanceUID, INS.c.SOPClassUID, INS.c.path, INS.c.sha256)
                                    .where(INS.c.SOPInstanceUID.in_(sop_instance_uids[i:i + 500])))
                out.update((r[0], (r[1], r[2], r[3])) for r in rows)
        return out

    def instance_path(self, sop_instance_uid: str) -> str | None:
        """The archive-relative path of an instance (one indexed lookup, for the workers)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(INS.c.path).where(INS.c.SOPInstanceUID == sop_instance_uid))

    def stats(self) -> dict[str, int]:
        with self.sessions() as s:
            counted = self.counters()
            return {
                "patients": s.scalar(select(func.count(Patient.id))) or 0,
                "studies": s.scalar(select(func.count(Study.id))) or 0,
                "series": s.scalar(select(func.count(Series.id))) or 0,
                "instances": s.scalar(select(func.count(Instance.id))) or 0,
                "bytes": s.scalar(select(func.coalesce(func.sum(Instance.file_size), 0))) or 0,
                "protected": s.scalar(select(func.count(Study.id)).where(Study.protected == true())) or 0,
                "recycled": counted.get("recycled_studies", 0),
                "recycled_bytes": counted.get("recycled_bytes", 0),
            }

    # -- quotas (storage/archive/quota.py) ----------------------------------

    def counters(self) -> dict[str, int]:
        """The running totals (models.COUNTERS) by name."""
        with self.engine.connect() as conn:
            return {r.name: r.value for r in conn.execute(select(CNT.c.name, CNT.c.value))}

    def bytes_counted(self) -> tuple[int, int]:
        """(the size counter, the sum of the instances' file sizes): equal unless something went
        around the index's writes. One statement, so one snapshot, while stores go on."""
        counter = select(CNT.c.value).where(CNT.c.name == "archive_bytes").scalar_subquery()
        total = select(func.coalesce(func.sum(INS.c.file_size), 0)).scalar_subquery()
        with self.engine.connect() as conn:
            row = conn.execute(select(counter, total)).one()
            return int(row[0] or 0), int(row[1] or 0)

    def count_bytes_again(self) -> None:
        """Set the size counter to the sum of the file sizes (check --repair)."""
        total = select(func.coalesce(func.sum(INS.c.file_size), 0)).scalar_subquery()
        with self.db.writing_connection() as conn:
            conn.execute(update(CNT).where(CNT.c.name == "archive_bytes").values(value=total))

    def footprint(self, study_uid: str, patient: tuple[str, str]) -> tuple[int, bool, bool]:
        """(the archive's size, whether the study is indexed, whether the patient (PatientID,
        Issuer) is): what admitting an object asks, in one statement."""
        size = select(CNT.c.value).where(CNT.c.name == "archive_bytes").scalar_subquery()
        study = exists().where(STU.c.StudyInstanceUID == study_uid)
        known = exists().where(PAT.c.PatientID == patient[0], PAT.c.IssuerOfPatientID == patient[1])
        with self.engine.connect() as conn:
            row = conn.execute(select(size, study, known)).one()
            return int(row[0] or 0), bool(row[1]), bool(row[2])

    def count(self, level: str) -> int:
        """Studies or patients in the index (a count of one narrow index; asked only for a new one)."""
        t = STU if level == "STUDY" else PAT
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(t)) or 0)

    def oldest_studies(self, avoid: set[str], limit: int = 8) -> list[Candidate]:
        """Unprotected studies, least recently received first, none of `avoid` (the studies
        being received into)."""
        with self.engine.connect() as conn:
            q = (select(STU.c.StudyInstanceUID, STU.c.last_received_at).where(STU.c.protected == false())
                 .order_by(STU.c.last_received_at, STU.c.id).limit(limit + len(avoid)))
            return [Candidate(r[0], r[1]) for r in conn.execute(q) if r[0] not in avoid][:limit]

    def oldest_patient(self, avoid: set[str], limit: int = 8) -> list[Candidate]:
        """Every study of the least recently received patient none of whose studies is protected
        or in `avoid`; [] when there is none. Recycling for max_patients removes whole patients."""
        last = func.max(STU.c.last_received_at)
        guarded = func.sum(case((STU.c.protected == true(), 1), else_=0))
        q = (select(STU.c.patient_pk).group_by(STU.c.patient_pk).having(guarded == 0)
             .order_by(last, STU.c.patient_pk).limit(limit + len(avoid)))
        with self.engine.connect() as conn:
            for patient_pk in conn.scalars(q):
                studies = [Candidate(r[0], r[1]) for r in conn.execute(
                    select(STU.c.StudyInstanceUID, STU.c.last_received_at).where(STU.c.patient_pk == patient_pk))]
                if not any(c.StudyInstanceUID in avoid for c in studies):
                    return studies
        return []

    def all_files(self) -> Iterator[tuple[str, str, str]]:
        """(path, sha256, SOPInstanceUID) of every instance, streamed."""
        with self.sessions() as s:
            for row in s.execute(select(Instance.path, Instance.sha256, Instance.SOPInstanceUID)
                                 .execution_options(yield_per=1000)):
                yield row[0], row[1], row[2]


PAT, STU, SER, INS = (table(m) for m in (Patient, Study, Series, Instance))
DER = table(DerivedObject)
CNT = table(Counter)


def _count(conn: Connection | Session, name: str, delta: int) -> None:
    """Add to a running total; the last statement of its transaction (see the module's docstring)."""
    if delta:
        conn.execute(update(CNT).where(CNT.c.name == name).values(value=CNT.c.value + delta))


def _delete_under(s: Session, level: str, pk: int) -> Removed:
    """Delete the instance rows under a study, series or instance row and the parents left empty."""
    q = _instances_under(level, pk)
    rows = s.execute(q.with_only_columns(Instance.id, Instance.path, Instance.series_pk, Instance.file_size)).all()
    s.execute(delete(Instance).where(Instance.id.in_([r.id for r in rows])))
    for sid in {r.series_pk for r in rows}:
        _prune_empty(s, sid)
    if level == "STUDY":
        _prune_study(s, pk)
    removed = Removed([r.path for r in rows], sum(r.file_size for r in rows))
    _count(s, "archive_bytes", -removed.bytes)
    return removed


def _series_pk(cur: Cursor, w: _Writes, values: dict[str, dict[str, Any]], t: datetime) -> tuple[int, int]:
    """The series row's id and its study's, creating them (and the patient) on first sight."""
    sv, stv, pv = values["SERIES"], values["STUDY"], values["PATIENT"]
    known = cur.run(w.find_series, {"uid_": sv["SeriesInstanceUID"]}).fetchone()
    if known is not None:
        return int(known[0]), int(known[1])
    study_pk = cur.scalar(w.find_study, {"uid_": stv["StudyInstanceUID"]})
    if study_pk is None:
        ident = {"PatientID": pv.get("PatientID") or "", "IssuerOfPatientID": pv.get("IssuerOfPatientID") or ""}
        patient_pk = cur.scalar(w.find_patient, {"id_": ident["PatientID"], "issuer_": ident["IssuerOfPatientID"]})
        if patient_pk is None:
            patient_pk = cur.scalar(*w.patients.row({**pv, **ident, "created_at": t}))
        study_pk = cur.scalar(*w.studies.row({**stv, "patient_pk": patient_pk, "created_at": t,
                                              "last_received_at": t}))
    series_pk = cur.scalar(*w.series.row({**sv, "study_pk": study_pk, "created_at": t}))
    return int(series_pk), int(study_pk)


class _Writes:
    """put_many's statements, prepared for one dialect (prepared.py)."""

    def __init__(self, dialect: Dialect) -> None:
        self.find_instance = Prepared(select(INS.c.id, INS.c.path, INS.c.series_pk, INS.c.file_size)
                                      .where(INS.c.SOPInstanceUID == bindparam("uid_")), dialect)
        self.find_series = Prepared(select(SER.c.id, SER.c.study_pk)
                                    .where(SER.c.SeriesInstanceUID == bindparam("uid_")), dialect)
        self.find_study = Prepared(select(STU.c.id).where(STU.c.StudyInstanceUID == bindparam("uid_")), dialect)
        self.find_patient = Prepared(select(PAT.c.id).where(PAT.c.PatientID == bindparam("id_"),
                                                             PAT.c.IssuerOfPatientID == bindparam("issuer_")), dialect)
        self.patients, self.studies, self.series = (Inserts(t, dialect, returning=True) for t in (PAT, STU, SER))
        self.instances = Inserts(INS, dialect, returning=False)
        self.jobs = Inserts(JOBS, dialect, returning=False)
        self.received = Prepared(update(STU).where(STU.c.id == bindparam("pk_"))
                                 .values(last_received_at=bindparam("t_", type_=STU.c.last_received_at.type)),
                                 dialect)
        self.count = Prepared(update(CNT).where(CNT.c.name == bindparam("name_"))
                              .values(value=CNT.c.value + bindparam("delta_", type_=CNT.c.value.type)), dialect)


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
