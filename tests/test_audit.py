"""The audit trail (issue 18, item 8): who did what, as DCMTK clients and the CLI did it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydicom import dcmread

from dicomnode.storage.audit import AuditLog
from tests.support.datagen import write_ct_series
from tests.support.node import storescu
from tests.support.proc import run


def test_what_peers_and_operators_did_is_recorded(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = make_node()
    files = write_ct_series(tmp_path / "in", 2, rows=32, cols=32)
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert storescu(node, *files).returncode == 0
    run(["echoscu", "-aet", "INTRUDER", "-aec", "NOTTHENODE", "127.0.0.1", str(node.port)])  # rejected
    run(["findscu", "-aet", "VIEWER", "-aec", node.aet, "-S", "-k", "QueryRetrieveLevel=STUDY",
         "-k", "StudyInstanceUID", "127.0.0.1", str(node.port)], check=True)
    run(["getscu", "-aet", "VIEWER", "-aec", node.aet, "-S", "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study}", "-od", str(tmp_path), "127.0.0.1", str(node.port)], check=True)
    node.cli("delete", uids[0])
    time.sleep(0.3)

    records = json.loads(node.cli("audit", "--json").stdout)
    by_event: dict[str, list[dict]] = {}
    for r in records:
        by_event.setdefault(r["event"], []).append(r)
    stored = [r for r in by_event["stored"] if r["outcome"] == "success"]
    assert {r["sop"] for r in stored} == set(uids) and all(r["aet"] == "STORESCU" for r in stored)
    assert all(r["study"] == study for r in stored)
    accepted = {r["aet"] for r in by_event["association"] if r["outcome"] == "success"}
    assert {"STORESCU", "VIEWER"} <= accepted
    rejected = [r for r in by_event["association"] if r["outcome"] == "failure"]
    assert rejected and rejected[0]["aet"] == "INTRUDER" and "NOTTHENODE" in rejected[0]["reason"]
    assert by_event["query"][0]["aet"] == "VIEWER" and by_event["query"][0]["matches"] == 1
    got = by_event["retrieve"][0]
    assert got["service"] == "C-GET" and got["instances"] == 2 and got["study"] == study and got["aet"] == "VIEWER"
    assert by_event["delete"][0]["uid"] == uids[0] and by_event["delete"][0]["instances"] == 1
    # filters, and the table for an operator
    only = json.loads(node.cli("audit", "--json", "--event", "delete", "--since", "1h").stdout)
    assert [r["event"] for r in only] == ["delete"]
    assert json.loads(node.cli("audit", "--json", "--since", "2099-01-01").stdout) == []
    assert json.loads(node.cli("audit", "--json", "--failures").stdout)[0]["aet"] == "INTRUDER"
    table = node.cli("audit", "--event", "association").stdout
    assert "INTRUDER" in table and "failure" in table
    bad = node.cli("audit", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "a duration" in bad.stderr


def test_the_trail_rotates_and_reads_back_in_order(tmp_path: Path) -> None:
    trail = AuditLog(tmp_path / "audit", max_bytes=2000, keep=3)
    for i in range(200):
        trail.record("stored", sop=f"1.2.3.{i}")
    files = sorted(p.name for p in (tmp_path / "audit").glob("audit.jsonl*"))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(p.stat().st_size <= 2200 for p in (tmp_path / "audit").glob("audit.jsonl*"))
    sops = [int(r["sop"].rsplit(".", 1)[1]) for r in trail.read()]
    assert sops == sorted(sops) and sops[-1] == 199 and len(sops) < 200  # the oldest were dropped
