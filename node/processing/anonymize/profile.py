"""PS3.15 Annex E Table E.1-1 as data: which action applies to which attribute, given the options.

The table (edition 2024e, 621 rows) is node/ps315_annex_e.json, copied from
the shared reference. An option column, when the option is selected and its
cell is not blank, replaces the basic profile action. Combined codes (X/Z,
Z/D, X/D, X/Z/D, X/Z/U*) are resolved by the attribute's type in the IOD
where this module knows it, else by the choice that keeps any IOD valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("ps315_annex_e.json")

OPTIONS = ("retain_safe_private", "retain_uids", "retain_device_identity", "retain_institution_identity",
           "retain_patient_characteristics", "retain_long_full_dates", "retain_long_modified_dates",
           "clean_descriptors", "clean_structured_content", "clean_graphics")
# CID 7050 De-identification Method codes (DCM)
OPTION_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

# Types (1, 2, 3) of attributes with combined codes in the IODs where they are known:
# the general modules shared by the composite image IODs, and the enhanced
# multi-frame / structured report IODs that make some of them Type 1.
_GENERAL_TYPE = {
    "AcquisitionDate": 3, "AcquisitionTime": 3, "AcquisitionDateTime": 3, "ContentDate": 2, "ContentTime": 2,
    "SeriesDate": 3, "SeriesTime": 3, "InstanceCreationDate": 3, "InstanceCreationTime": 3, "ProtocolName": 3,
    "InstitutionName": 3, "InstitutionCodeSequence": 3, "StationName": 3, "DeviceSerialNumber": 3,
    "OperatorsName": 3, "OperatorIdentificationSequence": 3, "ReferencedStudySequence": 3,
    "ReferencedPerformedProcedureStepSequence": 3, "ReferencedImageSequence": 3, "SourceImageSequence": 3,
    "ContrastBolusAgent": 2, "PatientID": 2, "AcquisitionDeviceProcessingDescription": 3,
    "RequestedProcedureDescription": 3, "PatientSexNeutered": 3, "ContentCreatorName": 2,
    "DateOfLastDetectorCalibration": 3, "TimeOfLastDetectorCalibration": 3, "DetectorID": 3,
}
_ENHANCED_TYPE = {"ContentDate": 1, "ContentTime": 1, "AcquisitionDateTime": 1, "DeviceSerialNumber": 1,
                  "ContrastBolusAgent": 1}
_ENHANCED_CLASSES = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.12.1.1",
                     "1.2.840.10008.5.1.4.1.1.12.2.1", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.88.")


@dataclass(frozen=True)
class Row:
    tag: str  # as in the table: "(0010,0010)", "(50xx,xxxx)", "(gggg,eeee) where gggg is odd"
    keyword: str | None
    basic: str
    options: dict[str, str | None]


@cache
def rows() -> tuple[Row, ...]:
    data = json.loads(TABLE.read_text())
    return tuple(Row(r["tag"], r.get("keyword"), r["basic"], r.get("options") or {}) for r in data["attributes"])


def _tag_int(text: str) -> int | None:
    t = text.strip("()").replace(",", "")
    try:
        return int(t, 16)
    except ValueError:
        return None


@cache
def by_tag() -> dict[int, Row]:
    return {t: r for r in rows() if (t := _tag_int(r.tag)) is not None}


def repeating(tag: int) -> Row | None:
    """The row of a repeating-group attribute: curves (50xx,xxxx), overlays (60xx,3000) and (60xx,4000)."""
    group, elem = tag >> 16, tag & 0xFFFF
    for r in rows():
        if r.tag == "(50xx,xxxx)" and 0x5000 <= group <= 0x50FF and group % 2 == 0:
            return r
        if r.tag in ("(60xx,3000)", "(60xx,4000)") and 0x6000 <= group <= 0x60FF and group % 2 == 0 \
                and elem == int(r.tag[6:10], 16):
            return r
    return None


def private_row() -> Row:
    return next(r for r in rows() if r.tag.startswith("(gggg,eeee)"))


def action(row: Row, options: frozenset[str]) -> str:
    """The row's code after the selected options: a retaining K wins over a cleaning C."""
    chosen = [row.options.get(o) for o in options if row.options.get(o)]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return row.basic


def attribute_type(keyword: str | None, sop_class: str) -> int | None:
    if keyword is None:
        return None
    if sop_class.startswith(_ENHANCED_CLASSES) and keyword in _ENHANCED_TYPE:
        return _ENHANCED_TYPE[keyword]
    return _GENERAL_TYPE.get(keyword)


def resolve(code: str, keyword: str | None, sop_class: str) -> str:
    """A combined code as one action: by the attribute's type where known, else the IOD-safe choice."""
    if "/" not in code:
        return code
    choices = code.replace("U*", "U").split("/")
    kind = attribute_type(keyword, sop_class)
    by_type = {3: "X", 2: "Z", 1: "D"}
    if kind is not None:
        want = by_type[kind]
        if want in choices:
            return want
        if want == "D" and "U" in choices:
            return "U"
    # unknown type: the choice valid whatever the type (a dummy, replaced UIDs or an empty value)
    for safe in ("D", "U", "Z"):
        if safe in choices:
            return safe
    return choices[0]
