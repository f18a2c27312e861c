"""New DICOM objects from images, NumPy arrays, PDF documents and videos (`dicomnode create`, and
for scripts `from dicomnode.create import from_array`).

| input | IOD (PS3.3) | pixel data |
| --- | --- | --- |
| one PNG/TIFF/BMP/JPEG image | Secondary Capture Image (A.8.1) | 8/16-bit grey or RGB, uncompressed; a baseline JPEG is kept as it is (JPEG Baseline transfer syntax, not re-encoded) |
| several images, a 3-D array | Multi-frame Grayscale Byte / Word, True Color SC (A.8.2-4) | one frame per image or slice; `spacing` gives Pixel Spacing and a Slice Location Vector |
| a 2-D array | Secondary Capture Image | uint8 as it is; anything else in 16 bits with Rescale Slope/Intercept, so values come back in their units |
| a PDF | Encapsulated PDF (A.45.1) | - |
| an MP4/MOV with H.264 video | Video Photographic (A.32.7) | the H.264 stream as it is (MPEG-4 AVC/H.264 transfer syntaxes), not re-encoded |

The patient and study come from `Context`: copied from a study in the archive, or new. New UIDs
come from the configured `uid_root`, else are 2.25 UUID-derived (PS3.5 B.2).

Objects are written by `write()` as a stream: the header by pydicom, then the bulk value
(document, pixel data) copied from its source in chunks, so a large video or PDF is never held
in memory whole.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from dicomnode import __version__
from dicomnode.errors import DicomnodeError
from dicomnode.storage.archive import Archive
from dicomnode.storage.archive.ingest import Ingester, Outcome

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
SC_MULTIFRAME_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SC_MULTIFRAME_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
SC_MULTIFRAME_TRUE_COLOR = "1.2.840.10008.5.1.4.1.1.7.4"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
MPEG4_HIGH_41 = "1.2.840.10008.1.2.4.102"
MPEG4_HIGH_42 = "1.2.840.10008.1.2.4.104"  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
MAX_PIXELS = 1 << 28  # 268 M pixels: refuse bigger images before decoding them (a 60,000² PNG header)
CHUNK = 1 << 20
MAX_FRAGMENT = (1 << 32) - 2


class CreateError(DicomnodeError):
    """The input cannot become a DICOM object; the message says why."""


@dataclass
class Context:
    """Where a new object goes: patient, study and series attributes, and how to make UIDs."""

    patient: dict[str, Any] = field(default_factory=dict)  # PatientName, PatientID, ...
    study: dict[str, Any] = field(default_factory=dict)  # StudyInstanceUID, StudyDate, ... (new study when empty)
    series: dict[str, Any] = field(default_factory=dict)  # SeriesInstanceUID, SeriesNumber, SeriesDescription
    uid_root: str = ""
    modality: str | None = None
    instance_number: int = 1

    def uid(self) -> UID:
        return generate_uid(prefix=self.uid_root.rstrip(".") + "." if self.uid_root else None)


@dataclass
class Bulk:
    """A bulk value written after the header: the element's tag, and its content as chunks."""

    tag: int
    chunks: Iterator[bytes]
    length: int | None  # None: encapsulated (undefined length, fragments)
    fragments: bool = False
    vr: bytes = b"OB"  # OW for native pixel data of 16 bits
    one_fragment: int | None = None  # encapsulated as one fragment of this many bytes, streamed in chunks


@dataclass
class NewObject:
    ds: Dataset  # everything but the bulk value
    bulk: Bulk | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


# -- the common modules ------------------------------------------------------------------------


def _base(ctx: Context, sop_class: str, syntax: str, modality: str, conversion: str) -> Dataset:
    """SOP Common, Patient, General Study, General Series, General/SC Equipment and General Image."""
    now = datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop = ctx.uid()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, ctx.patient.get(keyword, ""))
    for keyword, value in ctx.patient.items():
        setattr(ds, keyword, value)
    study = {"StudyInstanceUID": ctx.uid(), "StudyDate": now.strftime("%Y%m%d"), "StudyTime": now.strftime("%H%M%S"),
             "ReferringPhysicianName": "", "StudyID": "1", "AccessionNumber": "", **ctx.study}
    for keyword, value in study.items():
        setattr(ds, keyword, value)
    series = {"SeriesInstanceUID": ctx.uid(), "SeriesNumber": 900 + (int(now.strftime("%S")) % 100),
              **ctx.series}
    for keyword, value in series.items():
        setattr(ds, keyword, value)
    ds.Modality = ctx.modality or modality
    ds.Laterality = ""  # Type 2C: not a paired structure as far as the node knows
    ds.Manufacturer = "dicomnode"
    ds.SoftwareVersions = __version__
    ds.ConversionType = conversion  # SC Equipment: WSD workstation, SD scanned document, SYN synthetic
    ds.InstanceNumber = ctx.instance_number
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = ds.ContentDate, ds.ContentTime
    return ds


def _pixels_module(ds: Dataset, rows: int, cols: int, samples: int, bits: int, signed: bool = False) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0


# -- arrays and images -----------------------------------------------------------------------------


def from_array(arr: np.ndarray, ctx: Context | None = None, spacing: tuple[float, ...] | None = None,
               slope: float = 1.0, intercept: float = 0.0, conversion: str = "SYN", picture: bool = False,
               ) -> NewObject:
    """A NumPy array as Secondary Capture: 2-D (rows, cols) or (rows, cols, 3) as one image,
    3-D (frames, rows, cols) or 4-D (frames, rows, cols, 3) as a multi-frame object.

    `slope` and `intercept` say what the array's values mean (real = value * slope + intercept);
    `spacing` is (row, column) or (slice, row, column) in mm. Values other than uint8 are stored
    in 16 bits with Rescale Slope/Intercept (float arrays scaled into the 16-bit range), so
    that the object's modality values are the real values. The window spans the values found;
    for a `picture` (an 8/16-bit image file) it spans the whole bit range, so that a viewer or
    `dicomnode convert` shows the picture's own grey levels.
    """
    ctx = ctx or Context()
    arr = np.asarray(arr)
    rgb = arr.dtype == np.uint8 and arr.shape[-1:] == (3,)  # (…, 3) uint8: RGB samples
    if arr.ndim == 2 or (arr.ndim == 3 and rgb):
        frames, colour = None, arr.ndim == 3
    elif arr.ndim == 3 or (arr.ndim == 4 and rgb):
        frames, colour = arr.shape[0], arr.ndim == 4
    else:
        raise CreateError(f"an array of shape {arr.shape}: 2-D, 3-D (frames, rows, cols) or RGB (…, 3) uint8")
    if arr.size == 0:
        raise CreateError("an empty array")
    if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise CreateError(f"an array of {arr.dtype}" + (" with NaN or infinite values" if arr.dtype.kind == "f" else
                                                        ": numbers only"))
    # frame by frame from here on: a memory-mapped volume is never held whole
    lo_hi = (float(arr.min()), float(arr.max()))
    stored: Callable[[np.ndarray], np.ndarray]
    if colour or (arr.dtype == np.uint8 and slope == 1.0 and intercept == 0.0):
        rs, ri, bits = None, None, 8

        def as_bytes(a: np.ndarray) -> np.ndarray:
            return np.asarray(a, dtype=np.uint8)

        stored = as_bytes
    else:
        stored, rs, ri = _sixteen_bits(arr, lo_hi, slope, intercept)
        bits = 16
    if frames is None:
        sop_class = SC_IMAGE
    else:
        sop_class = SC_MULTIFRAME_TRUE_COLOR if colour else SC_MULTIFRAME_BYTE if bits == 8 else SC_MULTIFRAME_WORD
    ds = _base(ctx, sop_class, ExplicitVRLittleEndian, "OT", conversion)
    rows, cols = arr.shape[-3:-1] if colour else arr.shape[-2:]
    _pixels_module(ds, int(rows), int(cols), 3 if colour else 1, bits)
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    if not colour and (rs is not None or frames is not None):
        # grey multi-frame SC always carries a rescale (PS3.3 C.8.6.3), identity when there is none
        ds.RescaleSlope, ds.RescaleIntercept = _ds(1.0 if rs is None else rs), _ds(0.0 if ri is None else ri)
        ds.RescaleType = "US"  # unspecified units
    if not colour and frames is not None:
        ds.PresentationLUTShape = "IDENTITY"
    if spacing:
        plane = spacing[-2:]
        ds.PixelSpacing = [_ds(plane[0]), _ds(plane[1])]
    if frames is not None:
        ds.NumberOfFrames = frames
        if spacing and len(spacing) == 3:
            ds.SliceLocationVector = [_ds(i * spacing[0]) for i in range(frames)]
            ds.FrameIncrementPointer = 0x00182005  # Slice Location Vector
        else:
            ds.FrameIncrementPointer = 0x00181063  # Frame Time
            ds.FrameTime = 100.0
    if not colour:
        real = (lo_hi[0] * slope + intercept, lo_hi[1] * slope + intercept)
        window = (2 ** (bits - 1), 2 ** bits) if picture and slope == 1.0 and intercept == 0.0 else \
            ((real[0] + real[1]) / 2, max(abs(real[1] - real[0]), 1.0)) if real[1] != real[0] else None
        if window:
            ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
    per_frame = int(rows) * int(cols) * (3 if colour else 1) * bits // 8
    length = per_frame * (frames or 1)
    planes = (arr[i] for i in range(frames)) if frames is not None else iter([arr])
    chunks: Iterator[bytes] = (np.ascontiguousarray(stored(a)).astype("<u2" if bits == 16 else "u1", copy=False).tobytes()
              for a in planes)
    if length % 2:
        chunks = itertools.chain(chunks, [b"\0"])
    return NewObject(ds, Bulk(0x7FE00010, chunks, length + length % 2, vr=b"OW" if bits == 16 else b"OB"))


def _sixteen_bits(arr: np.ndarray, lo_hi: tuple[float, float], slope: float, intercept: float,
                  ) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
    """How values become uint16 stored values (applied a frame at a time), and the rescale that gives
    real = array value * slope + intercept back: integers shifted, floats scaled into 0..65535."""
    lo, hi = lo_hi
    if arr.dtype.kind in "iu" and hi - lo < 65536:
        low = int(min(lo, 0)) if arr.dtype.kind == "i" else 0
        if hi - low > 65535:
            low = int(lo)

        def shift(a: np.ndarray) -> np.ndarray:
            return (np.asarray(a, dtype=np.int64) - low).astype(np.uint16)

        return shift, slope, low * slope + intercept
    step = (hi - lo) / 65535 if hi > lo else 1.0

    def scale(a: np.ndarray) -> np.ndarray:
        return np.rint((np.asarray(a, dtype=np.float64) - lo) / step).clip(0, 65535).astype(np.uint16)

    return scale, step * slope, lo * slope + intercept


def _ds(value: float) -> str:
    """A DS value (16 characters at most)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def from_images(paths: list[Path], ctx: Context | None = None, spacing: tuple[float, ...] | None = None) -> NewObject:
    """PNG/JPEG/TIFF/BMP files: one image as Secondary Capture (a baseline JPEG kept as JPEG), several
    of the same size and kind as one multi-frame object."""
    from PIL import Image

    ctx = ctx or Context()
    if len(paths) == 1:
        jpeg = _jpeg_as_is(paths[0], ctx)
        if jpeg is not None:
            return jpeg
    arrays = []
    for p in paths:
        arrays.append(_image_array(p, Image))
    shapes = {a.shape for a in arrays}
    kinds = {a.dtype for a in arrays}
    if len(shapes) > 1 or len(kinds) > 1:
        raise CreateError("the images differ in size or kind: one object needs them alike")
    arr = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    return from_array(arr, ctx, spacing, conversion="WSD", picture=True)


def _image_array(path: Path, image: Any) -> np.ndarray:
    try:
        with image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise CreateError(f"{path.name}: {img.width} x {img.height} pixels, more than {MAX_PIXELS:,}")
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(img).astype(np.uint16)
            if img.mode == "I":
                arr = np.asarray(img)
                if arr.min() < 0 or arr.max() > 65535:
                    raise CreateError(f"{path.name}: 32-bit values beyond 16 bits")
                return arr.astype(np.uint16)
            if img.mode in ("L", "1", "LA"):
                return np.asarray(img.convert("L"))
            return np.asarray(img.convert("RGB"))
    except CreateError:
        raise
    except Exception as exc:
        raise CreateError(f"{path.name}: not an image Pillow can read ({type(exc).__name__}: {exc})") from exc


def _jpeg_as_is(path: Path, ctx: Context) -> NewObject | None:
    """A baseline 8-bit JPEG (grey or YCbCr) as JPEG Baseline pixel data, its bytes untouched."""
    from PIL import Image, JpegImagePlugin

    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or img.info.get("progressive") or img.mode not in ("L", "RGB"):
                return None
            if img.width * img.height > MAX_PIXELS:
                raise CreateError(f"{path.name}: {img.width} x {img.height} pixels, more than {MAX_PIXELS:,}")
            if img.info.get("adobe_transform") == 0:  # RGB stored without YCbCr transform
                return None
            sampling = JpegImagePlugin.get_sampling(img) if img.mode == "RGB" else -1
            rows, cols, mode = img.height, img.width, img.mode
    except CreateError:
        raise
    except Exception:
        return None
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8" or b"\xff\xc0" not in data:  # SOF0: baseline sequential
        return None
    ds = _base(ctx, SC_IMAGE, JPEGBaseline8Bit, "OT", "WSD")
    _pixels_module(ds, rows, cols, 3 if mode == "RGB" else 1, 8)
    if mode == "RGB":
        ds.PhotometricInterpretation = "YBR_FULL_422" if sampling in (1, 2) else "YBR_FULL"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    return NewObject(ds, Bulk(0x7FE00010, iter([data]), None, fragments=True))


# -- documents and video ---------------------------------------------------------------------------


def from_pdf(path: Path, ctx: Context | None = None, title: str | None = None) -> NewObject:
    """An Encapsulated PDF; the document's bytes as they are."""
    ctx = ctx or Context()
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        raise CreateError(f"{path.name}: not a PDF (no %PDF- header)")
    size = path.stat().st_size
    ds = _base(ctx, ENCAPSULATED_PDF, ExplicitVRLittleEndian, "DOC", "SD")
    for keyword in ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        delattr(ds, keyword)
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title if title is not None else path.stem[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = size
    return NewObject(ds, Bulk(0x00420011, _file_chunks(path, pad=size % 2 == 1), size + size % 2))


def from_video(path: Path, ctx: Context | None = None) -> NewObject:
    """An MP4/MOV (or raw) H.264 video as Video Photographic, the stream kept as it is: the
    container's packets rewritten into an Annex B byte stream (PyAV), not re-encoded."""
    import av

    ctx = ctx or Context()
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise CreateError(f"{path.name}: not a video PyAV can open ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise CreateError(f"{path.name}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise CreateError(f"{path.name}: {stream.codec_context.name} video; H.264 only (stored without "
                              "re-encoding)")
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        # the Annex B stream goes to a temp file, read back in fragments when the object is written
        fd, name = tempfile.mkstemp(prefix="dicomnode-video-", suffix=".h264")
        os.close(fd)
        elementary = Path(name)
        try:
            with av.open(str(elementary), "w", format="h264") as raw:
                out = raw.add_stream_from_template(stream)
                frames = 0
                for packet in container.demux(stream):
                    if packet.dts is None and packet.size == 0:
                        continue
                    packet.stream = out
                    raw.mux(packet)
                    frames += 1
        except Exception as exc:
            elementary.unlink(missing_ok=True)
            raise CreateError(f"{path.name}: the video cannot be read ({type(exc).__name__}: {exc})") from exc
    if not frames:
        elementary.unlink(missing_ok=True)
        raise CreateError(f"{path.name}: no video frames")
    syntax = MPEG4_HIGH_41 if width <= 1920 and height <= 1080 and rate <= 30.5 else MPEG4_HIGH_42
    ds = _base(ctx, VIDEO_PHOTOGRAPHIC, syntax, "XC", "DV")
    for keyword in ("ConversionType", "DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        delattr(ds, keyword)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.AcquisitionContextSequence = []
    # VL Image (PS3.3 C.8.12.1): a video photograph says where on the body; the node does not know
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "87100004", "SCT", "Topography unknown"
    ds.AnatomicRegionSequence = [region]
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_PARTIAL_420", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = _ds(1000.0 / rate)
    ds.CineRate = round(rate)
    ds.RecommendedDisplayFrameRate = round(rate)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    # PS3.5 A.4.11: the bit stream in one fragment under these transfer syntaxes (the "fragmentable"
    # ones came later), so at most 2^32 - 2 bytes; written from the temp file a chunk at a time
    size = elementary.stat().st_size
    if size > MAX_FRAGMENT:
        elementary.unlink(missing_ok=True)
        raise CreateError(f"{path.name}: an H.264 stream of {size:,} bytes; one fragment holds {MAX_FRAGMENT:,}")
    return NewObject(ds, Bulk(0x7FE00010, _chunks_then_remove(elementary), None, fragments=True, one_fragment=size))


def _chunks_then_remove(path: Path) -> Iterator[bytes]:
    """A temp file in chunks; the file is removed when done (or when the object is dropped)."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    finally:
        path.unlink(missing_ok=True)


def _file_chunks(path: Path, pad: bool) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    if pad:
        yield b"\0"


# -- what the front ends share (CLI `create`, POST /api/create) -------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".h264", ".264"}
# what an archived study lends a new object (Patient and General Study modules), and a series adds
PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
              "StudyDescription")
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality")


def kind_of(path: Path) -> str | None:
    """image, array, pdf or video by the file's suffix; None when unknown."""
    suffix = path.suffix.lower()
    return ("image" if suffix in IMAGE_SUFFIXES else "array" if suffix == ".npy" else "pdf" if suffix == ".pdf"
            else "video" if suffix in VIDEO_SUFFIXES else None)


class NotArchived(CreateError):
    """The study or series a new object should go into is not in the archive."""


# what a caller may say of a new study (and SeriesDescription, of a new series)
NEW_STUDY_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDescription", "AccessionNumber")


def context_for(arc: Archive | None, uid_root: str = "", modality: str | None = None, study: str | None = None,
                series: str | None = None, attributes: dict[str, str | None] | None = None) -> Context:
    """Where a new object goes: into an archived `study` (patient and study copied, a new series) or
    `series` (NotArchived when there is none), else into a new study made of `attributes`
    (NEW_STUDY_KEYS; PatientID required). A new series takes attributes' SeriesDescription."""
    given = {k: v for k, v in (attributes or {}).items() if v}
    ctx = Context(uid_root=uid_root, modality=modality)
    if study or series:
        from pydicom import dcmread

        from dicomnode.storage.query.listing import list_level

        assert arc is not None
        key = {"SeriesInstanceUID": series} if series else {"StudyInstanceUID": study or ""}
        found = list(list_level(arc.db, "IMAGE", key, limit=1))
        if not found:
            raise NotArchived(f"{series or study}: no such {'series' if series else 'study'} in the archive")
        header = dcmread(arc.layout.absolute(found[0]["path"]), stop_before_pixels=True)
        ctx.patient = {k: header.get(k) for k in PATIENT_KEYS if header.get(k) is not None}
        ctx.study = {k: header.get(k) for k in STUDY_KEYS if header.get(k) is not None}
        if series:
            ctx.series = {k: header.get(k) for k in SERIES_KEYS if header.get(k) is not None}
            ctx.modality = modality or str(header.get("Modality") or "") or None
    elif not given.get("PatientID"):
        raise CreateError("a new study needs a PatientID (or name an archived study or series)")
    else:
        ctx.patient = {k: given[k] for k in NEW_STUDY_KEYS[:4] if k in given}
        ctx.study = {k: given[k] for k in NEW_STUDY_KEYS[4:] if k in given}
    if given.get("SeriesDescription") and not series:
        ctx.series["SeriesDescription"] = given["SeriesDescription"]
    return ctx


def from_files(kind: str, paths: list[Path], ctx: Context, spacing: tuple[float, ...] | None = None,
               slope: float = 1.0, intercept: float = 0.0, title: str | None = None) -> NewObject:
    """The object `kind` makes of `paths` (several only for images: one multi-frame object)."""
    if kind == "image":
        return from_images(paths, ctx, spacing)
    if kind == "array":
        try:
            arr = np.load(paths[0], allow_pickle=False, mmap_mode="r")
        except Exception as exc:
            raise CreateError(f"{paths[0].name}: not a NumPy array file ({type(exc).__name__}: {exc})") from exc
        return from_array(arr, ctx, spacing, slope, intercept)
    if kind == "pdf":
        return from_pdf(paths[0], ctx, title)
    if kind == "video":
        return from_video(paths[0], ctx)
    raise CreateError(f"{paths[0].name}: not an image, a .npy array, a PDF or an MP4/MOV video")


def store(obj: NewObject, ingester: Ingester) -> Outcome:
    """Into the archive through the ingest path (durable, indexed, on-arrival jobs), streamed."""
    sink = ingester.new_sink()
    write(obj, sink)
    return ingester.ingest(sink, peer="create")


# -- writing ----------------------------------------------------------------------------------------


def write(obj: NewObject, out: IO[bytes] | Any) -> None:
    """The object as a Part 10 stream on `out` (a file, or the archive's ingest sink)."""
    ds = obj.ds
    if obj.bulk is None:
        dcmwrite(out, ds, enforce_file_format=True)
        return
    tag = obj.bulk.tag
    before, after = Dataset(), Dataset()
    for elem in ds:
        (before if elem.tag < tag else after).add(elem)
    before.file_meta = ds.file_meta
    head = io.BytesIO()
    dcmwrite(head, before, enforce_file_format=True)
    out.write(head.getvalue())
    group, element = tag >> 16, tag & 0xFFFF
    if obj.bulk.fragments:
        out.write(struct.pack("<HH2sHI", group, element, b"OB", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # an empty Basic Offset Table
        if obj.bulk.one_fragment is not None:
            size = obj.bulk.one_fragment
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, size + size % 2))
            for chunk in obj.bulk.chunks:
                out.write(chunk)
            if size % 2:
                out.write(b"\0")
        else:
            for chunk in obj.bulk.chunks:
                fragment = chunk + (b"\0" if len(chunk) % 2 else b"")
                out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)))
                out.write(fragment)
        out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))  # Sequence Delimitation Item
    else:
        assert obj.bulk.length is not None
        out.write(struct.pack("<HH2sHI", group, element, obj.bulk.vr, 0, obj.bulk.length))
        for chunk in obj.bulk.chunks:
            out.write(chunk)
    if len(after):
        buffer = io.BytesIO()
        tail = DicomFileLike(buffer)
        tail.is_little_endian, tail.is_implicit_VR = True, False
        write_dataset(tail, after)
        out.write(buffer.getvalue())
