"""Flat at scale: the node on PostgreSQL with 10,000 instances, then with 1,000,000.

The same probe archive (the C-FIND benchmark's generator: 1,000 studies, 10,000 instances) is
imported first; the queries of the C-FIND benchmark (findscu) and an ingest run (small 64x64
images over four storescu associations) are measured; then the index is filled up to a million
instances by a bulk generator in SQL (rows only: studies of other patients, in other years, so
that every probe query matches what it matched before) and the same is measured again. The
ratios (1M / 10k) are the point: ingest within 10%, each C-FIND within 2x.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.benchmarks import find
from scripts.benchmarks.ingest import timed_send
from scripts.benchmarks.servers import Server
from tests.support import postgres
from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.proc import DICOMNODE, ROOT

PER_STUDY = 10  # 2 series x 5 instances, as the probe archive
INGEST = 2000  # small images per ingest run, over 4 associations


def bulk_fill(server: postgres.Server, database: str, instances: int, start: int) -> float:
    """Rows for `instances` more instances (studies numbered from `start`), generated in SQL."""
    studies = instances // PER_STUDY
    patients = (studies + 1) // 2
    t0 = time.perf_counter()
    with server.connect(database) as c:
        c.execute("""INSERT INTO patients ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate",
                                           "PatientSex", created_at)
                     SELECT 'BULK' || g, '', 'BULK^P' || g, '19700101', 'O', now()
                     FROM generate_series(%s::int, %s::int) g""", (start, start + patients - 1))
        c.execute("""INSERT INTO studies (patient_pk, "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                                          "StudyID", "StudyDescription", created_at, last_received_at, protected)
                     SELECT p.id, '2.25.9' || s, to_char(date '1990-01-01' + (s %% 3650), 'YYYYMMDD'), '101500',
                            'BACC' || s, '1', 'Bulk', now(), now(), false
                     FROM generate_series(%s::int, %s::int) s
                     JOIN patients p ON p."PatientID" = 'BULK' || (%s::int + (s - %s::int) / 2) AND p."IssuerOfPatientID" = ''
                  """, (start, start + studies - 1, start, start))
        c.execute("""INSERT INTO series (study_pk, "SeriesInstanceUID", "Modality", "SeriesNumber", created_at)
                     SELECT st.id, st."StudyInstanceUID" || '.' || k,
                            (ARRAY['CT', 'MR', 'US', 'CR', 'XA'])[1 + (st.id + k) % 5], k::text, now()
                     FROM studies st CROSS JOIN generate_series(1, 2) k
                     WHERE st."StudyInstanceUID" LIKE '2.25.9%%' AND st.id NOT IN (SELECT study_pk FROM series)""")
        c.execute("""INSERT INTO instances (series_pk, "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
                                            "TransferSyntaxUID", "Rows", "Columns", "BitsAllocated", path, file_size,
                                            sha256, received_at, "SpecificCharacterSet")
                     SELECT se.id, se."SeriesInstanceUID" || '.' || i, '1.2.840.10008.5.1.4.1.1.7', i::text,
                            '1.2.840.10008.1.2.1', 4, 4, 16, 'bulk/' || se.id || '/' || i || '.dcm', 200, '', now(),
                            'ISO_IR 192'
                     FROM series se CROSS JOIN generate_series(1, 5) i
                     WHERE se."SeriesInstanceUID" LIKE '2.25.9%%' AND se.id NOT IN (SELECT series_pk FROM instances)""")
        c.execute("ANALYZE")
    return time.perf_counter() - t0


def count(server: postgres.Server, database: str) -> dict[str, float]:
    with server.connect(database) as c:
        return {f"{table} in the index": c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("studies", "instances")}


def measure(node: Node, recs: list[dict[str, str]], work: Path, reps: int, tag: str) -> dict[str, float]:
    srv = Server("dicomnode", node.proc, node.port, node.aet, node.storage)  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for name, keys in find.queries(recs):
        times, n = [], 0
        for _ in range(reps):
            ms, n = find.find_ms(node.port, node.aet, keys)
            times.append(ms)
        out[f"C-FIND {name}, ms"] = statistics.median(times)
        out[f"C-FIND {name}, matches"] = n
    rates = []
    for rep in range(max(2, reps // 2)):
        folders = [work / f"ingest-{tag}-{rep}-{i}" for i in range(4)]
        for i, d in enumerate(folders):
            write_ct_series(d, n=INGEST // 4, patient_id=f"SCALE{tag}{rep}{i}", rows=64, cols=64, seed=rep * 4 + i)
        rates.append(INGEST / timed_send(srv, [[d] for d in folders]))
    out["ingest 2000 small images over 4 associations, images/s"] = statistics.median(rates)
    return out


def run(work: Path, instances: int = 1_000_000, probe_studies: int = 1000, reps: int = 5) -> dict[str, dict[str, float]]:
    server = postgres.server(work / "pg")
    print(f"scale: generating the probe archive ({probe_studies} studies) ...", file=sys.stderr)
    recs = find.generate(work / "probe", probe_studies, series=2, per_series=5)
    results: dict[str, dict[str, float]] = {}
    with server.database() as url:
        database = url.rsplit("/", 1)[1]
        storage = work / "archive"
        env = {"DICOMNODE_DEFAULT_ACTIONS": "", "DICOMNODE_MIN_FREE_MB": "0"}
        subprocess.run([*DICOMNODE, "import", str(work / "probe"), "--storage", str(storage), "--db", url],
                       cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        small = probe_studies * PER_STUDY
        for label, fill in ((f"{small:,} instances", 0), (f"{instances:,} instances", instances - small)):
            if fill:
                print(f"scale: bulk-filling the index with {fill:,} instances ...", file=sys.stderr)
                results.setdefault("bulk fill", {})["seconds"] = bulk_fill(server, database, fill, 1)
            node = Node(storage, env, ["--db", url]).start()
            try:
                print(f"scale: measuring at {label} ...", file=sys.stderr)
                results[label] = {**count(server, database), **measure(node, recs, work, reps, "a" if not fill else "b")}
            finally:
                node.stop()
    return results


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """1M / 10k for every measurement (matches must be equal)."""
    small, big = [v for k, v in results.items() if k != "bulk fill"]
    return {k: big[k] / small[k] for k in small if small[k] and not k.endswith(("matches", "in the index"))}

