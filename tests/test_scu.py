"""The node as a client of other PACS: remotes, echo, find, move, get and send, against Orthanc and dcmqrscp.

Both remotes are loaded with the same generated archive; the node's answers
are checked against the generated records, and what it retrieves against
the original files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support import qrdata
from tests.support.datagen import write_ct_series
from tests.support.net import free_port
from tests.support.node import Node
from tests.support.peers import Peer, start_dcmqrscp, start_orthanc, store_into
from tests.support.proc import cli
from tests.support.toml import remotes, write_toml


@dataclass
class Env:
    node: Node
    config: Path
    orthanc: Peer
    dcmqr: Peer
    records: list[qrdata.Record]
    tmp: Path

    def dn(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        return cli(*args, "--config", str(self.config), check=check)

    def uids(self, key: str, pred) -> set[str]:  # type: ignore[no-untyped-def]
        return {r.attrs[key] for r in self.records if pred(r.attrs)}


def write_config(path: Path, entries: dict[str, tuple[str, int, list[str]]], storage: Path, aet: str) -> Path:
    return write_toml(path, {"node": {"aet": aet}, "storage": {"storage": str(storage), "min_free_mb": 0},
                             "remotes": remotes(entries)})


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("scu")
    records = qrdata.build(tmp / "files")
    node_port, orthanc_port = free_port(), free_port()
    dcmqr = start_dcmqrscp(tmp / "dcmqr", hosts={"node": ("DICOMNODE", node_port)})
    all_services = ["store", "find", "move", "get"]
    config = write_config(tmp / "node.toml", {"ORTHANC": ("ORTHANC", orthanc_port, all_services),
                                              "DCMQR": ("DCMQR", dcmqr.port, all_services),
                                              "STORE_ONLY": ("ORTHANC", orthanc_port, ["store"]),
                                              "DOWN": ("DOWN", free_port(), all_services)},
                          tmp / "archive", "DICOMNODE")
    node = Node(tmp / "archive", {"DICOMNODE_MIN_FREE_MB": "0"}, ["--config", str(config)])
    node.port = node_port
    orthanc = None
    try:
        node.start()
        orthanc = start_orthanc(tmp / "orthanc", modalities={"node": ["DICOMNODE", "127.0.0.1", node_port]},
                                port=orthanc_port)
        files = [r.path for r in records]
        store_into(orthanc, files)
        store_into(dcmqr, files)
        yield Env(node, config, orthanc, dcmqr, records, tmp)
    finally:
        node.stop()
        dcmqr.stop()
        if orthanc:
            orthanc.stop()


def test_remotes_and_echo(env: Env) -> None:
    listed = json.loads(env.dn("remotes", "--json").stdout)
    assert {r["name"] for r in listed} == {"ORTHANC", "DCMQR", "STORE_ONLY", "DOWN"}
    assert "C-ECHO success" in env.dn("echo", "ORTHANC").stdout
    assert "C-ECHO success" in env.dn("echo", f"DCMQR@127.0.0.1:{env.dcmqr.port}").stdout
    p = env.dn("echo", "--all", "--json", check=False)
    rows = {r["remote"]: r for r in json.loads(p.stdout)}
    assert rows["ORTHANC"]["ok"] and rows["DCMQR"]["ok"] and rows["ORTHANC"]["rtt_ms"] > 0
    assert not rows["DOWN"]["ok"] and rows["DOWN"]["kind"] == "unreachable"
    assert p.returncode == 3


@pytest.mark.parametrize("remote", ["ORTHANC", "DCMQR"])
def test_find_at_every_level(env: Env, remote: str) -> None:
    def find(*args: str) -> list[dict[str, str]]:
        return json.loads(env.dn("find", remote, "--json", *args).stdout)

    pats = find("--model", "patient", "-L", "PATIENT", "-k", "PatientID=QR00*")
    assert {r["PatientID"] for r in pats} == {f"QR00{i}" for i in range(1, 6)}
    assert {r["PatientName"] for r in pats} >= {"Müller^Jürgen", "Øster^Åse"}  # decoded, whatever the charset
    studies = find("-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QR001")
    assert {r["StudyInstanceUID"] for r in studies} == env.uids("StudyInstanceUID", lambda a: a["PatientID"] == "QR001")
    dated = find("-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=20240101-20240301")
    assert {r["StudyInstanceUID"] for r in dated} == env.uids(
        "StudyInstanceUID", lambda a: "20240101" <= a["StudyDate"] <= "20240301")
    study = sorted(env.uids("StudyInstanceUID", lambda a: a["PatientID"] == "QR004"))[0]
    series = find("-L", "SERIES", "-k", f"StudyInstanceUID={study}", "-k", "Modality")
    assert {r["SeriesInstanceUID"] for r in series} == env.uids("SeriesInstanceUID",
                                                                 lambda a: a["StudyInstanceUID"] == study)
    one = sorted(r["SeriesInstanceUID"] for r in series)[0]
    images = find("-L", "IMAGE", "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={one}")
    assert {r["SOPInstanceUID"] for r in images} == env.uids("SOPInstanceUID", lambda a: a["SeriesInstanceUID"] == one)
    text = env.dn("find", remote, "--csv", "-k", "PatientID=QR005", "-k", "StudyDescription").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["StudyDescription"] for r in table} == {"Old film", "CT Chest"}


def _archived(env: Env, storage: Path | None = None) -> dict[str, Path]:
    args = ["ls", "instances", "--json"] + (["--storage", str(storage)] if storage else [])
    rows = json.loads(env.dn(*args).stdout)
    return {r["SOPInstanceUID"]: Path(r["path"]) for r in rows}


def _identical(got: Path, original: Path) -> bool:
    a, b = dcmread(got), dcmread(original)
    return a == b and a.PixelData == b.PixelData


@pytest.mark.parametrize("remote,patient", [("ORTHANC", "QR002"), ("DCMQR", "QR005")])
def test_move_into_the_running_node(env: Env, remote: str, patient: str) -> None:
    study = sorted(env.uids("StudyInstanceUID", lambda a: a["PatientID"] == patient))[0]
    p = env.dn("move", remote, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "--json")
    summary = json.loads(p.stdout)
    want = {r.attrs["SOPInstanceUID"]: r.path for r in env.records if r.attrs["StudyInstanceUID"] == study}
    assert summary["completed"] == len(want) and summary["failed"] == 0
    have = _archived(env)
    assert set(want) <= set(have)
    assert all(_identical(have[u], want[u]) for u in want)


@pytest.mark.parametrize("remote", ["DCMQR", "ORTHANC"])
def test_get_into_the_archive_without_serve(env: Env, remote: str, tmp_path: Path) -> None:
    study = sorted(env.uids("StudyInstanceUID", lambda a: a["PatientID"] == "QR001"))[1]
    storage = tmp_path / "got"
    p = env.dn("get", remote, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
               "--storage", str(storage), "--json")
    summary = json.loads(p.stdout)
    want = {r.attrs["SOPInstanceUID"]: r.path for r in env.records if r.attrs["StudyInstanceUID"] == study}
    assert summary["completed"] == summary["archived"] == len(want), summary
    have = _archived(env, storage)
    assert set(have) == set(want)
    assert all(_identical(have[u], want[u]) for u in want)


def test_send_from_the_archive_by_uid(env: Env, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "new", n=4, rows=16, cols=16, patient_id="SENT1")
    storage = tmp_path / "local"
    env.dn("import", str(tmp_path / "new"), "--storage", str(storage))
    study = str(dcmread(files[0]).StudyInstanceUID)
    for remote in ("ORTHANC", "DCMQR"):
        sent = json.loads(env.dn("send", remote, study, "--storage", str(storage), "--json").stdout)
        assert sent["summary"]["success"] == 4
        found = json.loads(env.dn("find", remote, "--json", "-L", "IMAGE", "-k", f"StudyInstanceUID={study}").stdout)
        assert {r["SOPInstanceUID"] for r in found} == {str(dcmread(f).SOPInstanceUID) for f in files}


def test_error_paths_have_their_own_exit_codes(env: Env, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a stopped remote
    p = env.dn("find", "DOWN", "-k", "PatientID=X", check=False)
    assert p.returncode == 3 and "Traceback" not in p.stderr
    # a remote that rejects our calling AE (a dicomnode that only lets ONLY in)
    picky = make_node("picky", env={"DICOMNODE_ALLOWED_CALLING": "ONLY"})
    p = env.dn("find", picky.peer, "-k", "PatientID=X", check=False)
    assert p.returncode == 4 and "rejected" in p.stderr
    # a remote that does not know the move destination
    study = sorted(env.uids("StudyInstanceUID", lambda a: True))[0]
    p = env.dn("move", "DCMQR", "--dest", "NOBODY", "-k", f"StudyInstanceUID={study}", check=False)
    assert p.returncode == 5 and "0xA801" in p.stderr, p.stderr
    # a remote that refuses the service (a dicomnode that lets strangers store only)
    shy = make_node("shy", env={"DICOMNODE_OPEN_SERVICES": "store"})
    p = env.dn("find", shy.peer, "-k", "PatientID=X", check=False)
    assert p.returncode == 5 and "0x0124" in p.stderr
    # our own configuration does not allow the service with that remote
    p = env.dn("find", "STORE_ONLY", "-k", "PatientID=X", check=False)
    assert p.returncode == 2 and "not configured for find" in p.stderr
    # a bad key is a usage error
    p = env.dn("find", "ORTHANC", "-k", "NoSuchKeyword=1", check=False)
    assert p.returncode == 2
