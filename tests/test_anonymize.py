"""De-identification: every row of PS3.15 Table E.1-1, the options, pseudonyms, and the pipeline action.

The expectations are computed here from the reference table (../shared or
the project's copy), independently of the code's own resolution.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.node.processing.analyze import analyze_file
from dicomnode.node.processing.anonymize.apply import Profile as Settings
from dicomnode.node.processing.anonymize.apply import anonymize_file
from dicomnode.node.processing.anonymize.keys import Pseudonyms
from dicomnode.node.processing.anonymize.profile import OPTIONS, TABLE
from tests.support.datagen import pydicom_test_files
from tests.support.node import storescu
from tests.support.proc import cli
from tests.support.wait import wait_for

ROWS = json.loads(TABLE.read_text())["attributes"]
KEY = b"k" * 32
VALUES = {"AE": "SOMEAE", "AS": "045Y", "CS": "SOMECODE", "DA": "20200214", "DS": "1.5", "DT": "20200214101010",
          "FL": 1.5, "FD": 2.5, "IS": "7", "LO": "Some Long", "LT": "Some text about Doe", "PN": "Doe^John",
          "SH": "Short", "SL": -3, "SS": -2, "ST": "Short text", "TM": "101010", "UC": "Unlimited",
          "UI": "1.2.3.4.5.6", "UL": 9, "UR": "http://example.org/x", "US": 4, "UT": "Unlimited text",
          "OB": b"\x01\x02", "OW": b"\x01\x02", "SV": 5, "UV": 6, "AT": 0x00100010, "UN": b"\x01\x02",
          "OF": b"\x01" * 4, "OD": b"\x01" * 8, "OL": b"\x01" * 4, "OV": b"\x01" * 8}
SEQ_HOLDER = 0x00089215  # Derivation Code Sequence: not in the table, kept, its items de-identified


def _tag(text: str) -> int | None:
    try:
        return int(text.strip("()").replace(",", ""), 16)
    except ValueError:
        return None


def table_rows() -> list[tuple[int, dict]]:
    out = []
    for r in ROWS:
        t = _tag(r["tag"])
        if t is None or keyword_for_tag(t) != r["keyword"] or t >> 16 in (0x0000, 0x0002):
            continue  # command and file meta elements cannot be in a data set
        out.append((t, r))
    return out


def _value(vr: str, tag: int) -> object:
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Doe^John"
        item.ReferencedSOPInstanceUID = "1.2.3.4.5.7"
        item.CodeValue = "X1"
        item.TextValue = "Finding about Doe"
        return Sequence([item])
    return VALUES.get(vr, "x")


def everything_file(path: Path) -> Path:
    """A file carrying every attribute of the table at the top level and inside a kept sequence."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item = Dataset()
    for tag, r in table_rows():
        vr = dictionary_VR(tag).split(" or ")[0]
        ds.add_new(tag, vr, _value(vr, tag))
        if vr != "SQ":
            item.add_new(tag, vr, _value(vr, tag))
    ds.add_new(SEQ_HOLDER, "SQ", Sequence([item]))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "PID-42"
    ds.add_new(0x00190010, "LO", "ACME PRIVATE")
    ds.add_new(0x00191001, "LO", "private patient note")
    ds.add_new(0x00190010 | 0x0001, "LO", "SIEMENS MR HEADER")  # creator of block 0x11 -> (0019,11xx)
    ds.add_new(0x0019110C, "IS", "1000")  # B_value: on the safe list
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = struct.pack("<4H", 1, 2, 3, 4)
    ds.save_as(path, enforce_file_format=True)
    return path


def run(src: Path, dst: Path, options: frozenset[str] = frozenset(), key: bytes = KEY) -> Dataset:
    anonymize_file(src, dst, Settings(options), Pseudonyms(key))
    return dcmread(dst)


def outcome(ds: Dataset, tag: int) -> str:
    """What became of an attribute: removed, empty, or its value's repr."""
    if tag not in ds:
        return "removed"
    v = ds[tag].value
    if v in (None, "", b"") or (ds[tag].VR == "SQ" and len(v) == 0):
        return "empty"
    return repr(v) if ds[tag].VR != "SQ" else "SQ" + repr([sorted((e.keyword, str(e.value)) for e in i) for i in v])


def allowed(code: str) -> set[str]:
    return set(code.replace("U*", "U").split("/"))


def check_row(tag: int, code: str, before: Dataset, after: Dataset) -> str | None:
    """Why the attribute does not end as its code allows, or None."""
    vr = dictionary_VR(tag).split(" or ")[0]
    got = outcome(after, tag)
    orig = outcome(before, tag)
    ok = set()
    for c in allowed(code):
        if c == "X" and got == "removed":
            ok.add(c)
        if c == "Z" and (got == "empty" or keyword_for_tag(tag) in ("PatientID", "PatientName")):
            ok.add(c)
        if c == "D" and got not in ("removed", "empty") and (vr == "SQ" or got != orig or vr == "UI"):
            ok.add(c)
        if c == "K" and got == orig:
            ok.add(c)
        if c == "U" and (vr == "SQ" and got != "removed" or str(after[tag].value if tag in after else "")
                         .startswith("2.25.")):
            ok.add(c)
        if c == "C" and got != "removed":
            ok.add(c)
    return None if ok else f"{keyword_for_tag(tag)} ({code}): {orig} -> {got}"


def test_every_row_of_the_table_at_top_level_and_in_sequences(tmp_path: Path) -> None:
    src = everything_file(tmp_path / "all.dcm")
    before, after = dcmread(src), run(src, tmp_path / "out.dcm")
    problems = [p for tag, r in table_rows() if (p := check_row(tag, r["basic"], before, after))]
    item_b, item_a = before[SEQ_HOLDER].value[0], after[SEQ_HOLDER].value[0]
    problems += [f"in sequence: {p}" for tag, r in table_rows() if dictionary_VR(tag) != "SQ"
                 and (p := check_row(tag, r["basic"], item_b, item_a))]
    assert not problems, "\n".join(problems[:40])
    # items of sequences the profile keeps or dummies are de-identified too
    for tag, r in table_rows():
        if tag in after and after[tag].VR == "SQ" and len(after[tag].value):
            inner = after[tag].value[0]
            assert "PatientName" not in inner or str(inner.PatientName) != "Doe^John"
            assert str(inner.get("ReferencedSOPInstanceUID", "2.25.")).startswith("2.25.")
    # private attributes are gone, creators included; the pixel data is untouched
    assert not any(e.tag.is_private for e in after)
    assert after.PixelData == before.PixelData
    assert after.PatientIdentityRemoved == "YES"
    assert after.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert after.LongitudinalTemporalInformationModified == "REMOVED"
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID != before.SOPInstanceUID


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_exactly_its_column(tmp_path: Path, option: str) -> None:
    src = everything_file(tmp_path / "all.dcm")
    base = run(src, tmp_path / "base.dcm")
    opt = run(src, tmp_path / "opt.dcm", frozenset({option}))
    changed = {tag for tag, _r in table_rows() if outcome(base, tag) != outcome(opt, tag)}
    column = {tag for tag, r in table_rows() if (r["options"] or {}).get(option)}
    # the option's cells that differ from the basic action must change the outcome ...
    must = {tag for tag, r in table_rows() if (r["options"] or {}).get(option) not in (None, r["basic"])}
    assert must - changed == set(), [keyword_for_tag(t) for t in must - changed][:20]
    # ... and nothing outside the column may change (the method attributes aside; a sequence
    # changes with the column's attributes inside it, so its own attributes are compared one by one)
    flat = {tag for tag, _r in table_rows() if dictionary_VR(tag) != "SQ"}
    extra = (changed & flat) - column - {0x00120063, 0x00120064, 0x00280303}
    ib, io = base[SEQ_HOLDER].value[0], opt[SEQ_HOLDER].value[0]
    extra |= {tag for tag in flat if outcome(ib, tag) != outcome(io, tag)} - column
    assert not extra, [keyword_for_tag(t) for t in extra][:20]
    if option == "retain_safe_private":
        assert opt.get(0x0019110C) is not None and opt.get(0x00191001) is None
        assert str(opt[0x00190011].value) == "SIEMENS MR HEADER" and 0x00190010 not in opt
    assert opt.DeidentificationMethodCodeSequence[-1].CodeValue != "113100"


def test_modified_dates_shift_consistently_per_patient(tmp_path: Path) -> None:
    src = everything_file(tmp_path / "all.dcm")
    a = run(src, tmp_path / "a.dcm", frozenset({"retain_long_modified_dates"}))
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert a.StudyDate != "20200214" and len(a.StudyDate) == 8 and a.StudyDate < "20200214"
    b = run(src, tmp_path / "b.dcm", frozenset({"retain_long_modified_dates"}))
    assert a.StudyDate == b.StudyDate  # the same shift for the same patient


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(tmp_path: Path) -> None:
    study = generate_uid()
    files = []
    for i in range(2):
        ds = dcmread(everything_file(tmp_path / f"s{i}.dcm"))
        ds.StudyInstanceUID = study
        ds.PatientID = "SAME"
        ds.save_as(tmp_path / f"s{i}.dcm")
        files.append(tmp_path / f"s{i}.dcm")
    x = [run(f, tmp_path / f"x{i}.dcm") for i, f in enumerate(files)]
    y = run(files[0], tmp_path / "y.dcm")
    z = run(files[0], tmp_path / "z.dcm", key=b"another key, 32 bytes long.....")
    assert x[0].StudyInstanceUID == x[1].StudyInstanceUID == y.StudyInstanceUID != study
    assert x[0].SOPInstanceUID != x[1].SOPInstanceUID
    assert x[0].PatientID == x[1].PatientID == y.PatientID and x[0].PatientID.startswith("ANON-")
    assert z.StudyInstanceUID != y.StudyInstanceUID and z.PatientID != y.PatientID
    assert len(y.StudyInstanceUID) <= 64


def _pixel_bytes(path: Path) -> bytes:
    rep = analyze_file(path)
    px = rep["pixel_data_info"]
    if px.get("pixel_data_offset") is None:
        return b""
    from dicomnode.node.processing.anonymize.apply import _pixel_span

    start, end = _pixel_span(rep)
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def test_every_pydicom_file_anonymizes_with_pixels_byte_identical(tmp_path: Path) -> None:
    done, refused = 0, []
    for f in pydicom_test_files():
        try:
            ds = dcmread(f, stop_before_pixels=True, force=True)
        except Exception:
            continue
        if "SOPInstanceUID" not in ds:
            continue
        out = tmp_path / f"{f.name}.out"
        try:
            after = run(f, out)
        except Exception as exc:
            refused.append(f"{f.name}: {type(exc).__name__}: {exc}")
            continue
        done += 1
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if "PixelData" in after and ts != "1.2.840.10008.1.2.1.99":
            assert _pixel_bytes(out) == _pixel_bytes(f), f.name
        assert after.PatientIdentityRemoved == "YES"
        assert not any(e.tag.is_private for e in after), f.name
        for kw in ("SOPInstanceUID", "SOPClassUID"):
            assert after.get(kw), f"{f.name}: {kw} must stay filled"
        if "StudyInstanceUID" in ds:
            assert str(after.StudyInstanceUID).startswith("2.25.")
    assert done >= 60, refused
    assert not refused, refused


def test_cli_and_pipeline_action(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.datagen import write_ct_series

    files = write_ct_series(tmp_path / "ct", n=2, rows=8, cols=8, patient_id="REAL-ID", patient_name="Real^Name")
    out = tmp_path / "anon"
    p = cli("anonymize", str(tmp_path / "ct"), "-o", str(out), "--key-file", str(tmp_path / "key"), "--json")
    res = json.loads(p.stdout)
    assert res["summary"] == {"anonymized": 2, "failed": 0}
    got = [dcmread(f) for f in out.glob("*.dcm")]
    assert {str(g.PatientID) for g in got} == {got[0].PatientID} and "REAL" not in got[0].PatientID
    assert all(f.name == f"{g.SOPInstanceUID}.dcm" for f, g in zip(sorted(out.glob("*.dcm")), [dcmread(x) for x in
                                                                                           sorted(out.glob("*.dcm"))]))
    # on arrival: two associations, one study; the copies stay one study, linked to their originals
    node = make_node(env={"DICOMNODE_DEFAULT_ACTIONS": "analyze,anonymize"})
    for f in files:
        assert storescu(node, f).returncode == 0
    def both_studies() -> list[dict] | None:
        studies = json.loads(node.cli("ls", "studies", "--json").stdout)
        return studies if len(studies) == 2 and sum(s["NumberOfStudyRelatedInstances"] for s in studies) == 4 \
            else None

    studies = wait_for(both_studies, 60, 0.5, message="the de-identified copies archived")
    assert len(studies) == 2, studies
    anon = next(s for s in studies if s["PatientID"] != "REAL-ID")
    assert anon["NumberOfStudyRelatedInstances"] == 2 and anon["PatientName"].startswith("ANON^")
    orig_uid = str(dcmread(files[0]).SOPInstanceUID)
    shown = json.loads(node.cli("show", orig_uid, "--json").stdout)
    assert shown["derived"] and shown["derived"][0].startswith("anonymized: 2.25.")


def test_burned_in_risk_is_held_back_from_forwarding(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.datagen import write_ct_series
    from tests.support.peers import start_storescp
    from tests.support.toml import remotes, write_toml

    dest = start_storescp(tmp_path / "dest", aet="RESEARCH")
    try:
        conf = write_toml(tmp_path / "node.toml", {
            "pipeline": {"default_actions": ["anonymize+forward:RESEARCH"]},
            "remotes": remotes({"RESEARCH": ("RESEARCH", dest.port, ["store", "find", "move", "get"])})})
        node = make_node(extra=["--config", str(conf)])
        ct = write_ct_series(tmp_path / "ct", n=1, rows=8, cols=8)[0]
        us = dcmread(ct)
        us.Modality = "US"
        us.SOPInstanceUID = generate_uid()
        us.file_meta.MediaStorageSOPInstanceUID = us.SOPInstanceUID
        us.save_as(tmp_path / "us.dcm")
        assert storescu(node, ct, tmp_path / "us.dcm").returncode == 0
        def settled() -> list[dict] | None:
            jobs = json.loads(node.cli("jobs", "--json").stdout)["jobs"]
            return jobs if jobs and all(j["state"] in ("done", "failed") for j in jobs) else None

        jobs = wait_for(settled, 60, 0.5, message="every job done or failed")
        states = {j["state"] for j in jobs}
        assert states == {"done", "failed"}, jobs
        failed = next(j for j in jobs if j["state"] == "failed")
        assert "held back" in failed["last_error"] and "US" in failed["last_error"]
        received = [dcmread(f) for f in dest.folder.iterdir()]
        assert len(received) == 1 and received[0].Modality == "CT" and received[0].PatientIdentityRemoved == "YES"
    finally:
        dest.stop()
