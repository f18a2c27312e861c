"""The index: one table per level of the DICOM information model.

Attributes that hold a DICOM attribute are named by its DICOM keyword
(``PatientID``, ``StudyDate``), so C-FIND, ``ls --json`` and the header share
one vocabulary and a query key maps to a column without a translation table.
Values are kept as their DICOM string form (dates as YYYYMMDD, names with
``^``), which makes DICOM range and wildcard matching plain SQL comparisons.
Bookkeeping columns are snake_case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import cast

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Table, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


def now() -> datetime:
    """Naive UTC, as stored in the index."""
    return datetime.now(UTC).replace(tzinfo=None)


Str = String()


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    PatientID: Mapped[str] = mapped_column(Str, default="")
    IssuerOfPatientID: Mapped[str] = mapped_column(Str, default="")
    PatientName: Mapped[str | None] = mapped_column(Str)
    PatientBirthDate: Mapped[str | None] = mapped_column(Str)
    PatientBirthTime: Mapped[str | None] = mapped_column(Str)
    PatientSex: Mapped[str | None] = mapped_column(Str)
    EthnicGroup: Mapped[str | None] = mapped_column(Str)
    PatientComments: Mapped[str | None] = mapped_column(Str)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")
    __table_args__ = (
        UniqueConstraint("PatientID", "IssuerOfPatientID", name="uq_patient_identity"),
        Index("ix_patients_name", "PatientName"),
    )


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    StudyInstanceUID: Mapped[str] = mapped_column(Str, unique=True)
    StudyDate: Mapped[str | None] = mapped_column(Str, index=True)
    StudyTime: Mapped[str | None] = mapped_column(Str)
    AccessionNumber: Mapped[str | None] = mapped_column(Str, index=True)
    StudyID: Mapped[str | None] = mapped_column(Str)
    ReferringPhysicianName: Mapped[str | None] = mapped_column(Str)
    StudyDescription: Mapped[str | None] = mapped_column(Str)
    PatientAge: Mapped[str | None] = mapped_column(Str)
    PatientSize: Mapped[str | None] = mapped_column(Str)
    PatientWeight: Mapped[str | None] = mapped_column(Str)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # quotas (storage/archive/quota.py): recycling takes the least recently received study that
    # is not protected; the index on both makes "the oldest candidate" one b-tree step
    last_received_at: Mapped[datetime | None] = mapped_column(DateTime)
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    __table_args__ = (Index("ix_studies_recycle", "protected", "last_received_at"),)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    SeriesInstanceUID: Mapped[str] = mapped_column(Str, unique=True)
    Modality: Mapped[str | None] = mapped_column(Str, index=True)
    SeriesNumber: Mapped[str | None] = mapped_column(Str)
    SeriesDescription: Mapped[str | None] = mapped_column(Str)
    SeriesDate: Mapped[str | None] = mapped_column(Str)
    SeriesTime: Mapped[str | None] = mapped_column(Str)
    BodyPartExamined: Mapped[str | None] = mapped_column(Str)
    ProtocolName: Mapped[str | None] = mapped_column(Str)
    Laterality: Mapped[str | None] = mapped_column(Str)
    PerformedProcedureStepStartDate: Mapped[str | None] = mapped_column(Str)
    PerformedProcedureStepStartTime: Mapped[str | None] = mapped_column(Str)
    Manufacturer: Mapped[str | None] = mapped_column(Str)
    StationName: Mapped[str | None] = mapped_column(Str)
    InstitutionName: Mapped[str | None] = mapped_column(Str)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    SOPInstanceUID: Mapped[str] = mapped_column(Str, unique=True)
    SOPClassUID: Mapped[str] = mapped_column(Str, index=True)
    InstanceNumber: Mapped[str | None] = mapped_column(Str)
    ContentDate: Mapped[str | None] = mapped_column(Str)
    ContentTime: Mapped[str | None] = mapped_column(Str)
    AcquisitionDateTime: Mapped[str | None] = mapped_column(Str)
    ImageType: Mapped[str | None] = mapped_column(Str)
    SpecificCharacterSet: Mapped[str | None] = mapped_column(Str)
    TransferSyntaxUID: Mapped[str] = mapped_column(Str)
    NumberOfFrames: Mapped[int | None] = mapped_column(Integer)
    Rows: Mapped[int | None] = mapped_column(Integer)
    Columns: Mapped[int | None] = mapped_column(Integer)
    BitsAllocated: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Str, unique=True)
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(Str)
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    calling_aet: Mapped[str | None] = mapped_column(Str)
    peer_address: Mapped[str | None] = mapped_column(Str)
    # key figures of the analysis report (the report itself lies beside the file)
    analyzed_at: Mapped[datetime | None] = mapped_column(DateTime)
    pixel_data_offset: Mapped[int | None] = mapped_column(BigInteger)
    pixel_data_size: Mapped[int | None] = mapped_column(BigInteger)
    finding_errors: Mapped[int | None] = mapped_column(Integer)
    finding_warnings: Mapped[int | None] = mapped_column(Integer)
    finding_codes: Mapped[str | None] = mapped_column(Str)

    series: Mapped[Series] = relationship(back_populates="instances")


class Counter(Base):
    """A running total kept in the transactions that change it: reading it costs one row, where
    summing the instances' sizes would read them all (the size quota asks at every store)."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(Str, primary_key=True)  # see COUNTERS
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# archive_bytes: sum of the instances' file_size; recycled_*: studies removed by recycling, their bytes
COUNTERS = ("archive_bytes", "recycled_studies", "recycled_bytes")


class Job(Base):
    """One on-arrival action for one instance; written in the instance's own transaction."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(Str)  # no index: one b-tree less per stored object
    action: Mapped[str] = mapped_column(Str)
    state: Mapped[str] = mapped_column(Str, default="pending")  # pending | running | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Str)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # a running job's claim: the node running it, and until when (renewed while it runs); a claim
    # past its time is a dead node's, and any node takes the job over (storage/jobs.py)
    owner: Mapped[str | None] = mapped_column(Str)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    __table_args__ = (Index("ix_jobs_state_not_before", "state", "not_before"),)


LEVELS: dict[str, type[Base]] = {
    "PATIENT": Patient,
    "STUDY": Study,
    "SERIES": Series,
    "IMAGE": Instance,
}


def table(model: type[Base]) -> Table:
    """A model's Core table (SQLAlchemy types ``__table__`` as any FromClause)."""
    return cast(Table, model.__table__)


@cache
def dicom_keywords(model: type[Base]) -> tuple[str, ...]:
    """The columns of a level that hold DICOM attributes, in table order."""
    return tuple(c.key for c in table(model).columns if is_dicom_keyword(c.key))


@cache
def dicom_tags(model: type[Base]) -> tuple[tuple[str, int], ...]:
    """(keyword, tag) of a level's DICOM columns: tags avoid a keyword lookup per element read."""
    return tuple((kw, tag_for_keyword(kw)) for kw in dicom_keywords(model))  # type: ignore[misc]


@cache
def integer_columns(model: type[Base]) -> frozenset[str]:
    return frozenset(c.key for c in table(model).columns if c.type.python_type is int)


def is_dicom_keyword(name: str) -> bool:
    tag = tag_for_keyword(name)
    return tag is not None and keyword_for_tag(tag) == name


class DerivedObject(Base):
    """Something made from an archived instance: a de-identified instance, later conversions."""

    __tablename__ = "derived"
    id: Mapped[int] = mapped_column(primary_key=True)
    source_uid: Mapped[str] = mapped_column(Str, index=True)  # SOP Instance UID of the original
    kind: Mapped[str] = mapped_column(Str)  # anonymized | ...
    uid: Mapped[str | None] = mapped_column(Str, index=True)  # SOP Instance UID of a derived instance
    path: Mapped[str | None] = mapped_column(Str)  # a derived file outside the hierarchy, if any
    created_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("source_uid", "kind", "uid", name="uq_derived"),)
