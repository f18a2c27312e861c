"""Media: `export dicomdir`, `ls-media` and `import` of a DICOMDIR, checked with tools nobody here
wrote (dicom3tools' dciodvfy, DCMTK's dcmmkdir and dcmdump, pydicom's FileSet) and against
hostile media."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet

from dicomnode.node.media.dicomdir import read_media, walk
from tests.support.datagen import pydicom_test_files, write_phantom_ct
from tests.support.proc import cli, need, run

REAL = ("CT_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "examples_palette.dcm", "MR_small_bigendian.dcm",
        "rtdose.dcm", "SC_rgb_rle.dcm")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("media")
    write_phantom_ct(root / "ct", 4, rows=32, cols=32)
    real = {p.name: p for p in pydicom_test_files()}
    (root / "real").mkdir()
    for name in REAL:
        shutil.copy(real[name], root / "real" / name)
    storage = root / "archive"
    cli("import", "--storage", str(storage), str(root / "ct"), str(root / "real"))
    listed = json.loads(cli("ls", "instances", "--storage", str(storage), "--json").stdout)
    stored = {r["SOPInstanceUID"]: Path(r["path"]) for r in listed}
    return {"root": root, "storage": storage, "stored": stored}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dciodvfy_errors(path: Path) -> list[str]:
    need("dciodvfy")
    p = run(["dciodvfy", str(path)])
    lines = (p.stdout + p.stderr).splitlines()
    warnings = [line for line in lines if line.startswith("Warning")]
    if warnings:
        print(f"dciodvfy {path.name}: {len(warnings)} warnings, e.g. {warnings[:3]}")
    return [line for line in lines if line.startswith("Error")]


def _records(dicomdir: Path) -> set[tuple[str, str, str]]:
    media = read_media(dicomdir)
    return {(r.type, r.file_id or "", r.keys.get("ReferencedSOPInstanceUIDInFile", "")) for _, r in walk(media.records)
            if r.file_id}


def test_export_then_import_keeps_every_byte(archive: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "cd"
    done = cli("export", "dicomdir", str(out), "-k", "PatientID=*", "--storage", str(archive["storage"]), "--json")
    report = json.loads(done.stdout)
    stored = archive["stored"]
    assert report["instances"] == len(stored) and not report["failed"]
    assert _dciodvfy_errors(out / "DICOMDIR") == []
    assert run(["dcmdump", str(out / "DICOMDIR")]).returncode == 0
    # pydicom's FileSet reads it and lists every instance; the files are the archived ones, byte for byte
    fs = FileSet(out / "DICOMDIR")
    assert {i.SOPInstanceUID for i in fs} == set(stored)
    for instance in fs:
        assert all(len(part) <= 8 and part == part.upper() for part in Path(instance.FileID).parts)
        assert _sha(Path(instance.path)) == _sha(stored[instance.SOPInstanceUID])
    # ls-media shows the tree without importing
    tree = json.loads(cli("ls-media", str(out), "--json").stdout)
    assert tree["files"] == len(stored) and not tree["missing"] and not tree["problems"]
    assert {r["type"] for r in tree["records"]} == {"PATIENT"}
    # into a fresh archive: the same instances, the same bytes
    fresh = tmp_path / "fresh"
    imported = json.loads(cli("import", "--storage", str(fresh), str(out), "--json").stdout)
    assert imported["summary"] == {"imported": len(stored), "failed": 0}
    again = {r["SOPInstanceUID"]: Path(r["path"])
             for r in json.loads(cli("ls", "instances", "--storage", str(fresh), "--json").stdout)}
    assert set(again) == set(stored)
    assert all(_sha(again[uid]) == _sha(stored[uid]) for uid in stored)


def test_general_profile_agrees_with_dcmmkdir(archive: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "general"
    study = dcmread(next(iter(archive["stored"].values())), stop_before_pixels=True)
    cli("export", "dicomdir", str(out), "-k", "PatientID=*", "--profile", "general", "--storage", str(archive["storage"]))
    assert _dciodvfy_errors(out / "DICOMDIR") == []
    for f in out.rglob("*"):
        if f.is_file() and f.name != "DICOMDIR":
            ds = dcmread(f)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", f
            if "PixelData" in ds:
                assert ds.pixel_array.size
    # DCMTK's dcmmkdir, given the same files, makes the same records
    need("dcmmkdir")
    theirs = tmp_path / "dcmtk"
    shutil.copytree(out, theirs, ignore=shutil.ignore_patterns("DICOMDIR"))
    made = run(["dcmmkdir", "+r", "+I", "+id", str(theirs), "+D", str(theirs / "DICOMDIR")])
    assert made.returncode == 0, made.stderr
    assert _records(theirs / "DICOMDIR") == _records(out / "DICOMDIR")
    assert study.SOPInstanceUID in {uid for _, _, uid in _records(out / "DICOMDIR")}


def test_zip_and_refusals(archive: dict[str, Any], tmp_path: Path) -> None:
    uid = dcmread(next(iter(archive["stored"].values())), stop_before_pixels=True).StudyInstanceUID
    z = tmp_path / "study.zip"
    cli("export", "dicomdir", str(z), str(uid), "--zip", "--storage", str(archive["storage"]))
    with zipfile.ZipFile(z) as f:
        names = f.namelist()
        assert "DICOMDIR" in names and all(n == "DICOMDIR" or n.startswith("PT") for n in names)
        f.extractall(tmp_path / "unzipped")
    assert FileSet(tmp_path / "unzipped" / "DICOMDIR")
    again = cli("export", "dicomdir", str(z), str(uid), "--zip", "--storage", str(archive["storage"]), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    refused = cli("export", "dicomdir", str(busy), str(uid), "--storage", str(archive["storage"]), check=False)
    assert refused.returncode == 1 and "not an empty folder" in refused.stderr
    assert [p.name for p in busy.iterdir()] == ["x"]
    nothing = cli("export", "dicomdir", str(tmp_path / "n"), "--storage", str(archive["storage"]), check=False)
    assert nothing.returncode == 2


def _exported(archive: dict[str, Any], where: Path) -> Path:
    cli("export", "dicomdir", str(where), "-k", "PatientID=PHANTOM", "--storage", str(archive["storage"]))
    return where / "DICOMDIR"


def test_hostile_media(archive: dict[str, Any], tmp_path: Path) -> None:
    # a record pointing outside the file-set, at a real DICOM file there: refused, not imported
    dd = _exported(archive, tmp_path / "escape" / "cd")
    outside = tmp_path / "escape" / "SECRET"
    shutil.copy(next(iter(archive["stored"].values())), outside)
    ds = dcmread(dd)
    leaf = next(r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE")
    leaf.ReferencedFileID = ["..", "SECRET"]
    ds.save_as(dd)
    fresh = tmp_path / "a1"
    got = cli("import", "--storage", str(fresh), str(dd.parent), "--json", check=False)
    assert got.returncode == 1
    rows = json.loads(got.stdout)["files"]
    assert any("outside the file-set" in r["comment"] for r in rows)
    assert json.loads(got.stdout)["summary"]["imported"] == 3
    assert all("SECRET" not in r["path"] or r["state"] == "failed" for r in rows)

    # a loop of records: a clear error, at once
    dd = _exported(archive, tmp_path / "loop")
    ds = dcmread(dd)
    first = ds.DirectoryRecordSequence[0]
    first.OffsetOfTheNextDirectoryRecord = int(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
    ds.save_as(dd)
    listed = cli("ls-media", str(dd), "--json", check=False, timeout=30)
    assert listed.returncode == 1 and any("loop" in p for p in json.loads(listed.stdout)["problems"])

    # a 0-byte referenced file and a missing one: reported, the rest imported, exit 1
    dd = _exported(archive, tmp_path / "broken")
    files = sorted(p for p in dd.parent.rglob("IM*") if p.is_file())
    files[0].write_bytes(b"")
    files[1].unlink()
    got = cli("import", "--storage", str(tmp_path / "a2"), str(dd), "--json", check=False)
    assert got.returncode == 1
    answer = json.loads(got.stdout)
    assert answer["summary"]["imported"] == 2 and answer["summary"]["failed"] == 2
    comments = " ".join(r["comment"] for r in answer["files"] if r["state"] == "failed")
    assert "missing" in comments

    # not a DICOMDIR at all
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "DICOMDIR").write_bytes(b"\0" * 200)
    assert cli("ls-media", str(bogus), check=False).returncode == 1
