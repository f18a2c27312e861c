"""Storage Commitment Push Model (issue 18, item 3), both roles.

Peers: Orthanc 1.10 as the SCU (its REST call /modalities/{id}/storage-commitment; Orthanc takes
the report on a new association, so the node must open one to it) and the node's own SCU,
`dicomnode send --commit`, which takes the report on the association it opened (pynetdicom
on both ends there). Failures: an instance the archive does not hold (0x0112), one archived
as another SOP class (0x0119), and one whose stored file was changed on disk (0x0110)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydicom import dcmread

from tests.support.datagen import write_ct_series
from tests.support.net import free_port
from tests.support.peers import start_orthanc, start_storescp
from tests.support.toml import remotes, write_toml
from tests.support.wait import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _rest(port: int, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def test_orthanc_asks_and_the_report_comes_on_a_new_association(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", node_port]})
    try:
        conf = write_toml(tmp_path / "node.toml", {"remotes": remotes({"ORTHANC": ("ORTHANC", orthanc.port,
                                                                                   ["store", "find"])})})
        node = make_node(start=False, extra=["--config", str(conf)])
        node.port = node_port
        node.start()
        files = write_ct_series(tmp_path / "in", 3, rows=32, cols=32)
        node.cli("import", str(tmp_path / "in"))
        uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        # the third file changed on disk after it was archived
        stored = json.loads(node.cli("show", uids[2], "--json").stdout)["path"]
        with open(stored, "ab") as f:
            f.write(b"\0\0")
        asked = [[CT, uids[0]], [CT, uids[1]], [CT, uids[2]], [MR, uids[0]], [CT, "1.2.3.4.5.6.7.8.9"]]
        job = _rest(orthanc.http_port, "/modalities/NODE/storage-commitment",
                    {"DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": u} for c, u in asked], "Timeout": 30})
        report: dict[str, Any] = {}

        def reported() -> bool:
            report.update(_rest(orthanc.http_port, job["Path"]))
            return report.get("Status") not in ("Pending", None)

        wait_for(reported, 60, 0.5, message="Orthanc to receive the storage commitment report")
        assert report["Status"] == "Failure", report
        ok = {s["SOPInstanceUID"] for s in report["Success"]}
        failed = {(f["SOPClassUID"], f["SOPInstanceUID"]): f["FailureReason"] for f in report["Failures"]}
        assert ok == {uids[0], uids[1]}, report
        assert failed == {(CT, uids[2]): 0x0110, (MR, uids[0]): 0x0119, (CT, "1.2.3.4.5.6.7.8.9"): 0x0112}, report
        time.sleep(0.5)
        assert "report to ORTHANC" in node.log() and "2 committed, 3 failed" in node.log()
    finally:
        orthanc.stop()


def test_send_commit_waits_for_the_report(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    receiver = make_node("receiver")
    sender = make_node("sender", start=False)
    write_ct_series(tmp_path / "in", 4, rows=32, cols=32)
    sender.cli("import", str(tmp_path / "in"))
    study = json.loads(sender.cli("ls", "studies", "--json").stdout)[0]["StudyInstanceUID"]

    p = sender.cli("send", receiver.peer, study, "--commit", "--json", check=False)
    out = json.loads(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert out["commitment"]["committed"] == 4 and not out["commitment"]["failed"] and not out["commitment"]["error"]
    assert "4 committed, 0 failed; report on the same association" in receiver.log()

    # a peer without storage commitment (DCMTK storescp): the files go, the commitment cannot: exit 1
    scp = start_storescp(tmp_path / "storescp")
    try:
        p = sender.cli("send", f"{scp.aet}@127.0.0.1:{scp.port}", study, "--commit", check=False)
    finally:
        scp.stop()
    assert p.returncode == 1 and "4 sent" in p.stdout, p.stdout + p.stderr
    assert "does not offer storage commitment" in p.stdout + p.stderr, p.stdout + p.stderr
