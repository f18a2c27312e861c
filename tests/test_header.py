"""storage/archive/header.py's index_values (one pass over the indexed tags) against the plain
reading it replaced: each level's indexed attributes looked up one by one, on pydicom's real files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicomnode.storage.archive.header import _int, index_values, read_header, text
from dicomnode.storage.index.models import Instance, Patient, Series, Study, dicom_tags, integer_columns
from tests.support.datagen import pydicom_test_files


def by_level(ds: Dataset, model: type) -> dict[str, Any]:
    values: dict[str, Any] = {}
    ints = integer_columns(model)
    for kw, tag in dicom_tags(model):
        if tag in ds:
            try:
                raw = ds[tag].value
            except Exception:
                continue
            values[kw] = _int(raw) if kw in ints else text(raw)
    return values


def test_index_values_are_each_levels_attributes() -> None:
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's complaints about its own odd test files
        for f in pydicom_test_files():
            got = index_values(read_header(Path(f), force=True))
            plain = read_header(Path(f), force=True)
            for level, model in (("PATIENT", Patient), ("STUDY", Study), ("SERIES", Series)):
                assert got[level] == by_level(plain.ds, model), (f, level)
            image = got["IMAGE"]
            expected = by_level(plain.ds, Instance)
            assert {k: v for k, v in image.items() if k in expected and k not in (
                "SOPClassUID", "SOPInstanceUID", "NumberOfFrames")} == {
                k: v for k, v in expected.items() if k not in ("SOPClassUID", "SOPInstanceUID", "NumberOfFrames")}, f
            assert image["SOPInstanceUID"] == plain.uid("SOPInstanceUID")
            checked += 1
    assert checked > 50


def test_read_header_reads_as_dcmread_does() -> None:
    """read_header's own reading of a well-formed file's File Meta (then read_dataset from where
    the data set starts) gives what dcmread(stop_before_pixels) gives: the same elements and
    values, encoding, character set, stopping point and File Meta; other files go to dcmread."""
    from pydicom import dcmread

    quick = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in pydicom_test_files():
            try:
                with open(f, "rb") as fp:
                    plain = dcmread(fp, stop_before_pixels=True, defer_size=64 * 1024, force=True)
                    end = fp.tell()
            except Exception:
                continue
            got = read_header(Path(f), force=True)
            quick += got.syntax is not None
            assert list(got.ds.keys()) == list(plain.keys()), f
            assert got.end == end, f
            assert got.transfer_syntax == str(plain.file_meta.get("TransferSyntaxUID", "")), f
            assert got.ds.original_encoding == plain.original_encoding, f
            assert got.ds.original_character_set == plain.original_character_set, f
            assert str(got.meta) == str(plain.file_meta), f
            for tag in plain.keys():
                if tag == 0x7FE00010 or plain.get_item(tag).value is None:  # deferred: not read here
                    continue
                try:
                    want = plain[tag]
                except Exception:
                    continue
                assert got.ds[tag] == want, (f, tag)
    assert quick > 50  # most of pydicom's files take the quick way
