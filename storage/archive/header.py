"""Reading what the index needs from a stored object, without its bulk data.

The header is parsed up to Pixel Data and large values are deferred, so the
cost of validating an object does not grow with its size.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

from dicomnode.errors import HeaderError
from dicomnode.storage.index.models import Instance, Patient, Series, Study, dicom_tags, integer_columns

DEFER_BYTES = 64 * 1024
MAX_PREFIX = 1 << 20  # a longer header (large private blobs before Pixel Data) is parsed with deferral

# Objects are archived as received; checking every value's VR syntax on the
# way in would only cost time (and fill the log) on the hot path.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
_UID_CHARS = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class Header:
    ds: Dataset
    end: int = 0  # file offset where parsing stopped: the Pixel Data tag, or the end of the file
    syntax: str | None = None  # the Transfer Syntax UID, where read_header found it without pydicom
    path: Path | None = None
    _meta: FileMetaDataset | None = field(default=None, repr=False)
    _uids: dict[str, str] = field(default_factory=dict, repr=False)
    _encoding: Any = field(default=None, repr=False)

    @property
    def meta(self) -> FileMetaDataset:
        """The File Meta Information (parsed by pydicom when first asked for, if read_header did not)."""
        if self._meta is None:
            if self.path is None:
                return FileMetaDataset()
            with open(self.path, "rb") as f:
                self._meta = dcmread(f, stop_before_pixels=True, specific_tags=[0x00020010]).file_meta
        return self._meta

    @property
    def transfer_syntax(self) -> str:
        if self.syntax is not None:
            return self.syntax
        return str(self.meta.get("TransferSyntaxUID", ""))

    def uid(self, keyword: str) -> str:
        """A UID of the data set, read once (a store asks for each several times)."""
        got = self._uids.get(keyword)
        if got is None:
            tag = tag_for_keyword(keyword)
            got = self._uids[keyword] = str((self.value(tag) if tag is not None else None) or "").strip("\x00 ")
        return got

    def value(self, tag: int) -> Any:
        """An element's value as `ds[tag].value` has it (None when absent): for the plain VRs
        converted by pydicom's own converter for the VR, without the element and hook machinery
        around it, which looked the character set up again for every element (of an object's
        index values, 540 -> 250 us per CT image)."""
        elem = self.ds.get_item(tag, keep_deferred=True)
        if elem is None:
            return None
        if isinstance(elem, RawDataElement) and elem.value is not None:
            vr = elem.VR or _dictionary_vr(tag)
            if vr in _PLAIN_VRS:
                if self._encoding is None:
                    self._encoding = self.ds.original_character_set or self.ds._character_set
                return convert_value(vr, elem, self._encoding)
        return self.ds[tag].value


def read_header(path: Path, force: bool = False) -> Header:
    """Parse the File Meta and the data set up to (not including) Pixel Data."""
    try:
        with open(path, "rb") as f:
            quick = _quick_header(f, path)
            if quick is not None:
                return quick
            f.seek(0)
            ds = dcmread(f, stop_before_pixels=True, defer_size=DEFER_BYTES, force=force)
            end = f.tell()
        meta = ds.file_meta
    except RecursionError:
        raise HeaderError(f"cannot parse DICOM header: sequences nested more than {MAX_NESTING} levels deep") from None
    except Exception as exc:  # pydicom raises many types for malformed input
        raise HeaderError(f"cannot parse DICOM header: {type(exc).__name__}: {exc}") from exc
    return Header(ds=ds, end=end, path=path, _meta=meta)


_BY_SYNTAX = {str(ImplicitVRLittleEndian): (True, True), str(ExplicitVRBigEndian): (False, False)}


def _quick_header(f: BinaryIO, path: Path) -> Header | None:
    """The header of a well-formed Part 10 file (preamble, "DICM", a File Meta group whose group
    length is right, no command group, a transfer syntax that is not deflated), read as dcmread
    reads it but with the File Meta left unparsed but for its Transfer Syntax UID: pydicom's
    reading of the File Meta (and its checks of every element) cost as much as the data set up
    to Pixel Data of a CT image. Anything else: None, and dcmread reads the file."""
    head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    length = int.from_bytes(head[140:144], "little")
    meta = f.read(length + 2)  # and the next element's group, which must not be 0002 or 0000
    if length > 1 << 16 or len(meta) != length + 2 or meta[-2:] in (b"\x02\x00", b"\x00\x00"):
        return None
    syntax = None
    at = 0
    while at < length:
        if at + 8 > length or meta[at:at + 2] != b"\x02\x00":
            return None
        vr = meta[at + 4:at + 6]
        if vr in _LONG_VRS:
            if at + 12 > length:
                return None
            size, start = int.from_bytes(meta[at + 8:at + 12], "little"), at + 12
        elif vr.isalpha() and vr.isupper():
            size, start = int.from_bytes(meta[at + 6:at + 8], "little"), at + 8
        else:
            return None
        if start + size > length:
            return None
        if meta[at + 2:at + 4] == b"\x10\x00":
            syntax = meta[start:start + size].decode("ascii", "replace").strip("\x00 ")
        at = start + size
    if not syntax or syntax == DeflatedExplicitVRLittleEndian or syntax in PrivateTransferSyntaxes:
        return None
    implicit, little = _BY_SYNTAX.get(syntax, (False, True))
    f.seek(144 + length)
    try:
        ds = read_dataset(f, implicit, little, stop_when=_at_pixel_data, defer_size=DEFER_BYTES)
    except Exception:  # noqa: BLE001  # dcmread's reading (and its errors, or leniency) decides then
        return None
    end = f.tell()
    full = FileDataset(str(path), ds, head[:128], None, implicit, little)
    full.set_original_encoding(implicit, little, ds._character_set)
    return Header(ds=full, end=end, syntax=syntax, path=path)


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    """Where dcmread(stop_before_pixels=True) stops."""
    return tag in (0x7FE00010, 0x7FE00009, 0x7FE00008)


def structure_problem(header: Header, path: Path, size: int) -> str | None:
    """Why an object's structure cannot be trusted, or None: what a reader of the file would choke on.

    Sequences nested beyond MAX_NESTING, and elements whose declared length runs past the end of
    the data set: values deferred while parsing the header, the Pixel Data element (its fragments
    for encapsulated data) and any element after it. Only element headers are read, by seeking,
    so the cost does not grow with the object's size.
    """
    if nesting_depth(header.ds) > MAX_NESTING:
        return f"sequences nested more than {MAX_NESTING} levels deep"
    for tag in header.ds.keys():
        raw = header.ds.get_item(tag, keep_deferred=True)
        # a value pydicom read short (or deferred) still says how long it claimed to be
        if isinstance(raw, RawDataElement) and raw.length not in (0, UNDEFINED):
            if raw.value_tell + raw.length > size:
                return _past_end(int(tag), raw.length, size - raw.value_tell)
    syntax = UID(header.transfer_syntax) if header.transfer_syntax else None
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_deflated or header.end >= size:
        return None
    with open(path, "rb") as f:
        return _tail_problem(f, header.end, size, syntax.is_implicit_VR, syntax.is_little_endian)


UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_MAX_TAIL_STEPS = 100_000  # elements and fragments after the header: far more than any real object


def _past_end(tag: int, length: int, left: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes, the data set has {max(left, 0)} left"


def _tail_problem(f: BinaryIO, offset: int, size: int, implicit: bool, little: bool) -> str | None:
    """Walk the element headers from `offset` (Pixel Data onwards) to the end, seeking over values."""
    end = "<" if little else ">"
    in_items = False
    for _ in range(_MAX_TAIL_STEPS):
        if offset >= size:
            return None
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8:
            return f"{size - offset} stray bytes at the end of the data set"
        group, element = struct.unpack(end + "HH", head[:4])
        tag = (group << 16) | element
        if in_items:  # the fragments of encapsulated Pixel Data
            (length,) = struct.unpack(end + "I", head[4:])
            if tag == 0xFFFEE0DD:
                in_items = False
                offset += 8
                continue
            if tag != 0xFFFEE000 or length == UNDEFINED:
                return f"a malformed Pixel Data fragment at byte {offset}"
            header_len = 8
        elif implicit or not (head[4:6].isalpha() and head[4:6].isupper()):
            # implicit VR; also where the syntax says explicit but the bytes are not a VR, as some
            # writers do and pydicom reads (it switches the same way)
            (length,) = struct.unpack(end + "I", head[4:])
            header_len = 8
        elif head[4:6] in _LONG_VRS:
            extra = f.read(4)
            if len(extra) < 4:
                return f"{size - offset} stray bytes at the end of the data set"
            (length,) = struct.unpack(end + "I", extra)
            header_len = 12
        else:
            (length,) = struct.unpack(end + "H", head[6:])
            header_len = 8
        if length == UNDEFINED:
            if tag != 0x7FE00010:
                return None  # an undefined-length sequence after the pixel data: not walked further
            in_items = True
            offset += header_len
            continue
        if offset + header_len + length > size:
            return _past_end(tag, length, size - offset - header_len)
        offset += header_len + length
    return None


# Groups a data set starts with: command (0000), file meta (0002), directory (0004), identifying (0008).
_FIRST_GROUPS = (0x0000, 0x0002, 0x0004, 0x0008)


def has_part10_prefix(head: bytes) -> bool:
    """The 128-byte preamble and 'DICM' of a Part 10 file (given its first 132 bytes)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_dicom(path: Path) -> bool:
    """A Part 10 file, or a bare data set as old modalities and dumps wrote it.

    pydicom's `force` parses any bytes into elements (a README becomes a few
    nonsense tags), so a file without the 'DICM' prefix is taken for a data
    set only when it starts with a low group, as data sets are sorted, in
    either byte order, and parses to at least one identifying (0008) element.
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if has_part10_prefix(head):
        return True
    if len(head) < 8 or not ({int.from_bytes(head[0:2], "little"), int.from_bytes(head[0:2], "big")}
                             & set(_FIRST_GROUPS)):
        return False
    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size=DEFER_BYTES, force=True)
    except Exception:  # pydicom raises many types for what is not DICOM
        return False
    return "TransferSyntaxUID" in ds.file_meta or any(t.group == 0x0008 for t in ds.keys())


def read_stored_header(path: Path, pixel_data_offset: int | None = None) -> Dataset:
    """The data set of an archived file up to Pixel Data: what C-FIND returns beyond the index.

    The archived file's own first bytes are the header copy: once the
    analysis has recorded where the pixel data's value starts, one read of
    that prefix is all it takes; before that, the file is parsed up to Pixel
    Data with large values deferred. Either way no bulk data is read.
    """
    if pixel_data_offset and pixel_data_offset <= MAX_PREFIX:
        with open(path, "rb") as f:
            prefix = f.read(pixel_data_offset)
        return dcmread(BytesIO(prefix), stop_before_pixels=True, force=True)
    return dcmread(path, stop_before_pixels=True, defer_size=DEFER_BYTES, force=True)


# Sequences within sequences: real objects stay far below this (an SR content tree rarely passes
# a dozen levels). Deeper ones are refused: pydicom's writer turns each level's error into a
# longer message, so a few hundred levels exhaust memory rather than fail.
MAX_NESTING = 32


def nesting_depth(ds: Dataset, limit: int = MAX_NESTING) -> int:
    """How deep sequences nest in a data set (0: none), counted without recursion, up to limit + 1."""
    deepest = 0
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        item, depth = stack.pop()
        for tag in item.keys():
            raw = item.get_item(tag, keep_deferred=True)
            if (getattr(raw, "VR", None) or _dictionary_vr(tag)) != "SQ":
                continue  # other values stay as read (deferred ones unread)
            # pydicom keeps a sequence of defined length as bytes until asked: asking parses
            # one level, whose own sequences stay bytes; so the walk never recurses
            value = item[tag].value
            if not isinstance(value, Sequence) or not value:
                continue
            deepest = max(deepest, depth + 1)
            if deepest > limit:
                return deepest
            stack.extend((sub, depth + 1) for sub in value)
    return deepest


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def uid_problem(value: str) -> str | None:
    """Why a UID cannot identify an object, or None.

    Leading zeros in a component are tolerated: several vendors emit them,
    and refusing their images would lose data for a cosmetic violation.
    """
    if not value:
        return "missing"
    if len(value) > 64:
        return f"longer than 64 characters ({len(value)})"
    if not _UID_CHARS.match(value):
        return "not digits separated by dots"
    return None


def text(value: Any) -> str | None:
    """A DICOM value in its string form: multi-values joined by backslash, names as stored."""
    if value is None:
        return None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(text(v) or "" for v in value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# VRs whose raw value pydicom converts by VR and character set alone (no UN to resolve, no
# ambiguous VR to correct, no sequence); other elements are read through the Dataset.
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                        "UI", "UR", "UT", "FL", "FD", "SL", "SS", "UL", "US"})


@cache
def _indexed() -> dict[int, list[tuple[str, str, bool]]]:
    """Tag -> (level, keyword, integer column?) of every level's indexed attributes, in table order."""
    out: dict[int, list[tuple[str, str, bool]]] = {}
    for level, model in (("PATIENT", Patient), ("STUDY", Study), ("SERIES", Series), ("IMAGE", Instance)):
        ints = integer_columns(model)
        for kw, tag in dicom_tags(model):
            out.setdefault(tag, []).append((level, kw, kw in ints))
    return out


def index_values(header: Header) -> dict[str, dict[str, Any]]:
    """What the index holds of an object, by level: the values of each level's indexed DICOM
    attributes present in the data set, in one pass (each value converted once, however many
    levels hold it)."""
    ds = header.ds
    present = ds.keys()
    out: dict[str, dict[str, Any]] = {"PATIENT": {}, "STUDY": {}, "SERIES": {}, "IMAGE": {}}
    for tag, targets in _indexed().items():
        if tag not in present:
            continue
        try:
            raw = header.value(tag)
        except Exception:
            continue  # an unreadable optional attribute is not worth losing the object
        for level, kw, integer in targets:
            out[level][kw] = _int(raw) if integer else text(raw)
    inst = out["IMAGE"]
    inst["TransferSyntaxUID"] = header.transfer_syntax
    inst["SOPClassUID"] = header.uid("SOPClassUID")
    inst["SOPInstanceUID"] = header.uid("SOPInstanceUID")
    if inst.get("NumberOfFrames") is None and inst.get("Rows"):
        inst["NumberOfFrames"] = 1
    return out
