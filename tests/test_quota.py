"""Storage quotas, filled both ways: `reject` answers 0xA700 (507 over STOW-RS) and stores nothing
beyond the quota; `recycle` removes the least recently received unprotected studies, files and
rows, and never one being received into."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from requests.exceptions import HTTPError

from dicomnode.storage.archive.layout import INDEX_FILE
from tests.conftest import NodeFactory
from tests.support.datagen import write_ct_series
from tests.support.node import Node, storescu
from tests.support.proc import DICOMNODE, ROOT, cli, need, run
from tests.support.wait import wait_for

GIB = 1 << 30
SIDE = 64  # 64 x 64 CT images: about 9.1 kB a file


def _study(tmp_path: Path, name: str, n: int = 2, patient: str | None = None) -> list[Path]:
    return write_ct_series(tmp_path / name, n=n, patient_id=patient or name, rows=SIDE, cols=SIDE)


def _uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _j(p: subprocess.CompletedProcess[str]) -> object:
    return json.loads(p.stdout)


def _stats(node: Node) -> dict[str, int]:
    return _j(node.cli("stats", "--json"))  # type: ignore[return-value]


def _paths(node: Node, study: str) -> list[Path]:
    rows = _j(node.cli("ls", "instances", "-k", f"StudyInstanceUID={study}", "--json"))
    return [Path(r["path"]) for r in rows]  # type: ignore[union-attr]


def _studies(node: Node) -> dict[str, int]:
    """Study Instance UID -> instances, of what the archive holds."""
    return {r["StudyInstanceUID"]: r["NumberOfStudyRelatedInstances"]
            for r in _j(node.cli("ls", "studies", "--json"))}  # type: ignore[union-attr]


def test_reject_answers_0xA700_with_the_quota_and_stores_nothing_beyond(make_node: NodeFactory,
                                                                        tmp_path: Path) -> None:
    quota = 30_000  # bytes: three of the images, not four
    node = make_node(env={"DICOMNODE_MAX_SIZE_GB": str(quota / GIB)})
    files = _study(tmp_path, "s", n=5)
    sent = storescu(node, *files, extra=["-d"])
    assert sent.returncode != 0  # storescu stops at the first refusal
    out = sent.stdout + sent.stderr
    assert "0xa700" in out.lower() and "storage quota reached: max_size_gb" in out, out[-2000:]
    st = _stats(node)
    assert st["instances"] == 3 and 0 < st["bytes"] <= quota
    assert "failed 0xA700: storage quota reached" in node.log()
    # the refused object's temp file is gone (waited for: once in CI a temp file was still there right
    # after storescu exited, gone moments later; what it was is named if it stays)
    wait_for(lambda: not any((node.storage / "tmp").iterdir()), 10, 0.1,
             message=f"an empty tmp/ (holds {[p.name for p in (node.storage / 'tmp').iterdir()]})")
    # an object already archived takes no room: a duplicate is kept as usual, even at the quota
    assert storescu(node, files[0]).returncode == 0
    # nothing is ever recycled under reject, and the index agrees with the files
    assert _stats(node)["recycled"] == 0 and _studies(node) == {_uid(files): 3}
    assert node.cli("check").returncode == 0


def test_reject_at_the_study_and_patient_quotas(tmp_path: Path) -> None:
    archive = str(tmp_path / "archive")
    args = ["--storage", archive, "--json"]
    a, b, c = (_study(tmp_path, name, patient="P1") for name in ("a", "b", "c"))
    other = _study(tmp_path, "other", patient="P2")

    def imported(files: list[Path], **quota: str) -> list[dict[str, str]]:
        env = {f"DICOMNODE_{k.upper()}": v for k, v in quota.items()}
        return _import(files, args, env)["files"]  # type: ignore[no-any-return]

    assert all(f["status"] == "0x0000" for f in imported([*a, *b], max_studies="2"))
    refused = imported(c, max_studies="2")
    assert [f["status"] for f in refused] == ["0xA700", "0xA700"]
    assert refused[0]["comment"] == "storage quota reached: max_studies = 2 (policy reject)"
    # a further image of a study already there adds no study
    more = write_ct_series(tmp_path / "more", n=1, patient_id="P1", rows=SIDE, cols=SIDE, study_uid=_uid(a), seed=7)
    assert imported(more, max_studies="2")[0]["status"] == "0x0000"
    # patients: P1 is there, P2 would be a second one
    assert imported(other, max_patients="1")[0]["comment"] == "storage quota reached: max_patients = 1 (policy reject)"
    assert imported(other, max_patients="2")[0]["status"] == "0x0000"
    st = _j(cli("stats", "--storage", archive, "--json"))
    assert (st["patients"], st["studies"], st["instances"]) == (2, 3, 7)  # type: ignore[index]
    wrong = run([*DICOMNODE, "stats", "--storage", archive], cwd=ROOT, env={**os.environ, "DICOMNODE_QUOTA_POLICY": "drop"})
    assert wrong.returncode == 2 and "quota_policy 'drop': reject or recycle" in wrong.stderr
    # the size the quota goes by is a running total: check compares it with the files, --repair resets it
    with sqlite3.connect(tmp_path / "archive" / INDEX_FILE) as db:
        db.execute("UPDATE counters SET value = value + 5 WHERE name = 'archive_bytes'")
    drift = cli("check", "--storage", archive, "--json", check=False)
    assert drift.returncode == 1 and json.loads(drift.stdout)["size_counter"] == [st["bytes"] + 5, st["bytes"]]
    assert cli("check", "--repair", "--storage", archive).returncode == 0
    assert cli("check", "--storage", archive).returncode == 0


def _import(files: list[Path], args: list[str], env: dict[str, str]) -> dict[str, object]:
    """`dicomnode import` with settings from the environment, as the node reads them."""
    p = run([*DICOMNODE, "import", *map(str, files), *args], cwd=ROOT,
            env={**os.environ, "DICOMNODE_MIN_FREE_MB": "0", **env})
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_recycle_removes_the_least_recently_received_unprotected_studies(make_node: NodeFactory,
                                                                          tmp_path: Path) -> None:
    """Four studies fill the quota; A, the oldest, is protected. A new study E takes B's room
    (B's rows and files go); then three studies sent at once take C's, D's and E's, never
    each other's, and every one of them arrives whole."""
    need("storescu")
    olds = {name: _study(tmp_path, name) for name in "ABCD"}
    image = (tmp_path / "A" / "00000.dcm").stat().st_size
    quota = int(4.5 * 2 * (image + 200))  # four studies of two images and a half
    node = make_node(env={"DICOMNODE_MAX_SIZE_GB": str(quota / GIB), "DICOMNODE_QUOTA_POLICY": "recycle"})
    for files in olds.values():  # one after the other: A is the least recently received
        assert storescu(node, *files).returncode == 0
    uid = {name: _uid(files) for name, files in olds.items()}
    assert node.cli("protect", uid["A"]).returncode == 0
    b_files = _paths(node, uid["B"])
    assert len(b_files) == 2 and all(p.is_file() for p in b_files)

    e = _study(tmp_path, "E")
    assert storescu(node, *e).returncode == 0
    assert set(_studies(node)) == {uid["A"], uid["C"], uid["D"], _uid(e)}
    assert not any(p.exists() for p in b_files)
    assert node.cli("show", uid["B"], check=False).returncode == 1
    assert f"recycled study {uid['B']}: 2 instance(s)" in node.log()
    assert _stats(node)["recycled"] == 1
    deleted = json.loads(node.cli("audit", "--json", "--event", "delete").stdout)
    assert [(r["uid"], r["by"], r["instances"]) for r in deleted] == [(uid["B"], "recycling", 2)]

    new = [_study(tmp_path, name) for name in "FGH"]
    procs = [subprocess.Popen(["storescu", "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for files in new]
    for p in procs:
        _out, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs
    assert _studies(node) == {uid["A"]: 2, **{_uid(files): 2 for files in new}}
    st = _stats(node)
    assert st["recycled"] == 4 and st["protected"] == 1 and st["bytes"] <= quota
    assert node.log().count("recycled study ") == 4
    assert node.cli("check").returncode == 0  # rows and files agree, the size counter too


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_recycle_keeps_protected_studies_and_refuses_when_nothing_is_left(
        make_node: NodeFactory, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    extra = ["--db", request.getfixturevalue("pg_url")] if backend == "postgresql" else []
    node = make_node(env={"DICOMNODE_MAX_STUDIES": "2", "DICOMNODE_QUOTA_POLICY": "recycle"}, extra=extra)
    a, b = _study(tmp_path, "a"), _study(tmp_path, "b")
    for files in (a, b):
        assert storescu(node, *files).returncode == 0
    # protect by a series and by an instance UID: each names its study
    series = str(dcmread(a[0], stop_before_pixels=True).SeriesInstanceUID)
    sop = str(dcmread(b[1], stop_before_pixels=True).SOPInstanceUID)
    done = _j(node.cli("protect", series, sop, "--json"))
    assert [r["StudyInstanceUID"] for r in done] == [_uid(a), _uid(b)]  # type: ignore[index]
    assert node.cli("protect", "1.2.3.4.5", check=False).returncode == 1
    c = _study(tmp_path, "c")
    sent = storescu(node, *c, extra=["-d"])
    assert sent.returncode != 0
    assert "max_studies = 2; nothing to recycle" in sent.stdout + sent.stderr
    assert set(_studies(node)) == {_uid(a), _uid(b)}
    # unprotected, the least recently received goes
    assert node.cli("unprotect", _uid(a)).returncode == 0
    assert storescu(node, *c).returncode == 0
    assert set(_studies(node)) == {_uid(b), _uid(c)}
    assert node.cli("check").returncode == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_recycle_for_max_patients_removes_a_whole_patient(tmp_path: Path, backend: str,
                                                          request: pytest.FixtureRequest) -> None:
    """P1 has two studies, P2 one received between them: P2 is the least recently received patient,
    and goes whole; removing P1's older study would not have made room."""
    archive = str(tmp_path / "archive")
    db = ["--db", request.getfixturevalue("pg_url")] if backend == "postgresql" else []
    args = ["--storage", archive, *db, "--json"]
    p1a, p2, p1b, p3 = (_study(tmp_path, name, patient=pid)
                        for name, pid in (("p1a", "P1"), ("p2", "P2"), ("p1b", "P1"), ("p3", "P3")))
    for files in (p1a, p2, p1b):
        _import(files, args, {})
    got = _import(p3, args, {"DICOMNODE_MAX_PATIENTS": "2", "DICOMNODE_QUOTA_POLICY": "recycle"})
    assert all(f["status"] == "0x0000" for f in got["files"])  # type: ignore[attr-defined]
    left = {r["PatientID"] for r in _j(cli("ls", "studies", *args))}  # type: ignore[union-attr]
    assert left == {"P1", "P3"}
    st = _j(cli("stats", *args))
    assert (st["patients"], st["studies"], st["recycled"]) == (2, 3, 1)  # type: ignore[index]
    assert cli("check", "--storage", archive, *db).returncode == 0
    # like delete, protect edits an archive that is there and never makes one
    nowhere = cli("protect", "1.2.3", "--storage", str(tmp_path / "none"), check=False)
    assert nowhere.returncode == 1 and "no archive" in nowhere.stderr and not (tmp_path / "none").exists()


def test_stow_at_the_quota_is_507_with_failure_reason_0xA700(make_node: NodeFactory, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_MAX_STUDIES": "1"}, web=True)
    client = DICOMwebClient(url=node.dicomweb)
    first = client.store_instances([dcmread(f) for f in _study(tmp_path, "a")])
    assert len(first.ReferencedSOPSequence) == 2
    with pytest.raises(HTTPError) as refused:
        client.store_instances([dcmread(f) for f in _study(tmp_path, "b")])
    rsp = refused.value.response
    assert rsp.status_code == 507
    answer = Dataset.from_json(rsp.content)
    assert [item.FailureReason for item in answer.FailedSOPSequence] == [0xA700, 0xA700]
    assert "ReferencedSOPSequence" not in answer
    assert _stats(node)["studies"] == 1
