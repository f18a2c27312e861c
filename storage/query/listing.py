"""Listing what the archive holds at one level (`dicomnode ls`, `show`, targets given by UID).

The same matcher as C-FIND (storage/query/matching.py) and the same SQL
(storage/query/sql.py): `-k PatientName=doe*` matches here exactly as it
would in a C-FIND, case-insensitive names, ranges and UID lists included.
A listed row carries every indexed attribute of its level and of the
levels above it, the level's counts, and for instances the archive's own
facts about the file (path, size, hash, arrival, analysis figures).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import or_

from dicomnode.errors import QueryError
from dicomnode.storage.index.db import Database
from dicomnode.storage.index.models import LEVELS, dicom_keywords
from dicomnode.storage.query.matching import parse
from dicomnode.storage.query.sql import INS, QR_LEVELS, UNIQUE_KEYS, Key, Query, build_query, select_for

COUNTS = {
    "PATIENT": ("NumberOfPatientRelatedStudies",),
    "STUDY": ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}
FILE_FACTS = ("path", "file_size", "sha256", "received_at", "calling_aet", "peer_address", "pixel_data_offset",
              "pixel_data_size", "finding_errors", "finding_warnings", "finding_codes")
STUDY_FACTS = ("protected", "last_received_at")  # what the storage quotas go by (storage/archive/quota.py)


def vr_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag).split(" or ")[0] if tag is not None else ""


def listing_query(level: str, filters: dict[str, str], fold_pn: bool = True) -> Query:
    """A query returning every indexed key of the level and those above, filtered by `filters`.

    A filter must name an indexed attribute of the level or a level above
    it; anything else is a QueryError (the index cannot answer it).
    """
    levels = list(reversed(QR_LEVELS[: QR_LEVELS.index(level) + 1]))  # the level first, then its parents
    known = {kw for lv in levels for kw in dicom_keywords(LEVELS[lv])}
    unknown = [k for k in filters if k not in known]
    if unknown:
        raise QueryError(f"{unknown[0]} is not an indexed attribute of this level or above it")
    keys = [(kw, vr_of(kw), parse(kw, vr_of(kw), filters.get(kw, ""), fold_pn))
            for lv in levels for kw in dicom_keywords(LEVELS[lv])]
    keys += [(kw, "", None) for kw in COUNTS[level]]
    query = build_query("PATIENT", level, keys, hierarchical=False)
    if level == "IMAGE":
        query.keys += [Key(col, "", None, "index", "IMAGE") for col in FILE_FACTS]
    if level == "STUDY":
        query.keys += [Key(col, "", None, "index", "STUDY") for col in STUDY_FACTS]
    return query


def list_level(db: Database, level: str, filters: dict[str, str], limit: int | None = None,
               problems: bool = False, fold_pn: bool = True) -> Iterator[dict[str, Any]]:
    """The rows of a level, in arrival order, keyed by DICOM keyword (and file facts for instances)."""
    if problems and level != "IMAGE":
        raise QueryError("--problems lists instances (their analysis findings)")
    query = listing_query(level, filters, fold_pn)
    stmt = select_for(query, db.dialect, extra_columns=False)
    if problems:
        stmt = stmt.where(or_(INS.c.finding_errors > 0, INS.c.finding_warnings > 0))
    if limit:
        stmt = stmt.limit(limit)
    with db.engine.connect() as conn:
        for row in conn.execution_options(yield_per=500).execute(stmt).mappings():
            out = {k: v for k, v in row.items() if k != "_pk"}
            for when in ("received_at", "last_received_at"):
                if out.get(when) is not None:
                    out[when] = out[when].isoformat() + "Z"
            yield out


def find_any(db: Database, uid: str) -> tuple[str | None, dict[str, Any] | None]:
    """The level and row of a study, series or instance UID, or (None, None)."""
    for level in ("STUDY", "SERIES", "IMAGE"):
        for row in list_level(db, level, {UNIQUE_KEYS[level]: uid}, limit=1):
            return level, row
    return None, None
