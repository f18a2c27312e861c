"""storage/query.py on its own: C-FIND keys to SQL, on SQLite and PostgreSQL, against expected sets.

The expected answers are computed from the generated records in Python,
not by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from dicomnode.errors import QueryError
from dicomnode.storage.archive import open_archive
from dicomnode.storage.archive.ingest import Ingester
from dicomnode.storage.query.matching import parse
from dicomnode.storage.query.sql import build_query, run
from tests.support import qrdata


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request, tmp_path_factory) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp(request.param)
    records = qrdata.build(tmp / "files")
    with ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(request.getfixturevalue("pg_server").database())
        arc = open_archive(tmp / "archive", url)
        stack.callback(arc.db.engine.dispose)
        ingester = Ingester(arc.layout, arc.index)
        for r in records:
            assert ingester.import_file(r.path).ok
        yield arc.db, records


def find(index, model: str, level: str, keys: dict[str, tuple[str, str]], returned: str,
         hierarchical: bool = True, fold: bool = True) -> set[str]:  # type: ignore[no-untyped-def]
    """Run a query; the set of `returned` values of the matches."""
    ks = [(kw, vr, parse(kw, vr, value, fold)) for kw, (vr, value) in keys.items()]
    if returned not in keys:
        ks.append((returned, "UI", None))
    q = build_query(model, level, ks, hierarchical)
    with index.engine.connect() as conn:
        rows = list(run(conn, q, index.dialect))
    values = [r[returned] for r in rows]
    if returned.endswith("UID"):
        assert len(values) == len(set(values)), "a row came back twice"
    return set(values)


def expected(records, key: str, pred: Callable[[dict[str, str]], bool]) -> set[str]:  # type: ignore[no-untyped-def]
    return {r.attrs[key] for r in records if pred(r.attrs)}


def test_single_value_and_universal(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    assert find(index, "STUDY", "STUDY", {"PatientID": ("LO", "QR001")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: a["PatientID"] == "QR001")
    assert find(index, "STUDY", "STUDY", {"PatientID": ("LO", "")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: True)
    # single value matching is case-sensitive for everything but person names
    assert find(index, "STUDY", "STUDY", {"StudyDescription": ("LO", "ct thorax")}, "StudyInstanceUID") == set()


def test_person_names_fold_case_and_accents(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    assert find(index, "STUDY", "STUDY", {"PatientName": ("PN", "doe*")}, "PatientID") == {"QR002", "QR003"}
    assert find(index, "STUDY", "STUDY", {"PatientName": ("PN", "doe*")}, "PatientID", fold=False) == {"QR002"}
    assert find(index, "STUDY", "STUDY", {"PatientName": ("PN", "MÜLLER^JÜRGEN")}, "PatientID") == {"QR001"}
    assert find(index, "STUDY", "STUDY", {"PatientName": ("PN", "øster*")}, "PatientID") == {"QR004"}


def test_wildcards_and_sql_metacharacters(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    assert find(index, "STUDY", "STUDY", {"PatientName": ("PN", "DOE^JOH?")}, "PatientID") == {"QR003"}
    assert find(index, "STUDY", "STUDY", {"StudyDescription": ("LO", "CT*")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: a["StudyDescription"].startswith("CT"))
    assert find(index, "STUDY", "STUDY", {"StudyDescription": ("LO", "*a*")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: "a" in a["StudyDescription"])
    # % and _ are literals, not SQL wildcards; so are GLOB's [ ]
    for literal in ("%", "C_ Head", "[CM]*", "*%*"):
        assert find(index, "STUDY", "STUDY", {"StudyDescription": ("LO", literal)}, "StudyInstanceUID") == set()


def test_date_ranges(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    for value, pred in (("20240101-20240228", lambda d: "20240101" <= d <= "20240228"),
                        ("-20231231", lambda d: d <= "20231231"),
                        ("20240301-", lambda d: d >= "20240301"),
                        ("2024.01.02", lambda d: d == "20240102")):
        assert find(index, "STUDY", "STUDY", {"StudyDate": ("DA", value)}, "StudyInstanceUID") == \
            expected(recs, "StudyInstanceUID", lambda a: pred(a["StudyDate"])), value


def test_time_range_upper_bound_includes_its_whole_unit(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    # "-1415" must include 14:15:00 (stored as 141500)
    assert find(index, "STUDY", "STUDY", {"StudyTime": ("TM", "1400-1415")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: a["StudyTime"] == "141500")


def test_combined_date_time_range(archive) -> None:  # type: ignore[no-untyped-def]
    """23:00 on 1 Jan 2024 to 01:00 on 2 Jan: both of QR002's studies, though no time lies in 2300-0100."""
    index, recs = archive
    got = find(index, "STUDY", "STUDY", {"StudyDate": ("DA", "20240101-20240102"), "StudyTime": ("TM", "2300-0100")},
               "StudyInstanceUID")
    assert got == expected(recs, "StudyInstanceUID", lambda a: a["PatientID"] == "QR002")
    got = find(index, "STUDY", "STUDY", {"StudyDate": ("DA", "20240101-20240102"), "StudyTime": ("TM", "2330-")},
               "StudyInstanceUID")
    assert got == expected(recs, "StudyInstanceUID", lambda a: (a["StudyDate"], a["StudyTime"]) >= ("20240101", "2330")
                           and a["StudyDate"] <= "20240102")


def test_uid_lists(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    uids = sorted(expected(recs, "StudyInstanceUID", lambda a: a["PatientID"] in ("QR002", "QR005")))
    assert find(index, "STUDY", "STUDY", {"StudyInstanceUID": ("UI", uids)}, "StudyInstanceUID") == set(uids)
    with pytest.raises(QueryError):
        parse("StudyInstanceUID", "UI", "1.2.*")


def test_modalities_in_study(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    def studies_with(mods: set[str]) -> set[str]:
        return {r.attrs["StudyInstanceUID"] for r in recs if r.attrs["Modality"] in mods}

    assert find(index, "STUDY", "STUDY", {"ModalitiesInStudy": ("CS", "MR")}, "StudyInstanceUID") == studies_with({"MR"})
    assert find(index, "STUDY", "STUDY", {"ModalitiesInStudy": ("CS", ["US", "OT"])}, "StudyInstanceUID") == \
        studies_with({"US", "OT"})
    q = build_query("STUDY", "STUDY", [("ModalitiesInStudy", "CS", None), ("NumberOfStudyRelatedInstances", "IS", None),
                                       ("NumberOfStudyRelatedSeries", "IS", None), ("StudyInstanceUID", "UI", None)])
    with index.engine.connect() as conn:
        rows = {r["StudyInstanceUID"]: r for r in run(conn, q, index.dialect)}
    for uid, row in rows.items():
        mine = [r.attrs for r in recs if r.attrs["StudyInstanceUID"] == uid]
        assert sorted(row["ModalitiesInStudy"].split(",")) == sorted({a["Modality"] for a in mine})
        assert row["NumberOfStudyRelatedInstances"] == len(mine)
        assert row["NumberOfStudyRelatedSeries"] == len({a["SeriesInstanceUID"] for a in mine})


def test_series_and_image_levels(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    study = next(r.attrs["StudyInstanceUID"] for r in recs if r.attrs["PatientID"] == "QR001")
    assert find(index, "STUDY", "SERIES", {"StudyInstanceUID": ("UI", study), "Modality": ("CS", "CT")},
                "SeriesInstanceUID") == expected(recs, "SeriesInstanceUID",
                                                 lambda a: a["StudyInstanceUID"] == study and a["Modality"] == "CT")
    series = next(r.attrs["SeriesInstanceUID"] for r in recs if r.attrs["Modality"] == "MR")
    assert find(index, "PATIENT", "IMAGE", {"SeriesInstanceUID": ("UI", series)}, "SOPInstanceUID") == \
        expected(recs, "SOPInstanceUID", lambda a: a["SeriesInstanceUID"] == series)
    assert find(index, "STUDY", "IMAGE", {"SeriesInstanceUID": ("UI", series), "InstanceNumber": ("IS", "2")},
                "SOPInstanceUID") == expected(recs, "SOPInstanceUID", lambda a: a["SeriesInstanceUID"] == series
                                              and a["InstanceNumber"] == "2")


def test_patient_root_levels_and_hierarchy(archive) -> None:  # type: ignore[no-untyped-def]
    index, recs = archive
    assert find(index, "PATIENT", "PATIENT", {"PatientSex": ("CS", "F")}, "PatientID") == {"QR002", "QR004", "QR005"}
    assert find(index, "PATIENT", "STUDY", {"PatientID": ("LO", "QR005")}, "StudyInstanceUID") == \
        expected(recs, "StudyInstanceUID", lambda a: a["PatientID"] == "QR005")
    with pytest.raises(QueryError, match="unique keys"):
        find(index, "PATIENT", "STUDY", {"PatientName": ("PN", "doe*")}, "StudyInstanceUID")
    with pytest.raises(QueryError, match="unique keys"):
        find(index, "STUDY", "SERIES", {"StudyDate": ("DA", "20240101")}, "SeriesInstanceUID")
    with pytest.raises(QueryError, match="Level"):
        find(index, "STUDY", "PATIENT", {}, "PatientID")
    # relational-style (not hierarchical) selection, as retrieve uses it
    assert find(index, "STUDY", "IMAGE", {"PatientID": ("LO", "QR003")}, "SOPInstanceUID", hierarchical=False) == \
        expected(recs, "SOPInstanceUID", lambda a: a["PatientID"] == "QR003")


def test_date_range_syntax_errors() -> None:
    with pytest.raises(QueryError):
        parse("StudyDate", "DA", "2024-01-01-2024")
    assert parse("StudyDate", "DA", "-") is None
    assert parse("AcquisitionDateTime", "DT", "20240101120000-0500").kind == "single"
    for bad in ("garbage", "2024 01 31", "yesterday"):
        with pytest.raises(QueryError, match="is not a DA value"):
            parse("StudyDate", "DA", bad)
    assert parse("StudyDate", "DA", "2024.01.31").values == ("20240131",)
    assert parse("StudyTime", "TM", "10:30").values == ("1030",)
