"""Every main C-FIND / QIDO query shape can use an index on PostgreSQL: a key that has none fails
here (with sequential scans disabled, the plan must find its rows by an index condition on the
key), instead of surfacing as a slow archive at a million instances."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import text

from dicomnode.storage.archive import open_archive
from dicomnode.storage.query.identifier import parse_identifier
from dicomnode.storage.query.sql import select_for

# (level, keys, what the index condition must mention)
SHAPES = [
    ("STUDY", {"PatientID": "X1"}, '"PatientID"'),
    ("STUDY", {"PatientName": "doe*"}, 'lower(("PatientName")'),
    ("STUDY", {"PatientName": "Doe^Jane"}, 'lower(("PatientName")'),
    ("STUDY", {"StudyDate": "20200101-20200131"}, '"StudyDate"'),
    ("STUDY", {"StudyDate": "20200101"}, '"StudyDate"'),
    ("STUDY", {"AccessionNumber": "A1"}, '"AccessionNumber"'),
    ("STUDY", {"StudyInstanceUID": "1.2.3"}, '"StudyInstanceUID"'),
    ("SERIES", {"StudyInstanceUID": "1.2.3"}, '"StudyInstanceUID"'),
    ("SERIES", {"SeriesInstanceUID": "1.2.3.4"}, '"SeriesInstanceUID"'),
    ("IMAGE", {"SeriesInstanceUID": "1.2.3.4"}, '"SeriesInstanceUID"'),
    ("IMAGE", {"SOPInstanceUID": "1.2.3.4.5"}, '"SOPInstanceUID"'),
]


@pytest.mark.parametrize(("level", "keys", "indexed"), SHAPES, ids=[f"{lv}-{'-'.join(k)}" for lv, k, _ in SHAPES])
def test_query_shapes_use_an_index(pg_url: str, level: str, keys: dict[str, str], indexed: str) -> None:
    arc = open_archive(Path(tempfile.mkdtemp()), pg_url)  # the schema as the migrations make it
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    ds.PatientName = ds.get("PatientName", "")
    req = parse_identifier(ds, "STUDY", True, hierarchical=False)
    sql = str(select_for(req.query, "postgresql").compile(dialect=arc.db.engine.dialect,
                                                          compile_kwargs={"literal_binds": True}))
    with arc.db.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert any(indexed in line for line in conditions), plan
