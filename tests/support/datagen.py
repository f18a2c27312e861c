"""Generated DICOM data for tests and benchmarks (never committed: made at run time)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

MF_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def ct_dataset(patient_id: str, study_uid: str, series_uid: str, number: int, rows: int, cols: int,
               rng: np.random.Generator, patient_name: str | None = None, study_date: str = "20240115") -> Dataset:
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _meta(CTImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name or f"Test^{patient_id}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"A{patient_id}"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16).tobytes()
    return ds


def write_ct_series(folder: Path, n: int, patient_id: str = "P1", rows: int = 512, cols: int = 512,
                    study_uid: str | None = None, series_uid: str | None = None, seed: int = 0,
                    patient_name: str | None = None, study_date: str = "20240115") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(patient_id, study_uid, series_uid, i + 1, rows, cols, rng, patient_name, study_date)
        p = folder / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_multiframe(path: Path, frames: int = 1000, rows: int = 724, cols: int = 724,
                     random: bool = True, sparse: bool = False) -> Path:
    """A large multi-frame object written frame by frame (about 1 GB at the defaults).

    sparse: the pixel bytes are a hole in the file (zeros when read), made at once.
    """
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = _meta(MF_CLASS, sop_uid)
    ds.SOPClassUID = MF_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = "BIG"
    ds.PatientName = "Big^Object"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.save_as(path, enforce_file_format=True)
    frame_bytes = rows * cols * 2
    total = frame_bytes * frames
    rng = np.random.default_rng(1)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, total))
        if sparse:
            f.truncate(f.tell() + total)
            return path
        zeros = bytes(frame_bytes)
        f.writelines(rng.integers(0, 65535, size=rows * cols, dtype=np.uint16).tobytes() if random else zeros for _ in range(frames))
    return path


def pydicom_test_files() -> list[Path]:
    """The files pydicom ships (its test_files folder only: never the network download)."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))


def write_phantom_ct(folder: Path, n: int, rows: int = 128, cols: int = 128, spacing: float = 0.5, seed: int = 3,
                     patient_name: str = "Phantom^Viewer", patient_id: str = "PHANTOM", study_date: str = "20240115",
                     ) -> tuple[list[Path], np.ndarray]:
    """A CT series with known values: air (-1000 HU) around a soft-tissue square (40 HU, SD 12) in
    rows/cols 1/4..3/4 and a bone disc (700 HU) inside it; Pixel Spacing `spacing` mm, window 40/400,
    slices 2.5 mm apart along z. Returns the files and the first slice's HU."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:rows, 0:cols]
    paths, first = [], None
    for i in range(n):
        hu = np.full((rows, cols), -1000, dtype=np.int32)
        square = (slice(rows // 4, 3 * rows // 4), slice(cols // 4, 3 * cols // 4))
        hu[square] = np.rint(rng.normal(40, 12, size=(rows // 2, cols // 2))).astype(np.int32)
        hu[(yy - rows // 2) ** 2 + (xx - cols // 2) ** 2 <= (rows // 10) ** 2] = 700
        ds = ct_dataset(patient_id, study_uid, series_uid, i + 1, rows, cols, rng, patient_name, study_date)
        ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = 2.5
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-cols * spacing / 2, -rows * spacing / 2, i * 2.5]
        ds.SliceLocation = i * 2.5
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.StudyDescription = "Phantom for the viewer"
        ds.SeriesDescription = "Axial 2.5 mm"
        p = folder / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
        if first is None:
            first = hu
    assert first is not None
    return paths, first
