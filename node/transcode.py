"""Changing how an object is encoded, without changing what it says."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian


def little_endian(ds: Dataset) -> Dataset:
    """A data set read from Explicit VR Big Endian, to be written little endian.

    pynetdicom re-encodes the parsed values, but bulk values (OW, OL, OF, OD,
    OV: pixel data, LUTs, overlays) are bytes in the file's byte order: each
    word is swapped here, at every depth.
    """
    for elem in ds.iterall():
        size = _WORD.get(elem.VR)
        if size and isinstance(elem.value, (bytes, bytearray)) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)  # values are parsed: write them afresh
    return ds


_WORD = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
