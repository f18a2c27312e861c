"""The admin CLI against a real archive, a real DCMTK storescp and a real PostgreSQL."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.datagen import pydicom_test_files, write_ct_series
from tests.support.net import free_port, wait_port
from tests.support.proc import cli, need


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def j(p: subprocess.CompletedProcess[str]):  # type: ignore[no-untyped-def]
    return json.loads(p.stdout)


def test_import_ls_show_stats_delete(archive: Path, tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", n=5, patient_id="PA", patient_name="Müller^Jürgen", rows=32, cols=32)
    write_ct_series(tmp_path / "b", n=3, patient_id="PB", rows=32, cols=32, study_date="20230301")
    r = j(cli("import", str(tmp_path / "a"), str(tmp_path / "b"), "--storage", str(archive), "--json"))
    assert r["summary"] == {"imported": 8, "failed": 0}

    again = j(cli("import", str(a[0]), "--storage", str(archive), "--json"))
    assert again["files"][0]["action"] == "kept"

    st = j(cli("stats", "--storage", str(archive), "--json"))
    assert (st["patients"], st["studies"], st["series"], st["instances"]) == (2, 2, 2, 8)
    assert st["bytes"] == sum(p.stat().st_size for p in (archive / "objects").rglob("*.dcm"))

    pats = j(cli("ls", "patients", "-k", "PatientName=Müller*", "--storage", str(archive), "--json"))
    assert [p["PatientID"] for p in pats] == ["PA"]
    studies = j(cli("ls", "studies", "-k", "StudyDate=20230301", "--storage", str(archive), "--json"))
    assert len(studies) == 1 and studies[0]["PatientID"] == "PB"
    assert studies[0]["NumberOfStudyRelatedInstances"] == 3
    inst = j(cli("ls", "instances", "-k", "PatientID=PA", "--storage", str(archive), "--json"))
    assert len(inst) == 5 and all(Path(i["path"]).is_absolute() and Path(i["path"]).is_file() for i in inst)
    assert cli("ls", "instances", "-k", "NoSuchKeyword=1", "--storage", str(archive), check=False).returncode == 2

    sop = str(dcmread(a[0]).SOPInstanceUID)
    show = j(cli("show", sop, "--storage", str(archive), "--json"))
    assert show["level"] == "IMAGE" and Path(show["path"]).is_absolute()
    assert show["header"]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    study_uid = show["StudyInstanceUID"]
    assert j(cli("show", study_uid, "--storage", str(archive), "--json"))["level"] == "STUDY"
    assert cli("show", "1.2.3.4.5", "--storage", str(archive), check=False).returncode == 1

    d = j(cli("delete", study_uid, "--storage", str(archive), "--json"))
    assert d["instances_deleted"] == 5 and d["files_removed"] == 5
    st = j(cli("stats", "--storage", str(archive), "--json"))
    assert (st["patients"], st["studies"], st["instances"]) == (1, 1, 3)
    assert cli("check", "--storage", str(archive)).returncode == 0


def test_import_of_files_without_meta(tmp_path: Path) -> None:
    """Bare data sets (no preamble, no File Meta) get a File Meta and keep every element."""
    srcs = [p for p in pydicom_test_files() if p.name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm")]
    assert len(srcs) == 2
    for src in srcs:  # both carry the same SOP Instance UID: one archive each
        archive = tmp_path / src.stem
        r = j(cli("import", str(src), "--storage", str(archive), "--json"))
        assert r["summary"]["failed"] == 0, r
        stored = dcmread(j(cli("show", r["files"][0]["SOPInstanceUID"], "--storage", str(archive), "--json"))["path"])
        orig = dcmread(src, force=True)
        assert stored.file_meta.TransferSyntaxUID.is_little_endian == orig.original_encoding[1]
        assert [e.tag for e in stored] == [e.tag for e in orig]
        assert all(stored[e.tag].value == e.value for e in orig)


def test_import_reports_bad_files_and_goes_on(archive: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 100)
    good = write_ct_series(tmp_path / "g", n=1, rows=16, cols=16)[0]
    p = cli("import", str(junk), str(good), "--storage", str(archive), "--json", check=False)
    assert p.returncode == 1
    states = {Path(f["path"]).name: f["state"] for f in j(p)["files"]}
    assert states == {"junk.dcm": "failed", good.name: "success"}


def test_check_finds_and_repairs(archive: Path, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", n=4, rows=16, cols=16)
    cli("import", str(tmp_path / "s"), "--storage", str(archive))
    rows = j(cli("ls", "instances", "--storage", str(archive), "--json"))
    missing, corrupt = Path(rows[0]["path"]), Path(rows[2]["path"])  # rows[1] becomes the orphan
    missing.unlink()
    with sqlite3.connect(archive / "index.sqlite") as db:  # a commit that never happened
        db.execute("DELETE FROM instances WHERE SOPInstanceUID = ?", (rows[1]["SOPInstanceUID"],))
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))

    p = cli("check", "--storage", str(archive), "--json", check=False)
    assert p.returncode == 1
    rep = j(p)
    assert len(rep["missing_files"]) == 1 and len(rep["orphan_files"]) == 1 and len(rep["hash_mismatches"]) == 1

    p = cli("check", "--repair", "--storage", str(archive), "--json", check=False)
    assert p.returncode == 1  # a corrupted file cannot be repaired
    assert j(p)["repaired"]["rows_dropped"] == 1 and j(p)["repaired"]["orphans_indexed"] == 1
    corrupt.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))
    assert cli("check", "--storage", str(archive), "--json").returncode == 0
    assert j(cli("stats", "--storage", str(archive), "--json"))["instances"] == 3


def test_send_to_dcmtk_storescp(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", n=12, rows=64, cols=64)
    jpeg = next(p for p in pydicom_test_files() if p.name == "SC_rgb_jpeg_dcmtk.dcm")
    shutil.copy(jpeg, tmp_path / "s" / "jpeg.dcm")
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([need("storescp"), "-aet", "STORESCP", "+xa", "-od", str(out), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = j(cli("send", f"STORESCP@127.0.0.1:{port}", str(tmp_path / "s"), "--json"))
        assert r["summary"] == {"success": 13, "warning": 0, "failed": 0}
        got = {str(dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
        for f in [*files, jpeg]:
            ds = dcmread(f)
            assert dcmread(got[str(ds.SOPInstanceUID)]).PixelData == ds.PixelData
    finally:
        scp.terminate()
        scp.wait()


def test_client_exit_codes(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_ALLOWED_CALLING": "FRIEND"})
    ok = cli("echo", node.peer, "--aet", "FRIEND", "--json")
    assert j(ok)["ok"] is True and j(ok)["rtt_ms"] > 0
    rejected = cli("echo", node.peer, "--aet", "STRANGER", check=False)
    assert rejected.returncode == 4 and "rejected" in rejected.stderr
    nobody = cli("echo", f"X@127.0.0.1:{free_port()}", check=False)
    assert nobody.returncode == 3
    assert cli("echo", "not-a-peer", check=False).returncode == 2
    f = write_ct_series(tmp_path / "s", n=2, rows=16, cols=16)
    sent = cli("send", node.peer, "--aet", "FRIEND", *map(str, f), "--json")
    assert j(sent)["summary"]["success"] == 2
    assert cli("send", node.peer, *map(str, f), check=False).returncode == 4


def test_postgresql_index(tmp_path: Path, pg_url: str) -> None:
    url = pg_url
    write_ct_series(tmp_path / "s", n=6, rows=16, cols=16, patient_name="Ørsted^Hans")
    archive = tmp_path / "archive"
    assert j(cli("import", str(tmp_path / "s"), "--storage", str(archive), "--db", url, "--json"))["summary"][
        "imported"] == 6
    assert j(cli("stats", "--storage", str(archive), "--db", url, "--json"))["instances"] == 6
    pats = j(cli("ls", "patients", "--storage", str(archive), "--db", url, "--json"))
    assert pats[0]["PatientName"] == "Ørsted^Hans"
    assert cli("check", "--storage", str(archive), "--db", url).returncode == 0
    assert not (archive / "index.sqlite").exists()


def test_serve_on_a_busy_port_fails_cleanly(node, tmp_path: Path) -> None:
    p = cli("serve", "--storage", str(tmp_path / "other"), "--host", "127.0.0.1", "--port", str(node.port),
            check=False, timeout=60)
    assert p.returncode == 1
    assert "cannot listen" in p.stderr and "Traceback" not in p.stderr


def test_unreachable_index_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    for args in (["stats"], ["serve", "--port", "0", "--host", "127.0.0.1"]):
        p = cli(*args, "--storage", str(tmp_path / "a"), "--db", url, check=False, timeout=60)
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr and "127.0.0.1" in p.stderr
