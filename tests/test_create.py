"""`dicomnode create`: images, arrays, a PDF and a video become DICOM objects that dicom3tools'
dciodvfy accepts, that come back as their sources (pixels, values in their units, document bytes,
video frames), and that land in an archived study where findscu sees them; bad inputs change nothing."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut

from dicomnode.create import Context, from_array, write
from tests.support.datagen import write_phantom_ct
from tests.support.node import Node
from tests.support.proc import cli, need, run


def _errors(path: Path) -> list[str]:
    need("dciodvfy")
    p = run(["dciodvfy", str(path)])
    lines = (p.stdout + p.stderr).splitlines()
    print(path.name, [line for line in lines if line.startswith("Warning")][:5])
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    t = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(t / "grey8.png")
    Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)).save(t / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(t / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(t / "photo.jpg", quality=92)
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(t / "scan.tif")
    np.save(t / "volume.npy", rng.integers(-1000, 3000, (6, 24, 20)).astype(np.int16))
    np.save(t / "field.npy", rng.normal(0, 1, (16, 12)))
    (t / "report.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<< /Type /Catalog >>endobj\ntrailer<< /Root 1 0 R >>\n%%EOF\n")
    with av.open(str(t / "clip.mp4"), "w") as c:
        stream = c.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return {p.name: p for p in t.iterdir()}


def _create(out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> dict[str, Path]:
    got = json.loads(cli("create", *map(str, inputs), "--patient-id", "NEW1", "--patient-name", "New^Patient",
                         "--out", str(out), *extra, "--json").stdout)
    assert got["summary"]["failed"] == 0, got
    return {Path(r["path"]).name: Path(r["comment"]) for r in got["files"]}


def test_images_come_back_pixel_for_pixel(sources: dict[str, Path], tmp_path: Path) -> None:
    names = ("grey8.png", "grey16.png", "rgb.png", "scan.tif")
    made = _create(tmp_path / "out", *(sources[n] for n in names), extra=("--separate",))
    for name in names:
        obj = made[name]
        assert _errors(obj) == [], name
        png = tmp_path / "conv" / name
        bits = ["--8bit"] if name != "grey16.png" else []
        cli("convert", str(obj), "--out", str(png), "--format", "png", *bits)
        rendered = np.asarray(Image.open(next(png.rglob("*.png"))))
        source = np.asarray(Image.open(sources[name]))
        assert rendered.shape[:2] == source.shape[:2] and np.array_equal(rendered[..., :3] if rendered.ndim == 3
                                                                         else rendered, source), name


def test_jpeg_is_kept_as_jpeg(sources: dict[str, Path], tmp_path: Path) -> None:
    obj = _create(tmp_path, sources["photo.jpg"])["photo.jpg"]
    assert _errors(obj) == []
    ds = dcmread(obj)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert next(generate_frames(ds.PixelData, number_of_frames=1)) == sources["photo.jpg"].read_bytes()
    assert ds.pixel_array.shape == (30, 20, 3)


def test_arrays_keep_their_values_and_spacing(sources: dict[str, Path], tmp_path: Path) -> None:
    made = _create(tmp_path, sources["volume.npy"], extra=("--spacing", "2.5,0.7,0.8"))
    obj = made["volume.npy"]
    assert _errors(obj) == []
    ds = dcmread(obj)
    volume = np.load(sources["volume.npy"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.3" and ds.NumberOfFrames == 6
    assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), volume)
    assert [float(x) for x in ds.PixelSpacing] == [0.7, 0.8]
    assert [float(x) for x in ds.SliceLocationVector] == [i * 2.5 for i in range(6)]
    # a float array: 16 bits with a rescale; back within one step of the scale
    field = np.load(sources["field.npy"])
    obj = _create(tmp_path / "f", sources["field.npy"], extra=("--slope", "10", "--intercept", "5"))["field.npy"]
    assert _errors(obj) == []
    ds = dcmread(obj)
    step = float(ds.RescaleSlope)
    assert np.abs(apply_modality_lut(ds.pixel_array, ds) - (field * 10 + 5)).max() <= step / 2 + 1e-9
    # the Python function, as the README shows it
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[1, ..., 0] = 255
    with open(tmp_path / "rgb.dcm", "wb") as f:
        write(from_array(rgb, Context(patient={"PatientID": "X"})), f)
    assert _errors(tmp_path / "rgb.dcm") == []
    assert np.array_equal(dcmread(tmp_path / "rgb.dcm").pixel_array, rgb)


def test_pdf_and_video(sources: dict[str, Path], tmp_path: Path) -> None:
    made = _create(tmp_path, sources["report.pdf"], sources["clip.mp4"])
    pdf = dcmread(made["report.pdf"])
    assert _errors(made["report.pdf"]) == []
    data = sources["report.pdf"].read_bytes()
    assert pdf.EncapsulatedDocument[:len(data)] == data and pdf.EncapsulatedDocumentLength == len(data)
    assert _errors(made["clip.mp4"]) == []
    video = dcmread(made["clip.mp4"])
    assert video.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"
    assert int(video.NumberOfFrames) == 30 and abs(1000 / float(video.FrameTime) - 25) < 0.01
    stream = b"".join(generate_frames(video.PixelData, number_of_frames=1))
    (tmp_path / "back.h264").write_bytes(stream)
    with av.open(str(tmp_path / "back.h264"), format="h264") as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 30 and (frames[0].width, frames[0].height) == (64, 48)


def _png_header(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_into_an_archived_study_and_bad_inputs(sources: dict[str, Path], tmp_path: Path) -> None:
    ct, _ = write_phantom_ct(tmp_path / "ct", 2, rows=16, cols=16)
    storage = tmp_path / "archive"
    cli("import", "--storage", str(storage), str(tmp_path / "ct"))
    study = str(dcmread(ct[0]).StudyInstanceUID)
    got = json.loads(cli("create", str(sources["grey8.png"]), str(sources["report.pdf"]), str(sources["clip.mp4"]),
                         "--study", study, "--storage", str(storage), "--json").stdout)
    assert got["summary"] == {"created": 3, "failed": 0}
    # hostile and broken inputs: a clear failure each, nothing stored
    _png_header(tmp_path / "huge.png", 60000, 60000)
    (tmp_path / "broken.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\x13" * 300)
    (tmp_path / "fake.pdf").write_bytes(b"not a pdf")
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    bad = cli("create", *(str(tmp_path / n) for n in ("huge.png", "broken.mp4", "fake.pdf", "nan.npy")),
              "--study", study, "--storage", str(storage), "--json", check=False)
    assert bad.returncode == 1
    rows = json.loads(bad.stdout)["files"]
    assert len(rows) == 4 and all(r["state"] == "failed" and r["comment"] for r in rows)
    node = Node(storage, {"DICOMNODE_MIN_FREE_MB": "0"}, web=True).start()
    try:
        # the same over HTTP: POST /api/create with the file as the body
        base = f"http://127.0.0.1:{node.http_port}/api/create"
        made = _post(f"{base}?study={study}&SeriesDescription=web", sources["rgb.png"].read_bytes(), "image/png")
        assert made[0] == 200 and made[1]["StudyInstanceUID"] == study and "/instances/" in made[1]["RetrieveURL"]
        assert _post(f"{base}?study={study}", b"text", "text/plain")[0] == 415
        assert _post(f"{base}?study=1.2.3.4", sources["rgb.png"].read_bytes(), "image/png")[0] == 404
        assert _post(f"{base}?study={study}", b"not a pdf", "application/pdf")[0] == 422
        assert _post(base, sources["report.pdf"].read_bytes(), "application/pdf")[0] == 400  # no study, no patient
        need("findscu")
        found = run(["findscu", "-S", "-aec", node.aet, "127.0.0.1", str(node.port), "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"StudyInstanceUID={study}", "-k", "NumberOfStudyRelatedInstances",
                     "-k", "ModalitiesInStudy"])
        text = found.stdout + found.stderr
        assert re.search(r"IS \[6 ?\]", text) and "DOC" in text and "XC" in text and "OT" in text, text
    finally:
        node.stop()
    listed: list[dict[str, Any]] = json.loads(cli("ls", "instances", "--storage", str(storage), "--json").stdout)
    assert len(listed) == 6


def _post(url: str, body: bytes, media_type: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": media_type})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
        assert answer.get("error"), answer
        return exc.code, answer
