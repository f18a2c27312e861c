"""Conversion: every decodable pydicom file, pixel-level checks of the display pipeline, videos read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.node.processing.convert import Options, convert_file
from dicomnode.node.processing.display import DisplayError, Window
from tests.support.datagen import pydicom_test_files
from tests.support.node import storescu
from tests.support.proc import cli
from tests.support.wait import wait_for


def _decodable(f: Path) -> Dataset | None:
    try:
        ds = dcmread(f, force=True)
        if "PixelData" not in ds:
            return None
        ds.pixel_array
        return ds
    except Exception:
        return None


def test_every_decodable_pydicom_file_converts(tmp_path: Path) -> None:
    import av

    done = 0
    for f in pydicom_test_files():
        ds = _decodable(f)
        if ds is None:
            continue
        out = convert_file(f, tmp_path, f.stem, Options())
        done += 1
        n = int(ds.get("NumberOfFrames") or 1)
        if n == 1:
            png = Image.open(tmp_path / f"{f.stem}.png")
            assert png.size == (ds.Columns, ds.Rows), f.name
        else:
            with av.open(str(tmp_path / f"{f.stem}.mp4")) as c:
                assert sum(1 for _ in c.decode(video=0)) == n, f.name
            assert Image.open(tmp_path / f"{f.stem}.gif").n_frames == n, f.name
        assert json.loads((tmp_path / f"{f.stem}.json").read_text())  # DICOM JSON, parses
        assert "(0008,0016)" in (tmp_path / f"{f.stem}.txt").read_text() or "SOP" in out.files[0].read_text()
    assert done >= 60


def ct(path: Path, stored: list[int], photometric: str = "MONOCHROME2", signed: bool = True,
       window: tuple[float, float] | None = (40, 400), frames: int = 1, rows: int = 2, cols: int = 2) -> Path:
    """A CT whose stored values are known: HU = stored - 1024."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    arr = np.array(stored * frames, dtype=np.int16 if signed else np.uint16)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_values(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64).ravel()


def linear(hu: float, c: float = 40, w: float = 400) -> int:
    y = (hu - (c - 0.5)) / (w - 1) + 0.5
    return int(round(min(max(y, 0.0), 1.0) * 65535))


def test_known_window_gives_known_grey_and_hu_stay_negative(tmp_path: Path) -> None:
    # air (-1000 HU), water (0), a soft-tissue value (60), bone (1000): stored = HU + 1024
    src = ct(tmp_path / "ct.dcm", [24, 1024, 1084, 2024])
    convert_file(src, tmp_path, "ct", Options(frozenset({"png"})))
    got = png_values(tmp_path / "ct.png")
    assert list(got) == [0, linear(0), linear(60), 65535]
    # an explicit window overrides the data set's; 8-bit output
    convert_file(src, tmp_path, "ct8", Options(frozenset({"png"}), bits=8, window=Window(0, 2000)))
    got8 = png_values(tmp_path / "ct8.png")
    assert got8[0] == round(((-1000 + 0.5) / 1999 + 0.5) * 255) and got8[3] == 255


def test_unsigned_storage_with_negative_intercept_does_not_wrap(tmp_path: Path) -> None:
    src = ct(tmp_path / "u.dcm", [0, 1024, 1084, 3024], signed=False)
    convert_file(src, tmp_path, "u", Options(frozenset({"png"})))
    assert list(png_values(tmp_path / "u.png")) == [0, linear(0), linear(60), 65535]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    a = ct(tmp_path / "m2.dcm", [24, 1024, 1084, 2024])
    b = ct(tmp_path / "m1.dcm", [24, 1024, 1084, 2024], photometric="MONOCHROME1")
    convert_file(a, tmp_path, "m2", Options(frozenset({"png"})))
    convert_file(b, tmp_path, "m1", Options(frozenset({"png"})))
    assert list(png_values(tmp_path / "m1.png")) == [65535 - v for v in png_values(tmp_path / "m2.png")]


def test_no_window_uses_percentiles_not_min_max(tmp_path: Path) -> None:
    values = [1024] * 398 + [1124, 65535 - 40000]  # one extreme outlier must not flatten the image
    src = ct(tmp_path / "auto.dcm", list(range(1024, 1224)) * 2, window=None, rows=20, cols=20)
    convert_file(src, tmp_path, "auto", Options(frozenset({"png"})))
    got = png_values(tmp_path / "auto.png")
    assert got.min() == 0 and got.max() == 65535 and len(set(got.tolist())) > 150
    assert values  # documented intent


def test_colour_files_match_pydicoms_own_conversion() -> None:
    checked = set()
    for f in pydicom_test_files():
        ds = _decodable(f)
        if ds is None or int(ds.get("NumberOfFrames") or 1) != 1:
            continue
        pi = str(ds.PhotometricInterpretation)
        if pi not in ("PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422"):
            continue
        arr = ds.pixel_array  # pydicom converts YBR to RGB and undoes planar configuration
        if pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            bits = int(ds.BitsStored)
        want = arr if arr.dtype == np.uint8 else np.clip(arr.astype(np.int64) >> max(bits - 8, 0), 0, 255)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            convert_file(f, Path(d), "c", Options(frozenset({"png"})))
            got = np.asarray(Image.open(Path(d) / "c.png"))
        assert got.shape == want.shape and (got == want).all(), f.name
        checked.add(pi if ds.get("PlanarConfiguration", 0) == 0 else pi + " planar")
    assert {"PALETTE COLOR", "RGB", "RGB planar", "YBR_FULL"} <= checked, checked


def test_multiframe_videos_read_back(tmp_path: Path) -> None:
    import av

    src = ct(tmp_path / "cine.dcm", list(range(1024, 1024 + 63 * 65)), frames=12, rows=63, cols=65)
    d = dcmread(src)
    d.FrameTime = 40  # ms: 25 frames per second
    d.save_as(src)
    out = convert_file(src, tmp_path, "cine", Options())
    with av.open(str(tmp_path / "cine.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and float(s.average_rate) == 25
        decoded = list(c.decode(s))
    assert len(decoded) == 12 and (decoded[0].width, decoded[0].height) == (66, 64)  # even sides for 4:2:0
    assert Image.open(tmp_path / "cine.gif").n_frames == 12
    assert out.frames == 12
    with pytest.raises(DisplayError):
        convert_file(src, tmp_path, "x", Options(frozenset({"png"}), frame=13))
    convert_file(src, tmp_path, "one", Options(frozenset({"png"}), frame=3))
    assert Image.open(tmp_path / "one_frame3.png").size == (65, 63)


def test_cli_and_pipeline_action(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "in").mkdir()
    src = ct(tmp_path / "in" / "a.dcm", [24, 1024, 1084, 2024])
    p = cli("convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--format", "png", "--8bit",
            "--window", "40,400", "--json")
    assert json.loads(p.stdout)["summary"] == {"converted": 1, "failed": 0}
    assert Image.open(tmp_path / "out" / "a.png").mode == "L"
    bad = cli("convert", str(src), "-o", str(tmp_path / "o2"), "--window", "wide", check=False)
    assert bad.returncode == 2
    node = make_node(env={"DICOMNODE_DEFAULT_ACTIONS": "convert"})
    assert storescu(node, src).returncode == 0
    uid = str(dcmread(src).SOPInstanceUID)
    def recorded() -> dict | None:
        shown = json.loads(node.cli("show", uid, "--json").stdout)
        return shown if len(shown.get("derived", [])) >= 4 else None

    shown = wait_for(recorded, 60, 0.5, message="4 outputs recorded")
    kinds = {d.split(":")[0] for d in shown["derived"]}
    assert {"png", "txt", "json"} <= kinds, shown["derived"]
    png = next(d.split(": ", 1)[1] for d in shown["derived"] if d.startswith("png:") and "thumbnail" not in d)
    assert (node.storage / png).exists() and str(png).startswith("derived/")


@pytest.mark.slow
def test_1gb_multiframe_to_mp4_in_bounded_memory(tmp_path: Path) -> None:
    """1000 frames of 724x724x16 bit: converted frame by frame, peak RSS far below the object's size."""
    from tests.support.datagen import write_multiframe

    big = write_multiframe(tmp_path / "big.dcm", random=False)
    code = ("import re\n"
            "from pathlib import Path\nfrom dicomnode.node.processing.convert import Options, convert_file\n"
            f"o = convert_file(Path({str(big)!r}), Path({str(tmp_path)!r}), 'big', Options(frozenset({{'mp4'}})))\n"
            # VmHWM, not ru_maxrss (which Linux carries across exec: it would include pytest's RSS)
            "print(o.frames, int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    frames, rss_mb = map(int, p.stdout.split())
    assert frames == 1000
    assert rss_mb < 400, f"peak RSS {rss_mb} MB for a {big.stat().st_size // 2**20} MB object"


def test_pipeline_notes_an_undecodable_picture_and_skips_non_images_quietly(make_node) -> None:  # type: ignore[no-untyped-def]
    """JPEG-lossy.dcm is broken 12-bit JPEG no decoder reads: its metadata is still made, and the
    job says why there is no picture, in one log line (no decoder tracebacks). An SR has no picture
    to make: no note."""
    from pydicom.data import get_testdata_file

    broken, report = get_testdata_file("JPEG-lossy.dcm"), get_testdata_file("test-SR.dcm")
    node = make_node(env={"DICOMNODE_DEFAULT_ACTIONS": "convert"})
    assert storescu(node, broken, extra=["-xx"]).returncode == 0  # -xx: propose JPEG 12-bit
    assert storescu(node, report).returncode == 0
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in (broken, report)}
    def finished() -> dict[str, dict] | None:
        rows = json.loads(node.cli("jobs", "--json").stdout)["jobs"]
        jobs = {r["sop_instance_uid"]: r for r in rows if r["state"] in ("done", "failed")}
        return jobs if set(uids) <= set(jobs) else None

    jobs = wait_for(finished, 60, 0.5, message="both jobs finished")
    by_file = {uids[u]: jobs[u] for u in uids}
    assert by_file[broken]["state"] == "done" and "no decoder" in by_file[broken]["last_error"]
    assert by_file[report]["state"] == "done" and by_file[report]["last_error"] is None
    for uid in uids:
        kinds = {d.split(":")[0] for d in json.loads(node.cli("show", uid, "--json").stdout)["derived"]}
        assert kinds == {"txt", "json"}, (uid, kinds)
    assert "Traceback" not in node.log()
    assert "with a note: no decoder" in node.log()


def test_files_that_are_not_dicom_are_refused(tmp_path: Path) -> None:
    """pydicom's force=True parses any bytes into 'elements'; a README must not become a DICOM dump."""
    from pydicom.data import get_testdata_file

    readme = tmp_path / "README.txt"
    readme.write_text("This folder holds the study of Mr Smith.\n" * 20)
    with pytest.raises(DisplayError, match="not a DICOM file"):
        convert_file(readme, tmp_path / "out", "readme", Options(frozenset({"txt", "json"})))
    bare = tmp_path / "bare.dcm"  # a data set without preamble or File Meta, as old modalities wrote
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.preamble = None
    del ds.file_meta
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not bare.read_bytes()[128:132] == b"DICM"
    made = convert_file(bare, tmp_path / "out", "bare", Options(frozenset({"txt", "png"})))
    assert {f.suffix for f in made.files} == {".txt", ".png"}
    convert_file(Path(get_testdata_file("CT_small.dcm")), tmp_path / "out", "orig", Options(frozenset({"png"})))
    assert (png_values(tmp_path / "out" / "bare.png") == png_values(tmp_path / "out" / "orig.png")).all()


def test_lookup_table_frames_equal_per_pixel_arithmetic() -> None:
    """Grey frames of integer pixels go through a lookup table (the LUT chain once per value); over
    every grey file pydicom ships that rescales (or not), the picture is the one per-pixel float
    arithmetic gives, to the bit, signed and unsigned, 8 and 16 bits, windowed or automatic."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.pixels import iter_pixels

    from dicomnode.node.processing import display
    from tests.support.datagen import pydicom_test_files

    checked = 0
    for path in pydicom_test_files():
        try:
            ds = dcmread(path)
            photometric = str(ds.get("PhotometricInterpretation", "")).upper()
            if photometric not in ("MONOCHROME1", "MONOCHROME2") or "ModalityLUTSequence" in ds:
                continue
            arr = next(iter_pixels(path, indices=[0]))
        except Exception:
            continue  # not an image pydicom decodes: the display tests above cover those
        if arr.dtype.kind not in "iu":
            continue
        for window in (None, display.Window(float(arr.mean()), float(arr.std() * 4 + 1))):
            fast = display._display(arr, ds, photometric, window, 0)
            slow = display._display(arr.astype(np.float64), ds, photometric, window, 0)
            if fast.lut is None:  # more possible values than pixels: per pixel, as the slow one
                break
            assert slow.lut is None
            for bits in (8, 16):
                assert np.array_equal(display.to_grey(fast, bits), display.to_grey(slow, bits)), (path.name, bits)
            assert np.array_equal(fast.pixels, slow.pixels), path.name
            checked += 1
    assert checked >= 20
