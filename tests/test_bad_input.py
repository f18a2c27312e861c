"""Bad input gets the right DICOM status, leaves nothing behind, and the node keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.support.datagen import pydicom_test_files, write_ct_series, write_multiframe
from tests.support.dimse import send_raw
from tests.support.node import storescu
from tests.support.proc import need, run
from tests.support.wait import wait_for


def _craft(tmp_path: Path, name: str, mutate) -> Path:  # type: ignore[no-untyped-def]
    src = write_ct_series(tmp_path / f"src-{name}", n=1, rows=16, cols=16)[0]
    ds = dcmread(src)
    mutate(ds)
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out, enforce_file_format=False)
    return out


def assert_nothing_left(node) -> None:
    assert json.loads(node.cli("stats", "--json").stdout)["instances"] == 0
    assert not list((node.storage / "objects").rglob("*.dcm"))
    wait_for(lambda: not list((node.storage / "tmp").iterdir()), 5, 0.1, message="temp files removed")


def assert_still_serving(node) -> None:
    assert run([need("echoscu"), "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0


def test_unparsable_dataset_is_0xC000(node, tmp_path: Path) -> None:
    good = write_ct_series(tmp_path / "g", n=1, rows=16, cols=16)[0]
    raw = good.read_bytes()
    ds = dcmread(good, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    # A data set whose first element claims a length far beyond the end of the data.
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw[:meta_end] + b"\x08\x00\x05\x00CS\xff\xff" + b"ISO_IR 100" * 3)
    rsp = send_raw(node, bad)
    assert rsp.Status & 0xF000 == 0xC000, hex(rsp.Status)
    assert "ErrorComment" in rsp and rsp.ErrorComment
    assert_nothing_left(node)
    assert_still_serving(node)


def test_instance_uid_mismatch_is_0xA900(node, tmp_path: Path) -> None:
    f = _craft(tmp_path, "mismatch", lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", generate_uid()))
    rsp = send_raw(node, f)
    assert rsp.Status == 0xA900
    assert "SOP Instance UID differs from request" in str(rsp.ErrorComment)
    assert_nothing_left(node)


def test_invalid_instance_uid_is_refused(node, tmp_path: Path) -> None:
    def mutate(ds: Dataset) -> None:
        ds.SOPInstanceUID = "1.2.3.abc"
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.abc"

    rsp = send_raw(node, _craft(tmp_path, "invalid", mutate))
    assert rsp.Status == 0xC001
    assert "SOPInstanceUID" in str(rsp.ErrorComment)
    assert_nothing_left(node)


def test_missing_instance_uid_is_refused(node, tmp_path: Path) -> None:
    rsp = send_raw(node, _craft(tmp_path, "nouid", lambda ds: delattr(ds, "SOPInstanceUID")))
    assert rsp.Status == 0xC001
    assert_nothing_left(node)


def test_real_file_without_study_uid_is_refused(node) -> None:
    f = next(p for p in pydicom_test_files() if p.name == "SC_rgb_jls_lossy_line.dcm")
    p = storescu(node, f, extra=["-v", "-R", "-xu"])
    assert "CannotUnderstand" in p.stderr + p.stdout
    assert "StudyInstanceUID is missing" in node.log()
    assert_nothing_left(node)


def test_association_aborted_mid_transfer_leaves_nothing(node, tmp_path: Path) -> None:
    big = write_multiframe(tmp_path / "big.dcm", frames=400, rows=724, cols=724, random=False)  # 420 MB
    proc = subprocess.Popen(["storescu", "-aec", node.aet, "127.0.0.1", str(node.port), str(big)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = node.storage / "tmp"
    def started() -> bool:
        parts = list(tmp.glob("*.part"))
        return bool(parts) and parts[0].stat().st_size > 20_000_000

    wait_for(started, 60, 0.01, message="the transfer to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert_nothing_left(node)
    assert "aborted" in node.log()
    assert_still_serving(node)


def test_free_space_reserve_gives_0xA700(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_MIN_FREE_MB": str(10**9)})
    f = write_ct_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
    rsp = send_raw(node, f)
    assert rsp.Status == 0xA700
    assert_nothing_left(node)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_gives_0xA700_and_recovers(make_node, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        node = make_node("small/archive", extra=["--db", f"sqlite:///{tmp_path / 'index.sqlite'}"])
        big = write_multiframe(tmp_path / "big.dcm", frames=20, rows=724, cols=724, random=False)  # 21 MB
        rsp = send_raw(node, big)
        assert rsp.Status == 0xA700
        assert "disk full" in str(rsp.ErrorComment)
        assert_nothing_left(node)
        f = write_ct_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        assert send_raw(node, f).Status == 0x0000
        node.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_duplicate_keep(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_DUPLICATE_POLICY": "keep"})
    first, second = _two_versions(tmp_path)
    assert send_raw(node, first).Status == 0
    assert send_raw(node, second).Status == 0
    rows = json.loads(node.cli("ls", "instances", "--json").stdout)
    assert len(rows) == 1
    assert dcmread(rows[0]["path"]).StudyDescription == "first"
    assert "duplicate kept" in node.log()
    assert len(list((node.storage / "objects").rglob("*.dcm"))) == 1


def test_duplicate_overwrite(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_DUPLICATE_POLICY": "overwrite"})
    first, second = _two_versions(tmp_path)
    assert send_raw(node, first).Status == 0
    assert send_raw(node, second).Status == 0
    rows = json.loads(node.cli("ls", "instances", "--json").stdout)
    assert len(rows) == 1
    assert dcmread(rows[0]["path"]).StudyDescription == "second"
    assert len(list((node.storage / "objects").rglob("*.dcm"))) == 1, "old version not removed"
    assert node.cli("check").returncode == 0


def test_duplicate_reject(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_DUPLICATE_POLICY": "reject"})
    first, second = _two_versions(tmp_path)
    assert send_raw(node, first).Status == 0
    rsp = send_raw(node, second)
    assert rsp.Status == 0x0111
    assert "duplicate" in str(rsp.ErrorComment).lower()
    rows = json.loads(node.cli("ls", "instances", "--json").stdout)
    assert dcmread(rows[0]["path"]).StudyDescription == "first"
    assert len(list((node.storage / "objects").rglob("*.dcm"))) == 1


def _two_versions(tmp_path: Path) -> tuple[Path, Path]:
    src = write_ct_series(tmp_path / "dup", n=1, rows=16, cols=16)[0]
    ds = dcmread(src)
    ds.StudyDescription = "first"
    a = tmp_path / "a.dcm"
    ds.save_as(a)
    ds.StudyDescription = "second"
    b = tmp_path / "b.dcm"
    ds.save_as(b)
    return a, b


def test_unknown_calling_ae_is_rejected(make_node) -> None:
    node = make_node(env={"DICOMNODE_ALLOWED_CALLING": "MODALITY1,MODALITY2"})
    echoscu = need("echoscu")
    ok = run([echoscu, "-aet", "MODALITY2", "-aec", node.aet, "127.0.0.1", str(node.port)])
    assert ok.returncode == 0, ok.stderr
    bad = run([echoscu, "-aet", "INTRUDER", "-aec", node.aet, "127.0.0.1", str(node.port)])
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr
    assert_still_serving_as(node, "MODALITY1")


def test_wrong_called_ae_is_rejected(node) -> None:
    p = run([need("echoscu"), "-aec", "SOMEONEELSE", "127.0.0.1", str(node.port)])
    assert p.returncode != 0
    assert "Called AE Title Not Recognized" in p.stderr


def assert_still_serving_as(node, calling: str) -> None:
    assert run([need("echoscu"), "-aet", calling, "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0


def test_verification_context_only(node) -> None:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_private_sop_class_only_when_configured(make_node, tmp_path: Path) -> None:
    csa = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage

    def private(ds: Dataset) -> None:
        ds.SOPClassUID = csa
        ds.file_meta.MediaStorageSOPClassUID = csa

    f = _craft(tmp_path, "csa", private)
    plain = make_node("plain")
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(csa)
    assoc = ae.associate("127.0.0.1", plain.port, ae_title=plain.aet)
    assert not assoc.is_established  # no acceptable presentation context
    configured = make_node("configured", env={"DICOMNODE_EXTRA_SOP_CLASSES": csa})
    assert send_raw(configured, f).Status == 0
    rows = json.loads(configured.cli("ls", "instances", "--json").stdout)
    assert [r["SOPClassUID"] for r in rows] == [csa]
