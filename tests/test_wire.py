"""node/dimse/wire.py against pydicom's writer: the same bytes, or a refusal (None) that sends the
data set to pydicom's writer instead, for every flat element of pydicom's real files and for the
awkward values C-FIND responses carry (non-ASCII names in several character sets, multi-values,
odd lengths, numbers, empty values)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE

from dicomnode.node.dimse import wire
from tests.support.datagen import pydicom_test_files


def pydicom_bytes(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return fp.getvalue()


def flat(ds: Dataset) -> Dataset:
    """The top-level elements a C-FIND response could hold: no sequences, no pixel data."""
    out = Dataset()
    for elem in ds:
        if elem.VR != "SQ" and elem.tag != 0x7FE00010 and elem.tag.group != 0x0002:
            out.add(elem)
    return out


def real_files() -> list[Path]:
    return [f for f in pydicom_test_files() if "big" not in f.name.lower() and "deflate" not in f.name.lower()]


def test_real_files_encode_as_pydicom_does() -> None:
    fast = refused = 0
    for path in real_files():
        try:
            ds = flat(dcmread(path, stop_before_pixels=True))
        except Exception:  # pydicom's deliberately broken test files
            continue
        for implicit in (True, False):
            try:
                expected = pydicom_bytes(ds, implicit)
            except Exception:
                continue
            got = wire.encode_elements([(e.tag, e.VR, e.value) for e in ds], implicit)
            if got is None:
                refused += 1
                continue
            assert got == expected, f"{path} ({'implicit' if implicit else 'explicit'} VR)"
            fast += 1
    assert fast > 100  # most real data sets take the fast path
    print(f"{fast} encoded like pydicom, {refused} left to pydicom")


@pytest.mark.parametrize("charset, name", [
    (None, "SMITH^JOHN"),
    ("ISO_IR 100", "MÜLLER^ANNA"),
    ("ISO_IR 192", "MÜLLER^ANNA=ミュラー^アンナ"),
    ("ISO_IR 192", "Ковальски^Анна"),
    ("ISO_IR 144", "Ковальски^Анна"),
    ("ISO_IR 6", "ODD^X"),
])
@pytest.mark.parametrize("implicit", [True, False])
def test_response_values(charset: str | None, name: str, implicit: bool) -> None:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "NODE"
    ds.PatientName = name
    ds.PatientID = "ID1"
    ds.StudyDescription = "Kopf ß" if charset else "HEAD"
    ds.ModalitiesInStudy = ["CT", "MR", "PR"]
    ds.NumberOfStudyRelatedInstances = "12"
    ds.StudyInstanceUID = "1.2.3.45"  # odd: padded with NUL
    ds.StudyDate = ""
    ds.AccessionNumber = None
    ds.Rows = 512
    ds.add_new(0x00280030, "DS", ["0.5", "0.5"])
    got = wire.encode_elements([(e.tag, e.VR, e.value) for e in ds], implicit)
    assert got is not None
    assert got == pydicom_bytes(ds, implicit)


def test_what_is_left_to_pydicom() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    assert wire.encode_elements([(e.tag, e.VR, e.value) for e in ds], False) is None
    seq = Dataset()
    seq.ReferencedSOPSequence = [Dataset()]
    assert wire.encode_elements([(e.tag, e.VR, e.value) for e in seq], False) is None
    # an Encoded response asked for another encoding becomes the data set pydicom writes
    elements = [(0x00080052, "CS", "STUDY"), (0x00100010, "PN", "A^B")]
    enc = wire.Encoded(wire.encode_elements(elements, True) or b"", True, elements)
    assert wire.encode_flat(enc, True, True) == enc.data
    other = wire.encode_flat(enc, False, True)
    assert other == pydicom_bytes(enc.dataset(), False)


def _primitives() -> list[tuple[object, bool]]:
    """DIMSE-C primitives as the node sends them, with and without their optional parameters."""
    out: list[tuple[object, bool]] = []
    for status in (0xFF00, 0xFF01, 0x0000, 0xA900, 0xFE00):
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
        rsp.Status = status
        if status == 0xA900:
            rsp.ErrorComment = "bad key"
        out.append((rsp, status in (0xFF00, 0xFF01)))
    for originator in (None, "MOVESCU"):
        rq = C_STORE()
        rq.MessageID, rq.Priority = 3, 2
        rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
        if originator:
            rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = originator, 9
        out.append((rq, True))
    st = C_STORE()
    st.MessageIDBeingRespondedTo, st.Status = 3, 0x0000
    st.AffectedSOPClassUID, st.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    out.append((st, False))
    for kind in (C_GET, C_MOVE):
        for status in (0xFF00, 0x0000, 0xB000):
            r = kind()
            r.MessageIDBeingRespondedTo, r.Status = 5, status
            r.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
            r.NumberOfRemainingSuboperations = 10 if status == 0xFF00 else None
            r.NumberOfCompletedSuboperations, r.NumberOfFailedSuboperations = 490, 0
            r.NumberOfWarningSuboperations = 0
            out.append((r, False))
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.Status = 1, 0x0000
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    out.append((echo, False))
    return out


@pytest.mark.parametrize("primitive, has_data", _primitives())
def test_command_sets_as_pynetdicom_encodes_them(primitive: object, has_data: bool) -> None:
    """Command sets (always Implicit VR Little Endian), byte for byte as pynetdicom makes them."""
    response = primitive.MessageIDBeingRespondedTo is not None  # type: ignore[attr-defined]
    msg = (_RSP_TO_MESSAGE if response else _RQ_TO_MESSAGE)[type(primitive)]()
    if has_data:  # what decides Command Data Set Type
        setattr(primitive, _DATASET_KEYWORDS[type(msg).__name__], BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "))
    msg.primitive_to_message(primitive)
    name = type(msg).__name__.replace("_", "-")
    expected = pydicom_bytes(msg.command_set, True)
    assert wire.command_set(name, primitive, _COMMAND_SET_KEYWORDS[name], has_data) == expected


@pytest.mark.parametrize("sop_class, sop_instance, syntax", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.6.7.8.9", "1.2.840.10008.1.2.1"),  # even and odd lengths
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567890", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.4", "2.25.1", "1.2.840.10008.1.2.4.50"),
])
def test_file_meta_as_pynetdicom_writes_it(sop_class: str, sop_instance: str, syntax: str) -> None:
    """The File Meta before each received data set, byte for byte as pydicom writes pynetdicom's."""
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.dsutils import create_file_meta

    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_file_meta_info(fp, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,  # type: ignore[arg-type]
                                              transfer_syntax=syntax))  # type: ignore[arg-type]
    assert wire.file_meta(sop_class, sop_instance, syntax, PYNETDICOM_IMPLEMENTATION_UID,
                          PYNETDICOM_IMPLEMENTATION_VERSION) == fp.getvalue()
    assert wire.file_meta("1.2.3", "1.2.\u00e9", syntax, "1.2", "X") is None  # not ASCII: pydicom's


def _element(tag: int, value: bytes) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + len(value).to_bytes(4, "little") + value


@pytest.mark.parametrize("primitive, has_data", _primitives())
def test_command_sets_decode_as_pydicom_reads_them(primitive: object, has_data: bool) -> None:
    """Every command set the encoder makes reads back as pydicom reads it, element for element."""
    from pynetdicom.dsutils import decode

    response = primitive.MessageIDBeingRespondedTo is not None  # type: ignore[attr-defined]
    name = (_RSP_TO_MESSAGE if response else _RQ_TO_MESSAGE)[type(primitive)].__name__.replace("_", "-")
    data = wire.command_set(name, primitive, _COMMAND_SET_KEYWORDS[name], has_data)
    assert data is not None
    assert wire.decode_command(data) == {e.keyword: e.value for e in decode(BytesIO(data), True, True)}


@pytest.mark.parametrize("value", [
    _element(0x00000002, b"1.2.840.10008.1.1\x00") + _element(0x00000100, b"\x30\x80"),  # UI padded with NUL
    _element(0x00000002, b"1.2.3 ") + _element(0x00001030, b" MOVESCU  "),  # AE: padding either side
    _element(0x00000900, b"\x00\xa7") + _element(0x00000902, b"\xe9chec "),  # LO in the default repertoire
    _element(0x00000800, b"\x01\x01") + _element(0x00001021, b"\x01\x00"),
])
def test_padded_command_values_decode_as_pydicom_reads_them(value: bytes) -> None:
    from pynetdicom.dsutils import decode

    assert wire.decode_command(value) == {e.keyword: e.value for e in decode(BytesIO(value), True, True)}


@pytest.mark.parametrize("value", [
    _element(0x00000901, b"\x08\x00\x18\x00"),  # Offending Element (AT): left to pynetdicom
    _element(0x00000002, b"1.2.3\\1.2.4 "),  # more than one value
    _element(0x00000900, b"\x00"),  # US of one byte
    _element(0x00000002, b"1.2.3 ")[:-2],  # cut short
    _element(0x00080018, b"1.2.3 "),  # not a command element
])
def test_command_sets_left_to_pynetdicom(value: bytes) -> None:
    assert wire.decode_command(value) is None


def test_remembered_uids_still_checked_when_new_or_bad(caplog: pytest.LogCaptureFixture) -> None:
    """patches.remember_valid_uids: a valid UID passes again unchecked; a non-conformant one is warned
    about every time, an invalid one refused every time."""
    from dicomnode.node.dimse import patches

    patches.remember_valid_uids()
    for _ in range(2):
        rq = C_STORE()
        rq.AffectedSOPInstanceUID = "1.2.840.113619.2.55.3"
        assert rq.AffectedSOPInstanceUID == "1.2.840.113619.2.55.3"
        caplog.clear()
        rq.AffectedSOPInstanceUID = "1.2.03.4"  # a leading zero: non-conformant, accepted with a warning
        assert "Non-conformant" in caplog.text
        with pytest.raises(ValueError):
            rq.AffectedSOPInstanceUID = "1." * 40  # over 64 characters


def _request(kind: str) -> object:
    rq = {"echo": C_ECHO, "find": C_FIND, "get": C_GET, "move": C_MOVE}[kind]()
    rq.MessageID = 7
    rq.AffectedSOPClassUID = "1.2.840.10008.1.1" if kind == "echo" else "1.2.840.10008.5.1.4.1.2.2.1"
    if kind != "echo":
        rq.Priority = 1
        rq.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x20\x00\x0d\x00\x06\x00\x00\x001.2.3\x00")
    if kind == "move":
        rq.MoveDestination = "STORESCP"
    return rq


@pytest.mark.parametrize("kind", ["echo", "find", "get", "move"])
def test_requests_decode_as_pynetdicom_decodes_them(kind: str) -> None:
    """patches.quick_receive: C-ECHO, C-FIND, C-GET and C-MOVE requests become the primitives
    pynetdicom's own decoding makes (which it takes when its debug log is on), identifier and all."""
    import logging

    from pynetdicom import AE
    from pynetdicom.association import Association

    from dicomnode.node.dimse import patches

    patches.quick_receive(wire.decode_command)
    rq = _request(kind)
    msg = _RQ_TO_MESSAGE[type(rq)]()
    msg.primitive_to_message(rq)
    pdatas = list(msg.encode_msg(3, 16384))
    got = []
    debug = logging.getLogger("pynetdicom")
    level = debug.level
    try:
        for pynetdicoms in (False, True):
            debug.setLevel(logging.DEBUG if pynetdicoms else level)
            dimse = Association(AE(), "acceptor").dimse
            for n, p in enumerate(pdatas):
                dimse.receive_primitive(p)
                if n == 0 and kind != "echo":  # the command set decoded: whose message receives the rest
                    assert type(dimse.message) is (_RQ_TO_MESSAGE[type(rq)] if pynetdicoms else patches._Request)
            got.append(dimse.msg_queue.get(False))
    finally:
        debug.setLevel(level)
    (cx_quick, quick), (cx_theirs, theirs) = got
    assert type(quick) is type(theirs) and cx_quick == cx_theirs == 3 == quick._context_id == theirs._context_id
    for name in ("MessageID", "AffectedSOPClassUID", "Priority", "MoveDestination"):
        assert getattr(quick, name, None) == getattr(theirs, name, None)
    if kind != "echo":
        assert quick.Identifier.getvalue() == theirs.Identifier.getvalue() == rq.Identifier.getvalue()  # type: ignore[attr-defined]


def test_remembered_ae_titles_still_checked_when_new_or_bad() -> None:
    """patches.remember_valid_uids also remembers AE titles that passed: a bad one is still refused
    each time, a title that was remembered still passes."""
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    from dicomnode.node.dimse import patches

    patches.remember_valid_uids()
    for _ in range(2):
        p = A_ASSOCIATE()
        p.calling_ae_title = "STORESCU"
        assert p.calling_ae_title == "STORESCU"
        for bad in ("A\\B", "TOO_LONG_FOR_AN_AE", "    "):
            with pytest.raises(ValueError):
                p.calling_ae_title = bad
