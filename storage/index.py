"""Reading and writing index rows: the patient/study/series/instance hierarchy.

Writes run in one short transaction per stored object. Concurrent first
arrivals of the same study race on its unique key; the loser retries and
finds the winner's row (on SQLite, BEGIN IMMEDIATE already serialises them).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Iterator

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.db import writer
from storage.jobs import enqueue
from storage.models import LEVELS, Base, DerivedObject, Instance, Patient, Series, Study, dicom_keywords, now

WRITE_RETRIES = 5


@dataclass
class FileFacts:
    path: str
    file_size: int
    sha256: str
    calling_aet: str | None = None
    peer_address: str | None = None


class PutResult(Enum):
    INSERTED = "inserted"
    REPLACED = "replaced"
    EXISTS = "exists"


class Index:
    def __init__(self, sessions: sessionmaker[Session], serialize_writes: bool = False) -> None:
        self.sessions = sessions  # reads
        self.engine: Engine = sessions.kw["bind"]
        self.write_engine = writer(self.engine)
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        # SQLite has one writer at a time and makes the others wait in a
        # sleeping busy handler (1, 2, 5, 10 ... ms naps). Queueing our own
        # threads on a lock hands the write lock over at once instead.
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if serialize_writes else nullcontext())

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write_lock, self._write_sessions.begin() as s:
            yield s

    @contextmanager
    def writing_connection(self) -> Iterator[Connection]:
        with self._write_lock, self.write_engine.begin() as conn:
            yield conn

    # -- writes -----------------------------------------------------------

    def put_instance(self, values: dict[str, dict[str, Any]], facts: FileFacts, overwrite: bool = False,
                     actions: list[str] | None = None) -> tuple[PutResult, str | None]:
        """Insert the object's rows, or (overwrite) repoint an existing instance row.

        Returns what happened and the path the instance row points (EXISTS) or
        pointed (REPLACED) to; the caller removes a replaced file only after
        this commit, so a crash in between leaves an orphan, never a row
        without its file.
        """
        for attempt in range(WRITE_RETRIES):
            try:
                with self.writing_connection() as conn:
                    result = self._put(conn, values, facts, overwrite)
                    if result[0] is not PutResult.EXISTS:
                        enqueue(conn, values["IMAGE"]["SOPInstanceUID"], actions or [], now())
                    return result
            except IntegrityError:
                if attempt == WRITE_RETRIES - 1:
                    raise
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
        with self._writing() as s:
            level, row = _find_any(s, uid)
            if row is None:
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
        with self._writing() as s:
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
        with self.writing_connection() as conn:
            exists_ = conn.scalar(select(DER.c.id).where(DER.c.source_uid == source_uid, DER.c.kind == kind,
                                                         DER.c.uid == uid))
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

    def instance_path(self, sop_instance_uid: str) -> str | None:
        """The archive-relative path of an instance (one indexed lookup, for the workers)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(INS.c.path).where(INS.c.SOPInstanceUID == sop_instance_uid))

    def find_any(self, uid: str) -> tuple[str | None, dict[str, Any] | None]:
        """The level and flattened row (with its parents' keys) of a study, series or instance UID."""
        with self.sessions() as s:
            level, row = _find_any(s, uid)
            if row is None:
                return None, None
            return level, flatten(s, level, row)

    def list_level(self, level: str, filters: dict[str, str], limit: int | None = None,
                   problems: bool = False) -> Iterator[dict[str, Any]]:
        model = LEVELS[level]
        with self.sessions() as s:
            q = _joined(level)
            if problems:
                q = q.where((Instance.finding_errors > 0) | (Instance.finding_warnings > 0))
            for key, value in filters.items():
                col = _column(key)
                q = q.where(col.like(value.replace("*", "%").replace("?", "_")) if ("*" in value or "?" in value)
                            else col == value)
            q = q.order_by(model.id)
            if limit:
                q = q.limit(limit)
            for row in s.scalars(q):
                yield flatten(s, level, row)

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


PAT, STU, SER, INS = (m.__table__ for m in (Patient, Study, Series, Instance))
DER = DerivedObject.__table__


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
            patient_pk = conn.execute(insert(PAT).values(**{**pv, **ident}, created_at=t)).inserted_primary_key[0]
        study_pk = conn.execute(insert(STU).values(**stv, patient_pk=patient_pk, created_at=t)).inserted_primary_key[0]
    return conn.execute(insert(SER).values(**sv, study_pk=study_pk, created_at=t)).inserted_primary_key[0]


_PARENT = {"IMAGE": "SERIES", "SERIES": "STUDY", "STUDY": "PATIENT"}
_FK = {"IMAGE": "series", "SERIES": "study", "STUDY": "patient"}


def _column(keyword: str):  # type: ignore[no-untyped-def]
    for model in LEVELS.values():
        if keyword in model.__table__.columns and keyword in dicom_keywords(model):
            return model.__table__.columns[keyword]
    raise KeyError(f"{keyword} is not an indexed attribute")


def _joined(level: str):  # type: ignore[no-untyped-def]
    """SELECT of a level joined to its parents, so filters may name any parent's key."""
    q = select(LEVELS[level])
    lv = level
    while lv in _PARENT:
        child, parent = LEVELS[lv], LEVELS[_PARENT[lv]]
        q = q.join(parent, getattr(child, _FK[lv]))
        lv = _PARENT[lv]
    return q


def flatten(s: Session, level: str, row: Base) -> dict[str, Any]:
    """A row with its parents' DICOM keys, keyed by DICOM keyword."""
    out: dict[str, Any] = {}
    lv, obj = level, row
    while True:
        for kw in dicom_keywords(LEVELS[lv]):
            out.setdefault(kw, getattr(obj, kw))
        if lv not in _PARENT:
            break
        obj = getattr(obj, _FK[lv])
        lv = _PARENT[lv]
    if isinstance(row, Instance):
        out.update(path=row.path, file_size=row.file_size, sha256=row.sha256,
                   received_at=row.received_at.isoformat() + "Z", calling_aet=row.calling_aet,
                   peer_address=row.peer_address, pixel_data_offset=row.pixel_data_offset,
                   pixel_data_size=row.pixel_data_size, finding_errors=row.finding_errors,
                   finding_warnings=row.finding_warnings, finding_codes=row.finding_codes)
    elif isinstance(row, Series):
        out["NumberOfSeriesRelatedInstances"] = s.scalar(
            select(func.count(Instance.id)).where(Instance.series_pk == row.id))
    elif isinstance(row, Study):
        out["NumberOfStudyRelatedSeries"] = s.scalar(select(func.count(Series.id)).where(Series.study_pk == row.id))
        out["NumberOfStudyRelatedInstances"] = s.scalar(
            select(func.count(Instance.id)).join(Series).where(Series.study_pk == row.id))
    elif isinstance(row, Patient):
        out["NumberOfPatientRelatedStudies"] = s.scalar(
            select(func.count(Study.id)).where(Study.patient_pk == row.id))
    return out


def _find_any(s: Session, uid: str) -> tuple[str | None, Base | None]:
    for level, model, key in (("STUDY", Study, Study.StudyInstanceUID),
                              ("SERIES", Series, Series.SeriesInstanceUID),
                              ("IMAGE", Instance, Instance.SOPInstanceUID)):
        row = s.scalar(select(model).where(key == uid))
        if row is not None:
            return level, row
    return None, None


def _instances_under(level: str, pk: int):  # type: ignore[no-untyped-def]
    q = select(Instance.id)
    if level == "IMAGE":
        return q.where(Instance.id == pk)
    if level == "SERIES":
        return q.where(Instance.series_pk == pk)
    return q.join(Series, Instance.series_pk == Series.id).where(Series.study_pk == pk)


def _prune_empty(s: Session, series_pk: int) -> None:
    """Remove a series without instances, and its study and patient when they become empty."""
    if s.scalar(select(func.count(Instance.id)).where(Instance.series_pk == series_pk)):
        return
    series = s.get(Series, series_pk)
    if series is None:
        return
    study_pk = series.study_pk
    s.delete(series)
    s.flush()
    _prune_study(s, study_pk)


def _prune_study(s: Session, study_pk: int) -> None:
    if s.scalar(select(func.count(Series.id)).where(Series.study_pk == study_pk)):
        return
    study = s.get(Study, study_pk)
    if study is None:
        return
    patient_pk = study.patient_pk
    s.delete(study)
    s.flush()
    if not s.scalar(select(func.count(Study.id)).where(Study.patient_pk == patient_pk)):
        patient = s.get(Patient, patient_pk)
        if patient is not None:
            s.delete(patient)
