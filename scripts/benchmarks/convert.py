"""Conversion: MP4 against GIF, size and speed, on one generated cine loop (and PNG speed on one CT slice)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.node.processing.convert import Options, convert_file


def cine(path: Path, frames: int = 200, size: int = 512) -> Path:
    """A moving bright disc on a smooth noisy background: compressible, like real cine, not trivially so."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # XA
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "XA"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.FrameTime = 66.7
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = (64 + 64 * np.sin(x / 40.0) * np.cos(y / 55.0)).astype(np.float64)
    out = np.empty((frames, size, size), dtype=np.uint8)
    for i in range(frames):
        cx, cy = size / 2 + size / 3 * np.cos(i / 15), size / 2 + size / 3 * np.sin(i / 15)
        disc = 100 * ((x - cx) ** 2 + (y - cy) ** 2 < (size / 10) ** 2)
        out[i] = np.clip(base + disc + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)
    ds.PixelData = out.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def run(work: Path) -> dict[str, dict[str, float]]:
    src = cine(work / "cine.dcm")
    frames = 200
    res: dict[str, dict[str, float]] = {}
    for fmt in ("mp4", "gif"):
        t0 = time.perf_counter()
        out = convert_file(src, work, f"cine-{fmt}", Options(frozenset({fmt})))
        secs = time.perf_counter() - t0
        res[fmt] = {"size, MB": out.files[0].stat().st_size / 1e6, "frames per second": frames / secs,
                    "seconds": secs}
        print(f"  {fmt}: {res[fmt]['size, MB']:.2f} MB, {res[fmt]['frames per second']:.1f} frames/s",
              file=sys.stderr)
    res["source"] = {"size, MB": src.stat().st_size / 1e6}
    return res
