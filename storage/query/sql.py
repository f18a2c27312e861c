"""Where a C-FIND (or the selection of a C-MOVE / C-GET) becomes SQL.

A Query is the identifier's keys sorted by where their value comes from:
  index     a column of the patients/studies/series/instances tables
  computed  counts and lists over the hierarchy (NumberOfStudyRelatedInstances,
            ModalitiesInStudy, ...), as correlated subqueries
  header    anything else, read from the stored header of the row's first
            instance (node/find.py), and matched in Python (storage/matching.py)
  below     keys of a level below the query level: returned empty, not matched
`select_for` builds one SELECT over the query level joined to its parents;
rows stream from the cursor, so the answer is never held whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, exists, false, func, or_, select
from sqlalchemy.sql import ColumnElement, Select

from dicomnode.errors import QueryError
from dicomnode.storage.index.models import LEVELS, dicom_keywords, integer_columns, table
from dicomnode.storage.query.matching import LIST, RANGE, SINGLE, WILDCARD, Condition, fold

QR_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
               "IMAGE": "SOPInstanceUID"}
MODELS = {"PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"), "STUDY": ("STUDY", "SERIES", "IMAGE")}
COMPUTED = {
    "NumberOfPatientRelatedStudies": "PATIENT",
    "NumberOfPatientRelatedSeries": "PATIENT",
    "NumberOfPatientRelatedInstances": "PATIENT",
    "NumberOfStudyRelatedSeries": "STUDY",
    "NumberOfStudyRelatedInstances": "STUDY",
    "ModalitiesInStudy": "STUDY",
    "SOPClassesInStudy": "STUDY",
    "NumberOfSeriesRelatedInstances": "SERIES",
    # who sent the study: the calling AE titles of its instances (the file meta element that
    # records them), matched when any instance's sender matches
    "SourceApplicationEntityTitle": "STUDY",
}
# Date and time keys that match as one date-time range when both are given (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"), ("ContentDate", "ContentTime"),
                   ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"))

PAT, STU, SER, INS = (table(LEVELS[lv]) for lv in QR_LEVELS)
TABLES = dict(zip(QR_LEVELS, (PAT, STU, SER, INS)))
# the tables again, for subqueries over the hierarchy (made once: an alias of a wide table is costly)
_SER, _INS, _STU = SER.alias("sub_series"), INS.alias("sub_instances"), STU.alias("sub_studies")
_PARENT_FK = {"STUDY": ("patient_pk", "PATIENT"), "SERIES": ("study_pk", "STUDY"), "IMAGE": ("series_pk", "SERIES")}


@dataclass
class Key:
    keyword: str
    vr: str
    condition: Condition | None
    source: str  # index | computed | header | below
    table_level: str | None = None  # the table that holds an indexed key


@dataclass
class Query:
    model: str  # PATIENT (Patient Root) or STUDY (Study Root)
    level: str
    keys: list[Key] = field(default_factory=list)
    # an order other than arrival (QIDO's `orderby`, as dcm4chee offers it): (keyword, descending),
    # each an index or computed key of the query; and a page cut in SQL (only when no key is
    # matched against stored headers, which happens after the cursor)
    order: list[tuple[str, bool]] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0

    def by_source(self, source: str) -> list[Key]:
        return [k for k in self.keys if k.source == source]

    @property
    def header_conditions(self) -> list[Key]:
        return [k for k in self.by_source("header") if k.condition is not None]

    @property
    def needs_header(self) -> bool:
        return bool(self.by_source("header"))


def index_level(keyword: str) -> str | None:
    """The table level holding an indexed attribute, or None."""
    for lv in QR_LEVELS:
        if keyword in dicom_keywords(LEVELS[lv]):
            return lv
    return None


def model_level(model: str, table_level: str) -> str:
    """In the Study Root model the patient's attributes are keys of the STUDY level."""
    return "STUDY" if model == "STUDY" and table_level == "PATIENT" else table_level


def build_query(model: str, level: str, keys: list[tuple[str, str, Condition | None]],
                hierarchical: bool = True) -> Query:
    """Sort the keys and check the identifier against the information model.

    Hierarchical search (PS3.4 C.4.1.2.2.1): above the query level only the
    unique keys may carry a value. Leaving a unique key above out is accepted
    (it then matches any), as most archives do, because users rely on it.
    """
    if model not in MODELS:
        raise QueryError(f"unknown information model {model!r}")
    if level not in MODELS[model]:
        raise QueryError(f"Query/Retrieve Level {level or '(missing)'!r} is not one of "
                         f"{', '.join(MODELS[model])} for this information model")
    depth = QR_LEVELS.index(level)
    q = Query(model, level)
    for keyword, vr, cond in keys:
        table_level = index_level(keyword)
        if table_level is not None:
            key_level, source = model_level(model, table_level), "index"
        elif keyword in COMPUTED:
            table_level = COMPUTED[keyword]
            key_level, source = model_level(model, table_level), "computed"
        else:
            q.keys.append(Key(keyword, vr, cond, "header"))
            continue
        if QR_LEVELS.index(key_level) > depth:
            q.keys.append(Key(keyword, vr, None, "below"))
            continue
        if (hierarchical and cond is not None and key_level != level
                and keyword != UNIQUE_KEYS[key_level]):
            raise QueryError(f"{keyword} is a {key_level}-level key: above the query level ({level}) only "
                             f"unique keys may have a value in a hierarchical query")
        q.keys.append(Key(keyword, vr, cond, source, table_level))
    return q


def _chain(level: str) -> list[str]:
    """The query level and the levels above it, bottom up."""
    return list(reversed(QR_LEVELS[: QR_LEVELS.index(level) + 1]))


def select_for(q: Query, dialect: str = "sqlite", extra_columns: bool = True) -> Select[Any]:
    """One SELECT for the query: the level joined to its parents, filtered, in arrival order."""
    chain = _chain(q.level)
    base = TABLES[q.level]
    cols: list[ColumnElement[Any]] = [base.c.id.label("_pk")]
    joined: Any = base
    for lv in chain[:-1]:
        fk, parent = _PARENT_FK[lv]
        joined = joined.join(TABLES[parent], getattr(TABLES[lv].c, fk) == TABLES[parent].c.id)
    seen: set[str] = set()
    for k in q.keys:
        if k.keyword in seen:
            continue
        seen.add(k.keyword)
        if k.source == "index":
            cols.append(TABLES[k.table_level].c[k.keyword].label(k.keyword))  # type: ignore[index]
        elif k.source == "computed":
            cols.append(_computed(k.keyword, dialect).label(k.keyword))
    if extra_columns and q.needs_header and q.level == "IMAGE":
        cols += [INS.c.path.label("_path"), INS.c.pixel_data_offset.label("_pdo")]
    elif extra_columns and q.needs_header:
        rep = _first_instance(q.level)
        cols.append(select(INS.c.path).where(INS.c.id == rep).scalar_subquery().label("_path"))
        cols.append(select(INS.c.pixel_data_offset).where(INS.c.id == rep).scalar_subquery().label("_pdo"))
    stmt = select(*cols).select_from(joined)
    combined = _combined_keys(q)
    where = [w for w in (_where(k, dialect, combined) for k in q.keys
                         if k.condition is not None and k.source in ("index", "computed")) if w is not None]
    where += _date_time_ranges(q, dialect, combined)
    stmt = stmt.where(and_(*where)) if where else stmt
    by = {k.keyword: k for k in q.keys if k.source in ("index", "computed")}
    for keyword, descending in q.order:
        if keyword not in by:
            raise QueryError(f"orderby {keyword}: not a key this level can be sorted by")
        k = by[keyword]
        if k.source == "index":
            col: Any = TABLES[k.table_level].c[keyword]  # type: ignore[index]
            numeric = keyword in integer_columns(LEVELS[k.table_level])  # type: ignore[index]
        else:
            col, numeric = _computed(keyword, dialect), keyword.startswith("Number")
        # empty values last either way, as a reader of a sorted list expects
        empty = col.is_(None) if numeric else func.coalesce(col, "") == ""
        stmt = stmt.order_by(empty, col.desc() if descending else col.asc())
    stmt = stmt.order_by(base.c.id)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt.offset(q.offset) if q.offset else stmt


def run(conn: Connection, q: Query, dialect: str = "sqlite", batch: int = 500) -> Iterator[dict[str, Any]]:
    """Stream the matching rows as dicts keyword -> value."""
    result = conn.execution_options(yield_per=batch).execute(select_for(q, dialect))
    keys = list(result.keys())
    for row in result:
        yield dict(zip(keys, row))


# -- SQL pieces ---------------------------------------------------------------


def _combined_keys(q: Query) -> set[str]:
    """Keywords matched as part of a combined date-time range rather than on their own."""
    out: set[str] = set()
    conds = {k.keyword: k.condition for k in q.by_source("index") if k.condition is not None}
    for d, t in DATE_TIME_PAIRS:
        if d in conds and t in conds and RANGE in (conds[d].kind, conds[t].kind):
            out.update((d, t))
    return out


def _where(k: Key, dialect: str, combined: set[str]) -> ColumnElement[bool] | None:
    cond = k.condition
    assert cond is not None
    if k.source == "computed":
        return _computed_match(k, dialect)
    if k.keyword in combined:
        return None
    col = TABLES[k.table_level].c[k.keyword]  # type: ignore[index]
    if k.keyword in integer_columns(LEVELS[k.table_level]):  # type: ignore[index]
        return _integer_match(col, cond)
    return text_match(col, cond, dialect)


def text_match(col: Any, cond: Condition, dialect: str) -> ColumnElement[bool]:
    if cond.kind == SINGLE:
        if cond.fold:
            return _fold_sql(col, dialect) == _fold_value(cond.values[0], dialect)
        return col == cond.values[0]
    if cond.kind == LIST:
        return col.in_(cond.values)
    if cond.kind == WILDCARD:
        return _wildcard_sql(col, cond, dialect)
    low, high = cond.bounds()
    c = col.collate("C") if dialect == "postgresql" else col
    parts = [c >= low] if low else []
    if high:
        parts.append(c <= high)
    return and_(*parts)


def _integer_match(col: Any, cond: Condition) -> ColumnElement[bool]:
    try:
        values = [int(v) for v in cond.values]
    except ValueError:
        return false()
    if cond.kind == SINGLE:
        return col == values[0]
    if cond.kind == LIST:
        return col.in_(values)
    return false()


def _fold_sql(col: Any, dialect: str) -> Any:
    return func.dn_fold(col) if dialect == "sqlite" else func.lower(col)


def _fold_value(value: str, dialect: str) -> str:
    return fold(value) if dialect == "sqlite" else value.lower()


def _wildcard_sql(col: Any, cond: Condition, dialect: str) -> ColumnElement[bool]:
    pattern = cond.values[0]
    if dialect == "sqlite":
        # GLOB is case-sensitive (LIKE is not, for ASCII); its own metacharacters are bracketed
        glob = "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in pattern)
        if cond.fold:
            return _fold_sql(col, dialect).op("GLOB")(fold(glob))
        return col.op("GLOB")(glob)
    like = "".join({"%": "\\%", "_": "\\_", "\\": "\\\\", "*": "%", "?": "_"}.get(ch, ch) for ch in pattern)
    if cond.fold:
        return func.lower(col).like(like.lower(), escape="\\")
    return col.like(like, escape="\\")


def _date_time_ranges(q: Query, dialect: str, combined: set[str]) -> list[ColumnElement[bool]]:
    """Date and time keys given together, one a range, match as one date-time range.

    StudyDate 20240105-20240107 with StudyTime 1000-1800 is 10:00 on the 5th
    to 18:00 on the 7th, not 10:00-18:00 on each day.
    """
    out: list[ColumnElement[bool]] = []
    keys = {k.keyword: k for k in q.by_source("index")}
    for d, t in DATE_TIME_PAIRS:
        if d not in combined:
            continue
        dk, tk = keys[d], keys[t]
        table = TABLES[dk.table_level]  # type: ignore[index]
        dcol: Any = table.c[d]
        tcol: Any = table.c[t]
        if dialect == "postgresql":
            dcol, tcol = dcol.collate("C"), tcol.collate("C")
        dlow, dhigh = _as_range(dk.condition)  # type: ignore[arg-type]
        tlow, thigh = _as_range(tk.condition)  # type: ignore[arg-type]
        if dlow:
            out.append(or_(dcol > dlow, and_(dcol == dlow, tcol >= tlow) if tlow else dcol == dlow))
        if dhigh:
            dh = dhigh[:8]
            out.append(or_(dcol < dh, and_(dcol == dh, tcol <= thigh) if thigh else dcol == dh))
        if not dlow and not dhigh:  # only the time bounds count
            if tlow:
                out.append(tcol >= tlow)
            if thigh:
                out.append(tcol <= thigh)
    return out


def _as_range(cond: Condition) -> tuple[str, str]:
    if cond.kind == RANGE:
        return cond.bounds()
    if cond.kind == SINGLE:
        return cond.values[0], Condition(cond.keyword, cond.vr, RANGE, (cond.values[0],) * 2).bounds()[1]
    raise QueryError(f"{cond.keyword}: a {cond.kind} value cannot be combined with a date-time range")


# -- computed keys ------------------------------------------------------------


def _first_instance(level: str) -> Any:
    """The id of the first-arrived instance under the current row of `level` (above IMAGE)."""
    q = select(func.min(INS.c.id))
    # explicit correlation: this subquery sits inside another one (the path lookup)
    if level == "SERIES":
        return q.where(INS.c.series_pk == SER.c.id).correlate(SER).scalar_subquery()
    if level == "STUDY":
        ser = SER.alias("rep_series")
        return (q.select_from(INS.join(ser, INS.c.series_pk == ser.c.id)).where(ser.c.study_pk == STU.c.id)
                .correlate(STU).scalar_subquery())
    ser, stu = SER.alias("rep_series"), STU.alias("rep_study")
    return (q.select_from(INS.join(ser, INS.c.series_pk == ser.c.id).join(stu, ser.c.study_pk == stu.c.id))
            .where(stu.c.patient_pk == PAT.c.id).correlate(PAT).scalar_subquery())


def _aggregate(col: Any, dialect: str) -> Any:
    """Distinct values joined by commas (UIDs and modalities never contain one)."""
    if dialect == "postgresql":
        return func.string_agg(col.distinct(), ",")
    return func.group_concat(col.distinct())


def _computed(keyword: str, dialect: str) -> Any:
    """A count or list over the hierarchy as a subquery correlated with the outer query's patient,
    study or series row. Its own tables are aliases: at the series or image level the outer query
    joins SER and INS too, and correlating those would leave the subquery with nothing to count."""
    ser, ins, stu = _SER, _INS, _STU
    ser_in_study = ser.c.study_pk == STU.c.id
    ins_of_ser = ins.join(ser, ins.c.series_pk == ser.c.id)
    if keyword == "NumberOfSeriesRelatedInstances":
        return select(func.count(ins.c.id)).where(ins.c.series_pk == SER.c.id).correlate(SER).scalar_subquery()
    if keyword == "NumberOfStudyRelatedSeries":
        return select(func.count(ser.c.id)).where(ser_in_study).correlate(STU).scalar_subquery()
    if keyword == "NumberOfStudyRelatedInstances":
        return select(func.count(ins.c.id)).select_from(ins_of_ser).where(ser_in_study).correlate(STU).scalar_subquery()
    if keyword == "ModalitiesInStudy":
        return select(_aggregate(ser.c.Modality, dialect)).where(ser_in_study).correlate(STU).scalar_subquery()
    if keyword == "SOPClassesInStudy":
        return (select(_aggregate(ins.c.SOPClassUID, dialect)).select_from(ins_of_ser)
                .where(ser_in_study).correlate(STU).scalar_subquery())
    if keyword == "SourceApplicationEntityTitle":
        return (select(_aggregate(ins.c.calling_aet, dialect)).select_from(ins_of_ser)
                .where(ser_in_study).correlate(STU).scalar_subquery())
    if keyword == "NumberOfPatientRelatedStudies":
        return select(func.count(stu.c.id)).where(stu.c.patient_pk == PAT.c.id).correlate(PAT).scalar_subquery()
    if keyword == "NumberOfPatientRelatedSeries":
        return (select(func.count(ser.c.id)).select_from(ser.join(stu, ser.c.study_pk == stu.c.id))
                .where(stu.c.patient_pk == PAT.c.id).correlate(PAT).scalar_subquery())
    if keyword == "NumberOfPatientRelatedInstances":
        return (select(func.count(ins.c.id)).select_from(ins_of_ser.join(stu, ser.c.study_pk == stu.c.id))
                .where(stu.c.patient_pk == PAT.c.id).correlate(PAT).scalar_subquery())
    raise KeyError(keyword)


def _computed_match(k: Key, dialect: str) -> ColumnElement[bool] | None:
    """ModalitiesInStudy / SOPClassesInStudy match when any series / instance of the study does."""
    cond = k.condition
    assert cond is not None
    ser, ins = _SER, _INS  # not the outer query's SER/INS (see _computed)
    if k.keyword == "ModalitiesInStudy":
        return exists(select(ser.c.id).where(ser.c.study_pk == STU.c.id,
                                             text_match(ser.c.Modality, cond, dialect)).correlate(STU))
    if k.keyword == "SOPClassesInStudy":
        return exists(select(ins.c.id).select_from(ins.join(ser, ins.c.series_pk == ser.c.id))
                      .where(ser.c.study_pk == STU.c.id, text_match(ins.c.SOPClassUID, cond, dialect))
                      .correlate(STU))
    if k.keyword == "SourceApplicationEntityTitle":
        return exists(select(ins.c.id).select_from(ins.join(ser, ins.c.series_pk == ser.c.id))
                      .where(ser.c.study_pk == STU.c.id, text_match(ins.c.calling_aet, cond, dialect))
                      .correlate(STU))
    return None  # matching on counts is not supported: returned, not matched


def split_aggregate(value: str | None) -> list[str]:
    return sorted(v for v in (value or "").split(",") if v)
