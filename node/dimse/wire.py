"""A fast encoder for the small flat data sets DIMSE sends by the thousand: C-FIND responses and
command sets.

pynetdicom encodes every command set (twice: once to learn its group length)
and every C-FIND identifier with pydicom's general writer, which handles any
data set and costs ~0.1 ms per element for it. In a 1,000-study C-FIND
answer that was half the node's time (py-spy). These data sets are flat lists
of short values, so this writes them directly in Little Endian (Implicit or
Explicit VR; PS3.5 7.1) and returns None for anything it does not handle
exactly as pydicom does (sequences, AT, big endian, ISO 2022 character sets,
values too long for a 16-bit length), which then goes to pydicom's writer.
tests/test_wire.py holds it byte for byte to pydicom's output.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UR",
                      "UT"})
CHARSET_TEXT = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})  # (and PN) may hold non-ASCII text
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is part of the value
NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_tag = struct.Struct("<HH")
_implicit_len = struct.Struct("<I")
_short = struct.Struct("<2sH")
_long = struct.Struct("<2sxxI")


class Unhandled(Exception):
    """What this encoder leaves to pydicom's writer."""


class Encoded:
    """A C-FIND response already encoded (by encode_elements) in its context's transfer syntax,
    yielded to pynetdicom in place of a Dataset (whose construction alone cost a tenth of a large
    answer); encode_flat gives pynetdicom its bytes, or the data set when asked for another
    encoding."""

    __slots__ = ("data", "elements", "implicit_vr")

    def __init__(self, data: bytes, implicit_vr: bool, elements: list[tuple[int, str, Any]]) -> None:
        self.data, self.implicit_vr, self.elements = data, implicit_vr, elements

    def dataset(self) -> Dataset:
        ds = Dataset()
        for tag, vr, value in self.elements:
            ds.add_new(tag, vr, value)
        return ds


def encode_flat(ds: Dataset | Encoded, implicit_vr: bool, little_endian: bool) -> bytes | Dataset | None:
    """`ds` encoded as pydicom would; None when pydicom's writer must encode it, or the data set
    it must encode instead (an Encoded response asked for another encoding)."""
    if isinstance(ds, Encoded):
        if little_endian and ds.implicit_vr == implicit_vr:
            return ds.data
        ds = ds.dataset()
        if not little_endian:
            return ds
    if not little_endian:
        return None
    return encode_elements([(e.tag, e.VR, e.value) for e in ds], implicit_vr) or ds


def encode_elements(elements: list[tuple[int, str, Any]], implicit_vr: bool) -> bytes | None:
    """(tag, VR, value) in tag order, encoded in Little Endian as pydicom would (the text in the
    Specific Character Set among them), or None when pydicom's writer must do it."""
    try:
        encodings = _encodings(next((v for t, _vr, v in elements if t == 0x00080005), None))
        out = bytearray()
        for tag, vr, value in elements:
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # retired group lengths are not written (PS3.5 7.2), as pydicom does
            raw = _value_bytes(vr, value, encodings)
            out += _tag.pack(tag >> 16, tag & 0xFFFF)
            if implicit_vr:
                out += _implicit_len.pack(len(raw))
            elif vr in LONG_VRS:
                out += _long.pack(vr.encode(), len(raw))
            else:
                if len(raw) > 0xFFFF:
                    return None
                out += _short.pack(vr.encode(), len(raw))
            out += raw
        return bytes(out)
    except (Unhandled, struct.error, UnicodeError):
        return None


def _encodings(charset: Any) -> list[str]:
    if charset is None or charset == "":
        return convert_encodings(None)
    values = list(charset) if isinstance(charset, (list, MultiValue)) else [charset]
    if len(values) != 1 or "2022" in str(values[0]):
        raise Unhandled  # code extensions switch charsets inside a value: pydicom's job
    return convert_encodings(values)


def _value_bytes(vr: str, value: Any, encodings: list[str]) -> bytes:
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and not value):
        return b""
    if isinstance(value, (bytes, bytearray)):
        if vr not in BYTES_VRS and vr not in TEXT_VRS and vr not in ("UI", "PN"):
            raise Unhandled
        raw = bytes(value)
        return raw + (b"\0" if vr in BYTES_VRS or vr == "UI" else b" ") if len(raw) % 2 else raw
    if vr in NUMBERS:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        return struct.pack(f"<{len(values)}{NUMBERS[vr]}", *values)
    if vr == "UI":
        raw = _join(value).encode("ascii")
        return raw + b"\0" if len(raw) % 2 else raw
    if vr == "PN":
        names = value if isinstance(value, (list, MultiValue)) else [value]
        raw = b"\\".join(_person_name(n, encodings) for n in names)
    elif vr in TEXT_VRS:
        if vr in SINGLE_VALUED and isinstance(value, (list, MultiValue)):
            raise Unhandled
        text = _join(value)
        raw = text.encode("ascii") if text.isascii() else _charset_text(vr, text, encodings)
    else:  # SQ, AT and anything unknown
        raise Unhandled
    return raw + b" " if len(raw) % 2 else raw


def _join(value: Any) -> str:
    if isinstance(value, (list, MultiValue)):
        return "\\".join(_text(v) for v in value)
    return _text(value)


def _text(v: Any) -> str:
    if isinstance(v, str):  # str subclasses (IS, DSfloat from text) keep their original text
        return v
    original = getattr(v, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise Unhandled  # a number as IS/DS text: pydicom's formatting rules
    return str(v)


def _charset_text(vr: str, text: str, encodings: list[str]) -> bytes:
    if vr not in CHARSET_TEXT:
        raise Unhandled
    return encode_string(text, encodings)


def _person_name(name: Any, encodings: list[str]) -> bytes:
    text = str(name)
    if text.isascii():
        return text.encode("ascii")
    pn = name if isinstance(name, PersonName) else PersonName(text)
    return pn.encode(encodings)


# -- the File Meta Information of a received data set (PS3.10 7.1: Explicit VR Little Endian) -------

def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, implementation_uid: str,
              implementation_version: str) -> bytes | None:
    """The File Meta Information group, group length first, as pydicom's write_file_meta_info
    writes pynetdicom's create_file_meta (what follows the preamble and "DICM"); None when
    pydicom must write it."""
    head = _meta_head(sop_class)
    instance = encode_elements([(0x00020003, "UI", sop_instance)], implicit_vr=False)
    tail = _meta_tail(transfer_syntax, implementation_uid, implementation_version)
    if head is None or instance is None or tail is None:
        return None
    length = len(head) + len(instance) + len(tail)
    return b"".join((_tag.pack(2, 0), _short.pack(b"UL", 4), _implicit_len.pack(length), head, instance, tail))


# What the File Meta of one association's objects share, encoded once: each element is encoded on
# its own (no character set in group 0002), so the parts joined are the whole encoded at once.
@lru_cache(maxsize=256)
def _meta_head(sop_class: str) -> bytes | None:
    return encode_elements([(0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", sop_class)], implicit_vr=False)


@lru_cache(maxsize=256)
def _meta_tail(transfer_syntax: str, implementation_uid: str, implementation_version: str) -> bytes | None:
    return encode_elements([(0x00020010, "UI", transfer_syntax), (0x00020012, "UI", implementation_uid),
                            (0x00020013, "SH", implementation_version)], implicit_vr=False)


# -- command sets (PS3.7 E.1: always Implicit VR Little Endian) ---------------------------------

COMMAND_FIELDS = {"C-STORE-RQ": 0x0001, "C-STORE-RSP": 0x8001, "C-GET-RQ": 0x0010, "C-GET-RSP": 0x8010,
                  "C-FIND-RQ": 0x0020, "C-FIND-RSP": 0x8020, "C-MOVE-RQ": 0x0021, "C-MOVE-RSP": 0x8021,
                  "C-ECHO-RQ": 0x0030, "C-ECHO-RSP": 0x8030, "C-CANCEL-RQ": 0x0FFF}


def command_set(message: str, primitive: Any, keywords: tuple[str, ...], has_data_set: bool) -> bytes | None:
    """The encoded command set of a DIMSE-C `message` ("C-STORE-RQ" ...) from its primitive, as
    pynetdicom's DIMSEMessage.primitive_to_message and encode would make it (the elements
    `keywords` lists, those the primitive leaves None omitted, the group length first), or None
    when this encoder leaves it to pynetdicom."""
    field = COMMAND_FIELDS.get(message)
    if field is None:
        return None
    elements: list[tuple[int, str, Any]] = []
    for kw in keywords:
        if kw == "CommandGroupLength":
            continue
        if kw == "CommandField":
            value: Any = field
        elif kw == "CommandDataSetType":
            value = 0x0001 if has_data_set else 0x0101
        else:
            value = getattr(primitive, kw, None)
            if value is None:
                continue
        tag = _COMMAND_TAGS.get(kw)
        if tag is None:
            return None
        elements.append((tag[0], tag[1], value))
    elements.sort(key=lambda e: e[0])
    body = encode_elements(elements, True)
    if body is None:
        return None
    return _tag.pack(0, 0) + _implicit_len.pack(4) + struct.pack("<I", len(body)) + body


def _command_tags() -> dict[str, tuple[int, str]]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    out = {}
    for kw in ("CommandField", "CommandDataSetType", "AffectedSOPClassUID", "MessageID", "MessageIDBeingRespondedTo", "Priority",
               "AffectedSOPInstanceUID", "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID",
               "Status", "ErrorComment", "MoveDestination", "NumberOfRemainingSuboperations",
               "NumberOfCompletedSuboperations", "NumberOfFailedSuboperations", "NumberOfWarningSuboperations",
               "ErrorID"):
        tag = tag_for_keyword(kw)
        assert tag is not None
        out[kw] = (tag, dictionary_VR(tag))
    return out


_COMMAND_TAGS = _command_tags()
_COMMAND_BY_TAG = {tag: (kw, vr) for kw, (tag, vr) in _COMMAND_TAGS.items()}
_COMMAND_BY_TAG[0x00000000] = ("CommandGroupLength", "UL")
_element = struct.Struct("<II")  # implicit VR: the tag (group, element as one little-endian int) and length


def decode_command(data: bytes) -> dict[str, Any] | None:
    """The elements of an encoded command set (Implicit VR Little Endian, PS3.7 6.3.1) by keyword,
    valued as pydicom decodes them (PS3.5 6.2: AE without its padding on either side, UI and LO
    without trailing padding, US and UL as ints), or None for anything else: an element this
    decoder does not know, a multi-valued or malformed one, which pynetdicom then decodes.
    """
    out: dict[str, Any] = {}
    at, end = 0, len(data)
    try:
        while at < end:
            tag, length = _element.unpack_from(data, at)
            tag = ((tag & 0xFFFF) << 16) | (tag >> 16)
            at += 8
            value = data[at:at + length]
            at += length
            known = _COMMAND_BY_TAG.get(tag)
            if known is None or len(value) != length:
                return None
            kw, vr = known
            if vr == "US":
                if length != 2:
                    return None
                out[kw] = value[0] | value[1] << 8
            elif vr == "UL":
                if length != 4:
                    return None
                out[kw] = int.from_bytes(value, "little")
            else:
                if b"\\" in value:
                    return None
                text = value.decode("latin-1")
                out[kw] = text.strip(" ") if vr == "AE" else text.rstrip("\0 ")
    except struct.error:
        return None
    return out
