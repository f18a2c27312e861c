"""A small generated archive for query/retrieve tests: the facts to query, and the files.

Five patients (accented, lower-case and plain names), studies on different
dates and times, series of several modalities, a few 8x8 images each. Every
instance's attributes are kept as a record, so a test computes the expected
answer of a query from the records, independently of the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
           "US": "1.2.840.10008.5.1.4.1.1.6.1", "OT": "1.2.840.10008.5.1.4.1.1.7"}

PATIENTS = [
    # PatientID, PatientName, BirthDate, Sex
    ("QR001", "Müller^Jürgen", "19600412", "M"),
    ("QR002", "doe^jane", "19851130", "F"),
    ("QR003", "DOE^JOHN", "19790101", "M"),
    ("QR004", "Øster^Åse", "20010707", "F"),
    ("QR005", "Smith^Anna", "19451224", "F"),
]
# per patient: (StudyDate, StudyTime, StudyDescription, [(Modality, SeriesDescription, images)])
STUDIES = {
    "QR001": [("20230105", "083000", "CT Thorax", [("CT", "axial 5mm", 3), ("CT", "scout", 1)]),
              ("20240220", "141500", "MR Knie", [("MR", "t1 sag", 2), ("MR", "t2 cor", 2)])],
    "QR002": [("20240101", "235959", "US Abdomen", [("US", "liver", 2)]),
              ("20240102", "000100", "CT Head", [("CT", "brain", 2), ("OT", "report", 1)])],
    "QR003": [("20231231", "120000", "MR Brain", [("MR", "flair", 2)])],
    "QR004": [("20240615", "093000", "CT Abdomen", [("CT", "portal venous", 2), ("MR", "fusion", 1)])],
    "QR005": [("19991231", "101010", "Old film", [("OT", "scan", 1)]),
              ("20240301", "070000", "CT Chest", [("CT", "lung", 2)])],
}


@dataclass
class Record:
    attrs: dict[str, str]  # the instance's attributes, as DICOM strings
    path: Path


def _dataset(attrs: dict[str, str], sop_class: str, rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = attrs["SOPInstanceUID"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw, value in attrs.items():
        setattr(ds, kw, value)
    ds.SOPClassUID = sop_class
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, size=64, dtype=np.uint16).tobytes()
    # a non-indexed attribute and a sequence, for header-sourced keys
    ds.SliceThickness = "5" if attrs["Modality"] == "CT" else "1.5"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3." + str(int(attrs["AccessionNumber"][1:]) + 1)
    ds.ReferencedStudySequence = Sequence([item])
    return ds


def build(folder: Path, seed: int = 7) -> list[Record]:
    """Write the archive's files under folder; the records describe every instance."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    n = 0
    for pid, name, birth, sex in PATIENTS:
        for si, (date, time, desc, series) in enumerate(STUDIES[pid]):
            study_uid = generate_uid()
            for ser_no, (modality, ser_desc, images) in enumerate(series, start=1):
                series_uid = generate_uid()
                for inst in range(1, images + 1):
                    attrs = {
                        "PatientID": pid, "PatientName": name, "PatientBirthDate": birth, "PatientSex": sex,
                        "StudyInstanceUID": study_uid, "StudyDate": date, "StudyTime": time,
                        "StudyDescription": desc, "AccessionNumber": f"A{pid[2:]}{si}", "StudyID": str(si + 1),
                        "ReferringPhysicianName": "Ref^Doctor",
                        "SeriesInstanceUID": series_uid, "Modality": modality, "SeriesNumber": str(ser_no),
                        "SeriesDescription": ser_desc, "SOPInstanceUID": generate_uid(),
                        "InstanceNumber": str(inst),
                    }
                    ds = _dataset(attrs, CLASSES[modality], rng)
                    path = folder / f"{n:04d}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    attrs["SOPClassUID"] = CLASSES[modality]
                    records.append(Record(attrs, path))
                    n += 1
    return records
