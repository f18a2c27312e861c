"""De-identification by the PS3.15 Annex E basic profile and its options (node/deid_profile.py).

Every attribute, at every depth of every sequence, gets its table action:
X removed, Z emptied, D a dummy valid for its VR, K kept, C cleaned (dates
shifted per patient, free text scrubbed of the patient's identifiers), U a
keyed pseudonym UID. Private attributes go unless Retain Safe Private keeps
the allow-listed ones. Pseudonyms (UIDs, PatientID, PatientName, date shift)
are HMAC-SHA256 of the original under the node's secret key: the same
original always maps to the same pseudonym, and nobody without the key can
go back.

Pixel data is never decoded or rewritten: the de-identified header is written
in the original transfer syntax and the Pixel Data element is copied from the
original file byte for byte, so memory stays at the header's size.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomnode.errors import AnonymizeError
from dicomnode.node.processing.anonymize import profile as prof
from dicomnode.node.processing.anonymize.keys import Pseudonyms
from dicomnode.storage.archive.durable import atomic_file
from dicomnode.storage.archive.header import MAX_NESTING, nesting_depth

METHOD = "dicomnode PS3.15 E.1 basic"
BURNED_IN_CLASSES = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.", "1.2.840.10008.5.1.4.1.1.7")
# Private attributes known to hold no identity (creator, group, element offset): the allow-list of
# Retain Safe Private; diffusion and timing parameters needed to read MR and CT research data.
SAFE_PRIVATE = {
    ("SIEMENS MR HEADER", 0x0019, 0x0A), ("SIEMENS MR HEADER", 0x0019, 0x0B), ("SIEMENS MR HEADER", 0x0019, 0x0C),
    ("SIEMENS MR HEADER", 0x0019, 0x0D), ("SIEMENS MR HEADER", 0x0019, 0x0E), ("SIEMENS MR HEADER", 0x0019, 0x27),
    ("SIEMENS MR HEADER", 0x0051, 0x0B), ("GEMS_PARM_01", 0x0043, 0x39), ("GEMS_ACQU_01", 0x0019, 0xBB),
    ("GEMS_ACQU_01", 0x0019, 0xBC), ("GEMS_ACQU_01", 0x0019, 0xBD), ("Philips MR Imaging DD 001", 0x2001, 0x03),
    ("Philips MR Imaging DD 001", 0x2001, 0x04), ("Philips Imaging DD 001", 0x2001, 0x03),
}
TEXT_VRS = ("LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS", "AE")
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0", "DT": "19000101000000",
    "FL": 0.0, "FD": 0.0, "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "SL": 0, "SS": 0, "ST": "ANONYMIZED", "SV": 0, "TM": "000000.00", "UC": "ANONYMIZED",
    "UL": 0, "UR": "http://anonymized.invalid", "US": 0, "UT": "ANONYMIZED", "UV": 0, "AT": 0,
    "OB": b"\0\0", "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8, "OW": b"\0\0", "UN": b"\0\0",
}


@dataclass
class Profile:
    """What a de-identification keeps: the PS3.15 E options chosen, and the pseudonym prefix."""

    options: frozenset[str] = frozenset()
    patient_prefix: str = "ANON"
    safe_private: frozenset[tuple[str, int, int]] = frozenset(SAFE_PRIVATE)

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(prof.OPTIONS)
        if unknown:
            raise AnonymizeError(f"unknown option(s) {sorted(unknown)}: {', '.join(prof.OPTIONS)}")
        if {"retain_long_full_dates", "retain_long_modified_dates"} <= self.options:
            raise AnonymizeError("full dates and modified dates are two ways of one option: choose one")


@dataclass
class Result:
    sop_instance_uid: str = ""
    original_sop_instance_uid: str = ""
    actions: Counter[str] = field(default_factory=Counter)
    burned_in_risk: str = ""  # why the pixels may show identity (not removed: pixel data is untouched)


class _Context:
    def __init__(self, ds: Dataset, settings: Profile, pseudo: Pseudonyms) -> None:
        self.settings = settings
        self.pseudo = pseudo
        self.sop_class = str(ds.get("SOPClassUID", ""))
        self.pid = str(ds.get("PatientID", "") or "")
        self.shift = pseudo.date_shift_days(self.pid)
        self.result = Result()
        self.identifiers = _identifiers(ds)


def _identifiers(ds: Dataset) -> list[str]:
    """Strings that identify the patient, for scrubbing free text (longest first)."""
    found: set[str] = set()
    for kw in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
               "OtherPatientNames", "PatientAddress", "PatientMotherBirthName", "MedicalRecordLocator",
               "PatientTelephoneNumbers", "ReferringPhysicianName"):
        v = ds.get(kw)
        if v is None:
            continue
        for item in (v if isinstance(v, (list, MultiValue)) else [v]):
            text = str(item)
            found.add(text)
            found.update(p for p in re.split(r"[\^=\s]+", text) if p)
    return sorted((f for f in found if len(f) >= 3), key=len, reverse=True)


def anonymize_dataset(ds: Dataset, settings: Profile, pseudo: Pseudonyms) -> Result:
    """De-identify a data set in place (its Pixel Data, if loaded, untouched)."""
    ctx = _Context(ds, settings, pseudo)
    ctx.result.original_sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
    ctx.result.burned_in_risk = burned_in_risk(ds)
    _walk(ds, ctx)
    _mark(ds, settings)
    ctx.result.sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
    return ctx.result


def burned_in_risk(ds: Dataset) -> str:
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return ""
    sop = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if modality in ("US", "SC", "OT", "XC", "ES", "DOC") or sop.startswith(BURNED_IN_CLASSES):
        return f"{modality or 'secondary capture'} images often carry burned-in text and BurnedInAnnotation is not NO"
    return ""


def _walk(ds: Dataset, ctx: _Context) -> None:
    kept_private_blocks: set[tuple[int, int]] = set()
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.tag.group == 0x0002 or tag == 0x7FE00010:
            continue
        if elem.tag.is_private:
            if 0x0010 <= elem.tag.element <= 0x00FF:
                continue  # private creators: decided once their blocks are
            if _keep_private(ds, elem, ctx):
                kept_private_blocks.add((elem.tag.group, elem.tag.element >> 8))
                ctx.result.actions["K"] += 1
            else:
                del ds[elem.tag]
                ctx.result.actions["X"] += 1
            continue
        row = prof.by_tag().get(tag) or prof.repeating(tag)
        if row is None:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _walk(item, ctx)
            continue
        code = prof.resolve(prof.action(row, ctx.settings.options), row.keyword, ctx.sop_class)
        ctx.result.actions[code] += 1
        _apply(ds, elem, code, ctx)
    for elem in list(ds):
        if elem.tag.is_private and 0x0010 <= elem.tag.element <= 0x00FF \
                and (elem.tag.group, elem.tag.element) not in kept_private_blocks:
            del ds[elem.tag]


def _keep_private(ds: Dataset, elem: DataElement, ctx: _Context) -> bool:
    if "retain_safe_private" not in ctx.settings.options:
        return False
    creator_tag = (elem.tag.group << 16) | (elem.tag.element >> 8)
    creator = ds.get(creator_tag)
    name = str(creator.value).strip() if creator is not None else ""
    return (name, elem.tag.group, elem.tag.element & 0xFF) in ctx.settings.safe_private


def _apply(ds: Dataset, elem: DataElement, code: str, ctx: _Context) -> None:
    tag, vr, kw = elem.tag, elem.VR, elem.keyword
    if code == "X":
        del ds[tag]
    elif code == "Z":
        if kw in ("PatientID", "PatientName"):
            ds[tag].value = _patient_pseudonym(kw, ctx)
        else:
            ds[tag].value = Sequence([]) if vr == "SQ" else None
    elif code == "D":
        if vr == "SQ":  # a dummy content: the structure and its codes stay, every free value is replaced
            for item in elem.value or []:
                _walk(item, ctx)
                _dummy_values(item)
        elif kw in ("PatientID", "PatientName"):
            ds[tag].value = _patient_pseudonym(kw, ctx)
        elif vr == "UI":
            ds[tag].value = _uids(elem.value, ctx)
        else:
            ds[tag].value = _DUMMY.get(vr, None)
    elif code == "U":
        if vr == "SQ":
            for item in elem.value or []:
                _walk(item, ctx)
        elif elem.value not in (None, ""):
            ds[tag].value = _uids(elem.value, ctx)
    elif code == "C":
        _clean(ds, elem, ctx)
    elif code == "K" and vr == "SQ":
        for item in elem.value or []:
            _walk(item, ctx)


CODE_KEYWORDS = {"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue",
                 "URNCodeValue", "ValueType", "RelationshipType", "ContinuityOfContent"}


def _dummy_values(item: Dataset) -> None:
    """Text, names, dates and numbers of a sequence item, recursively, replaced by dummies."""
    for elem in item:
        if elem.VR == "SQ":
            for sub in elem.value or []:
                _dummy_values(sub)
        elif elem.keyword not in CODE_KEYWORDS and elem.VR in (
                "LO", "SH", "ST", "LT", "UT", "UC", "PN", "DA", "DT", "TM", "DS", "IS", "AS") and elem.value not in (None, ""):
            item[elem.tag].value = _DUMMY[elem.VR]


def _patient_pseudonym(kw: str, ctx: _Context) -> str:
    p = ctx.settings.patient_prefix
    return ctx.pseudo.patient_id(ctx.pid, p) if kw == "PatientID" else ctx.pseudo.patient_name(ctx.pid, p)


def _uids(value: Any, ctx: _Context) -> Any:
    if isinstance(value, (list, MultiValue)):
        return [ctx.pseudo.uid(str(v)) for v in value]
    return ctx.pseudo.uid(str(value))


def _clean(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """Values of similar meaning without identity: dates shifted, text scrubbed, sequences walked."""
    vr = elem.VR
    if vr == "SQ":
        for item in elem.value or []:
            _walk(item, ctx)
            _scrub_texts(item, ctx)
        return
    if elem.value in (None, ""):
        return
    if vr in ("DA", "DT"):
        ds[elem.tag].value = _shift(elem.value, vr, ctx.shift)
    elif vr in TEXT_VRS:
        ds[elem.tag].value = _scrub(elem.value, ctx)
    elif vr == "UI":
        ds[elem.tag].value = _uids(elem.value, ctx)


def _scrub_texts(item: Dataset, ctx: _Context) -> None:
    for elem in item:
        if elem.VR in ("LO", "SH", "ST", "LT", "UT", "UC", "PN") and elem.value:
            item[elem.tag].value = _scrub(elem.value, ctx)


def _scrub(value: Any, ctx: _Context) -> Any:
    if isinstance(value, (list, MultiValue)):
        return [_scrub(v, ctx) for v in value]
    text = str(value)
    for ident in ctx.identifiers:
        text = re.sub(re.escape(ident), "X" * min(len(ident), 8), text, flags=re.IGNORECASE)
    return text


def _shift(value: Any, vr: str, days: int) -> Any:
    if isinstance(value, (list, MultiValue)):
        return [_shift(v, vr, days) for v in value]
    text = str(value)
    head = text[:8]
    try:
        d = date(int(head[:4]), int(head[4:6]), int(head[6:8])) - timedelta(days=days)
    except ValueError:
        return _DUMMY[vr]
    return d.strftime("%Y%m%d") + text[8:]


def _mark(ds: Dataset, settings: Profile) -> None:
    """PatientIdentityRemoved, the method as text and as CID 7050 codes, what became of the dates."""
    ds.PatientIdentityRemoved = "YES"
    chosen = [o for o in prof.OPTIONS if o in settings.options]
    ds.DeidentificationMethod = [METHOD, *(prof.OPTION_CODES[o][1][:64] for o in chosen)]
    items = []
    for key in ("basic", *chosen):
        code, meaning = prof.OPTION_CODES[key]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if "retain_long_full_dates" in settings.options
        else "MODIFIED" if "retain_long_modified_dates" in settings.options else "REMOVED")


# -- files ----------------------------------------------------------------------------


def anonymize_file(src: Path, dst: Path, settings: Profile, pseudo: Pseudonyms) -> Result:
    """Write the de-identified copy of src to dst (atomically); Pixel Data copied byte for byte."""
    from dicomnode.node.processing.analyze import analyze_file

    ds = dcmread(src, stop_before_pixels=True, defer_size=None, force=True)
    for kw in ("SOPInstanceUID", "SOPClassUID"):
        if not ds.get(kw):
            raise AnonymizeError(f"{src.name}: no {kw} (not a DICOM instance?)")
    if nesting_depth(ds) > MAX_NESTING:
        raise AnonymizeError(f"{src.name}: sequences nested more than {MAX_NESTING} levels deep")
    implicit, little = ds.original_encoding
    tsyntax = ds.file_meta.get("TransferSyntaxUID") or (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    if tsyntax == DeflatedExplicitVRLittleEndian:  # byte offsets mean nothing inside a deflated stream
        return _anonymize_whole(src, dst, settings, pseudo)
    report = analyze_file(src)
    px = report.get("pixel_data_info") or {}
    span = _pixel_span(report) if px.get("pixel_data_tag_offset") is not None else None
    result = anonymize_dataset(ds, settings, pseudo)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = tsyntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    with atomic_file(dst) as tmp, open(tmp, "wb") as out, open(src, "rb") as inp:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
        out.write(_encode(ds, implicit, little))
        if span is not None:
            start, end = span
            inp.seek(start)
            _copy(inp, out, end - start)
            trailer = inp.read()
            if trailer:
                _write_trailer(out, trailer, implicit, little, settings, pseudo, ds)
    return result


def _anonymize_whole(src: Path, dst: Path, settings: Profile, pseudo: Pseudonyms) -> Result:
    ds = dcmread(src, force=True)
    result = anonymize_dataset(ds, settings, pseudo)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with atomic_file(dst) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return result


def _encode(ds: Dataset, implicit: bool | None, little: bool | None) -> bytes:
    """The data set in the original file's encoding (so the copied Pixel Data bytes still fit)."""
    buf = DicomBytesIO()
    buf.is_implicit_VR = bool(implicit)
    buf.is_little_endian = little is not False
    write_dataset(buf, ds)
    return buf.getvalue()


def _pixel_span(report: dict[str, Any]) -> tuple[int, int]:
    """[start, end) of the Pixel Data element (tag to last byte) in the original file."""
    px = report["pixel_data_info"]
    start = px["pixel_data_tag_offset"]
    if px.get("value_length") is not None:
        return start, px["pixel_data_offset"] + px["value_length"]
    frags = [f for fr in report["frame_info"].get("frame_offsets", []) for f in fr.get("fragments", [])]
    if not frags:
        return start, report["file_info"]["filesize"]
    last = max(frags, key=lambda f: f["offset"])
    return start, last["offset"] + last["length"] + 8  # the sequence delimiter item


def _copy(inp: Any, out: Any, n: int) -> None:
    while n > 0:
        chunk = inp.read(min(n, 1 << 20))
        if not chunk:
            break
        out.write(chunk)
        n -= len(chunk)


def _write_trailer(out: Any, trailer: bytes, implicit: bool | None, little: bool | None, settings: Profile,
                   pseudo: Pseudonyms, main: Dataset) -> None:
    """Elements after Pixel Data (padding, signatures): de-identified too, or dropped if unreadable."""
    try:
        from pydicom.filereader import read_dataset

        tail = read_dataset(BytesIO(trailer), bool(implicit), bool(little))
        tail.SpecificCharacterSet = main.get("SpecificCharacterSet", "ISO_IR 6")
        ctx = _Context(main, settings, pseudo)
        _walk(tail, ctx)
        del tail.SpecificCharacterSet
        out.write(_encode(tail, implicit, little))
    except Exception:
        pass  # unreadable trailing bytes carry nothing the instance needs

