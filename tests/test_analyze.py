"""The analysis report against pydicom's own reading of the same bytes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.encaps import generate_fragments

from dicomnode.node.processing.analyze import analyze_file
from tests.support.datagen import pydicom_test_files, write_ct_series, write_multiframe
from tests.support.proc import ROOT, cli


def _pixel_files() -> list[tuple[Path, object]]:
    out = []
    for f in pydicom_test_files():
        try:
            ds = dcmread(f)
            if "PixelData" in ds and ds.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1.99":
                out.append((f, ds))
        except Exception:
            continue
    return out


PIXEL_FILES = _pixel_files()


def codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"]}


def test_offsets_match_pydicom_for_every_test_file() -> None:
    native = encapsulated = 0
    for f, ds in PIXEL_FILES:
        r = analyze_file(f)
        px = r["pixel_data_info"]
        data = f.read_bytes()
        little = ds.original_encoding[1]
        tag = b"\xe0\x7f\x10\x00" if little else b"\x7f\xe0\x00\x10"
        assert data[px["pixel_data_tag_offset"]:px["pixel_data_tag_offset"] + 4] == tag, f.name
        frames = r["frame_info"]["frame_offsets"]
        if px["value_length"] is None:
            encapsulated += 1
            got = [data[fr["offset"]:fr["offset"] + fr["length"]] for frm in frames for fr in frm["fragments"]]
            assert got == list(generate_fragments(ds.PixelData))[1:], f.name  # [0] is the offset table
        else:
            native += 1
            assert data[px["pixel_data_offset"]:px["pixel_data_offset"] + len(ds.PixelData)] == ds.PixelData, f.name
            size = px["expected_frame_size"]
            for frm in frames:
                i = frm["frame"] - 1
                assert data[frm["offset"]:frm["offset"] + frm["length"]] == ds.PixelData[i * size:i * size + frm["length"]]
            if size and "PIXEL_DATA_SHORT" not in codes(r):
                assert len(frames) == r["frame_info"]["frame_count"], f.name
    assert native >= 30 and encapsulated >= 30, (native, encapsulated)


def test_multiframe_encapsulated_frames() -> None:
    """Frames of multi-frame encapsulated files are grouped as pydicom groups them."""
    from pydicom.encaps import generate_frames

    checked = 0
    for f, ds in PIXEL_FILES:
        try:
            nf = int(ds.get("NumberOfFrames", 1) or 1)
        except ValueError:
            continue  # a malformed NumberOfFrames: pydicom cannot say what the frames are either
        if nf < 2 or not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            continue
        r = analyze_file(f)
        data = f.read_bytes()
        ours = [b"".join(data[x["offset"]:x["offset"] + x["length"]] for x in fr["fragments"])
                for fr in r["frame_info"]["frame_offsets"]]
        assert ours == list(generate_frames(ds.PixelData, number_of_frames=nf)), f.name
        checked += 1
    assert checked >= 3


def test_truncated_file_is_flagged() -> None:
    f = next(p for p in pydicom_test_files() if p.name == "MR_truncated.dcm")
    r = analyze_file(f)
    assert {"PIXEL_DATA_SHORT", "TRUNCATED_FILE"} <= codes(r)
    assert any("not enough pixel data" in x["message"] for x in r["findings"])


def test_wrong_vr_encoding_is_flagged() -> None:
    """SC_rgb_jpeg.dcm says Explicit VR in its meta but is encoded with implicit VR."""
    f = next(p for p in pydicom_test_files() if p.name == "SC_rgb_jpeg.dcm")
    r = analyze_file(f)
    assert "VR_MISMATCH" in codes(r)
    assert r["pixel_data_info"]["value_length"] is None and r["frame_info"]["frame_offsets"]


def test_file_without_preamble(tmp_path: Path) -> None:
    f = next(p for p in pydicom_test_files() if p.name == "no_meta.dcm")
    r = analyze_file(f)
    assert "NO_PREAMBLE" in codes(r) and "pixel_data_info" not in r
    # A bare data set (no preamble, no File Meta) is still analysed with --force.
    ds = dcmread(write_ct_series(tmp_path / "s", n=1, rows=16, cols=16)[0])
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    forced = analyze_file(bare, force=True)
    assert {"NO_PREAMBLE", "NO_TRANSFER_SYNTAX"} <= codes(forced)
    off = forced["pixel_data_info"]["pixel_data_offset"]
    assert bare.read_bytes()[off:] == ds.PixelData
    assert forced["dicom_identifiers"]["SOPInstanceUID"] == ds.SOPInstanceUID


def test_inconsistent_0028_group(tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
    ds = dcmread(src)
    ds.BitsStored, ds.HighBit = 20, 10
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.NumberOfFrames = 3  # but one frame of data
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    # pydicom pads to even length when writing, so make the length odd by hand
    tag_at = analyze_file(bad)["pixel_data_info"]["pixel_data_tag_offset"]
    raw = bytearray(bad.read_bytes())
    length = struct.unpack_from("<I", raw, tag_at + 8)[0]
    struct.pack_into("<I", raw, tag_at + 8, length - 1)
    bad.write_bytes(bytes(raw[:-1]))
    c = codes(analyze_file(bad))
    assert {"BITS_STORED_GT_ALLOCATED", "HIGH_BIT_MISMATCH", "MONOCHROME1_WITH_VOI", "PIXEL_DATA_SHORT",
            "ODD_LENGTH"} <= c


def test_missing_pixel_data(tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
    ds = dcmread(src)
    del ds.PixelData
    p = tmp_path / "nopix.dcm"
    ds.save_as(p)
    assert "MISSING_PIXEL_DATA" in codes(analyze_file(p))


@pytest.mark.slow
def test_gigabyte_object_never_read(tmp_path: Path) -> None:
    """Analysing a 1 GB object reads a few KB, whatever its size, in a process that stays small."""
    big = write_multiframe(tmp_path / "big.dcm", sparse=True)
    code = (
        "import json, sys\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would include pytest's own RSS
        "def hwm_kb():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
        "from dicomnode.node.processing.analyze import analyze_file\n"
        "def rchar():\n"
        "    return int([l for l in open('/proc/self/io') if l.startswith('rchar')][0].split()[1])\n"
        "before = rchar()\n"
        f"r = analyze_file({str(big)!r})\n"
        "print(json.dumps({'read': rchar() - before, 'frames': len(r['frame_info']['frame_offsets']),\n"
        "  'rss_mb': hwm_kb() / 1024, 'codes': [f['code'] for f in r['findings']]}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=ROOT).stdout)
    assert big.stat().st_size > 1_000_000_000
    assert out["frames"] == 1000 and out["codes"] == []
    assert out["read"] < 1_000_000, out
    assert out["rss_mb"] < 150, out


def test_analyze_cli(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "in", n=3, rows=16, cols=16)
    trunc = next(p for p in pydicom_test_files() if p.name == "MR_truncated.dcm")
    out = tmp_path / "out"
    p = cli("analyze", str(tmp_path / "in"), str(trunc), "-o", str(out), "--json", check=False)
    assert p.returncode == 1  # a file with error findings
    reports = json.loads(p.stdout)
    assert len(reports) == 4
    assert sorted(x.name for x in out.iterdir()) == sorted(
        [f"{f.stem}_analysis.json" for f in files] + ["MR_truncated_analysis.json", "series_analysis.json"])
    series = json.loads((out / "series_analysis.json").read_text())
    assert sum(len(s["instances"]) for s in series["series"].values()) == 4
    ok = cli("analyze", str(files[0]), "--json")
    assert json.loads(ok.stdout)[0]["findings"] == []
