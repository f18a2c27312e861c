"""The pixel-data analysis report: what the pixel data of a file really is, byte by byte.

The header is parsed up to Pixel Data; from there the element header and,
for encapsulated data, every item header are read by seeking, so the cost is
the same for a 100 KB and a 1 GB object and the pixel bytes are never loaded
(only the first 16 bytes of each frame shown in the hex guide).
"""

from __future__ import annotations

import math
import struct
import threading
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.storage.archive.header import has_part10_prefix, looks_like_dicom

pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
ITEM, SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
HEX_GUIDE_FIRST = 10
# Markers that open a new frame's codestream (JPEG SOI, JPEG 2000 SOC+SIZ, JP2 box, JPEG XL).
FRAME_STARTS = (b"\xff\xd8\xff", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP", b"\xff\x0a")


@dataclass
class Findings:
    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, code: str, severity: str, message: str) -> None:
        self.items.append({"code": code, "severity": severity, "message": message})


_WARNINGS = threading.Lock()  # catch_warnings swaps process-wide state: one analysis at a time records


def analyze_file(path: Path, force: bool = False) -> dict[str, Any]:
    """The report for one file; problems with the file are findings, not exceptions.

    What pydicom warns about while reading (an unknown character set, a
    value it had to repair) becomes a DECODING_WARNING finding, never a line
    on the operator's terminal.
    """
    path = Path(path)
    findings = Findings()
    with _WARNINGS, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _analyze(path, force, findings)
    for message in dict.fromkeys(str(w.message) for w in caught):
        findings.add("DECODING_WARNING", "warning", message)
    report["findings"] = findings.items
    return report


def _analyze(path: Path, force: bool, findings: Findings) -> dict[str, Any]:
    size = path.stat().st_size
    report: dict[str, Any] = {
        "file_info": {"filename": path.name, "filepath": str(path.resolve()), "filesize": size,
                      "analysis_date": datetime.now(UTC).isoformat(timespec="seconds")},
    }
    if not looks_like_dicom(path):
        findings.add("NO_PREAMBLE", "error", "no 128-byte preamble and 'DICM' prefix: not a DICOM Part 10 file")
        findings.add("NOT_DICOM", "error", "not a DICOM file: no 'DICM' prefix, and the bytes do not start "
                     "a data set")
        return report
    with open(path, "rb") as fp:
        head = fp.read(132)
        if not has_part10_prefix(head):
            findings.add("NO_PREAMBLE", "error" if not force else "warning",
                         "no 128-byte preamble and 'DICM' prefix: not a DICOM Part 10 file")
            if not force:
                return report
        fp.seek(0)
        try:
            ds = dcmread(fp, stop_before_pixels=True, defer_size=4096, force=force)
        except Exception as exc:
            findings.add("UNREADABLE_HEADER", "error", f"the header cannot be parsed: {type(exc).__name__}: {exc}")
            return report
        tag_offset = fp.tell()
        report.update(_identifiers(ds, findings))
        pixel = _pixel_element(fp, tag_offset, ds, size, findings)
        report["pixel_data_info"], report["frame_info"], report["hex_guide"] = _pixels(fp, ds, pixel, size, findings)
    _check_group_0028(ds, findings)
    return report


# -- identifiers --------------------------------------------------------------------------


def _s(ds: Dataset, kw: str) -> str | None:
    try:
        v = ds.get(kw)
    except Exception:
        return None
    return None if v is None else str(v)


def _identifiers(ds: Dataset, findings: Findings) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    ts_text = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if meta is None or "TransferSyntaxUID" not in meta:
        findings.add("NO_TRANSFER_SYNTAX", "error", "no (0002,0010) Transfer Syntax UID in the file meta information")
    ts = UID(ts_text) if ts_text else None
    implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (None, None)
    return {
        "dicom_identifiers": {
            "SOPInstanceUID": _s(ds, "SOPInstanceUID"), "SOPClassUID": _s(ds, "SOPClassUID"),
            "StudyInstanceUID": _s(ds, "StudyInstanceUID"), "SeriesInstanceUID": _s(ds, "SeriesInstanceUID"),
            "Modality": _s(ds, "Modality"), "TransferSyntaxUID": ts_text or None,
            "TransferSyntaxName": ts.name if ts and ts.is_transfer_syntax else None,
            "ImplicitVR": implicit, "LittleEndian": little,
            "Compressed": bool(ts.is_compressed) if ts and ts.is_transfer_syntax else None,
        },
        "patient_info": {kw: _s(ds, kw) for kw in (
            "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "StudyDescription", "SeriesDescription")},
    }


# -- the pixel data element ------------------------------------------------------------------


@dataclass
class PixelElement:
    tag: int
    tag_offset: int
    value_offset: int
    vr: str | None
    value_length: int | None  # None when undefined
    little: bool


def _pixel_element(fp: BinaryIO, tag_offset: int, ds: Dataset, size: int, findings: Findings) -> PixelElement | None:
    implicit, little = ds.original_encoding
    if implicit is None or ds.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
        if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
            findings.add("DEFLATED", "info", "deflated data set: byte offsets within the file are not meaningful")
        return None
    fp.seek(tag_offset)
    head = fp.read(12)
    if len(head) < 8:
        return None
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    if not implicit and not (head[4:6].isalpha() and head[4:6].isupper()):
        findings.add("VR_MISMATCH", "error", "the transfer syntax says explicit VR but Pixel Data is encoded "
                     "with implicit VR (readers that trust the transfer syntax fail)")
        implicit = True
    if implicit:
        vr, (length,), header = None, struct.unpack(end + "I", head[4:8]), 8
    else:
        vr = head[4:6].decode("ascii", "replace")
        if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "UT", "UC", "UR"):
            (length,), header = struct.unpack(end + "I", head[8:12]), 12
        else:
            (length,), header = struct.unpack(end + "H", head[6:8]), 8
            findings.add("PIXEL_DATA_VR", "error", f"Pixel Data with VR {vr!r} and a 16-bit length")
    return PixelElement(tag, tag_offset, tag_offset + header, vr, None if length == UNDEFINED else length, bool(little))


def _int(ds: Dataset, kw: str) -> int | None:
    try:
        v = ds.get(kw)
        return None if v in (None, "") else int(v)
    except Exception:
        return None


def _pixels(fp: BinaryIO, ds: Dataset, px: PixelElement | None, size: int,
            findings: Findings) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    ba, spp = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
    nf_raw = _int(ds, "NumberOfFrames")
    frames = nf_raw if nf_raw and nf_raw > 0 else 1
    if "NumberOfFrames" in ds and (nf_raw is None or nf_raw < 1):
        findings.add("NUMBER_OF_FRAMES_INVALID", "error", f"NumberOfFrames is {ds.get('NumberOfFrames')!r}")
    frame_size = expected = None
    if rows and cols and ba:
        if ba == 1:
            frame_size = math.ceil(rows * cols * spp / 8)
            expected = math.ceil(rows * cols * spp * frames / 8)
        else:
            frame_size = rows * cols * spp * (ba // 8)
            expected = frame_size * frames
    info: dict[str, Any] = {
        "pixel_data_tag_offset": px.tag_offset if px else None,
        "pixel_data_offset": px.value_offset if px else None,
        "vr": px.vr if px else None,
        "value_length": px.value_length if px else None,
        "rows": rows, "columns": cols, "bits_allocated": ba, "bits_stored": _int(ds, "BitsStored"),
        "high_bit": _int(ds, "HighBit"), "samples_per_pixel": _int(ds, "SamplesPerPixel"),
        "photometric_interpretation": _s(ds, "PhotometricInterpretation"),
        "pixel_representation": _int(ds, "PixelRepresentation"),
        "planar_configuration": _int(ds, "PlanarConfiguration"), "number_of_frames": nf_raw,
        "expected_frame_size": frame_size, "expected_size": expected, "actual_size": None, "compression_ratio": None,
    }
    frame_info: dict[str, Any] = {"is_multiframe": frames > 1, "frame_count": frames, "frame_offsets": []}
    if px is None:
        if rows or "PixelData" in ds:
            findings.add("MISSING_PIXEL_DATA", "error", "Rows/Columns are present but there is no Pixel Data element")
        return info, frame_info, []
    if frame_size is None:
        missing = [kw for kw in ("Rows", "Columns", "BitsAllocated") if _int(ds, kw) is None]
        findings.add("PIXEL_MODULE_INCOMPLETE", "error",
                     f"Pixel Data without {', '.join(missing) or 'usable dimensions'}: its frames cannot be located")
    ts = ds.file_meta.get("TransferSyntaxUID")
    encapsulated = px.value_length is None
    if ts is not None and UID(str(ts)).is_transfer_syntax:
        if encapsulated and not UID(str(ts)).is_encapsulated:
            findings.add("ENCAPSULATION_MISMATCH", "error", f"encapsulated Pixel Data in a native transfer syntax ({UID(str(ts)).name})")
        if not encapsulated and UID(str(ts)).is_encapsulated:
            findings.add("ENCAPSULATION_MISMATCH", "error", f"native Pixel Data in an encapsulated transfer syntax ({UID(str(ts)).name})")
    if encapsulated:
        _encapsulated(fp, ds, px, size, frames, frame_info, info, findings)
    else:
        _native(px, size, frames, frame_size, expected, frame_info, info, findings)
    if info["actual_size"] and expected:
        info["compression_ratio"] = round(expected / info["actual_size"], 3)
    return info, frame_info, _hex_guide(fp, frame_info["frame_offsets"])


def _native(px: PixelElement, size: int, frames: int, frame_size: int | None, expected: int | None,
            frame_info: dict[str, Any], info: dict[str, Any], findings: Findings) -> None:
    length = px.value_length or 0
    present = max(0, min(length, size - px.value_offset))
    info["actual_size"] = present
    if present < length:
        findings.add("TRUNCATED_FILE", "error", f"Pixel Data claims {length} bytes but the file ends after {present}")
    if length % 2:
        findings.add("ODD_LENGTH", "error", f"Pixel Data value length {length} is odd")
    if expected is not None:
        if present < expected:
            findings.add("PIXEL_DATA_SHORT", "error", f"not enough pixel data: the 0028 group needs {expected} bytes "
                         f"({frames} frame(s) of {frame_size}), {present} are present")
        elif present > expected + (expected % 2):
            findings.add("PIXEL_DATA_LONG", "warning", f"{present - expected} bytes more pixel data than the "
                         f"0028 group describes ({expected} expected)")
    if frame_size:
        for i in range(frames):
            off = px.value_offset + i * frame_size
            if off >= px.value_offset + present:
                break
            frame_info["frame_offsets"].append(
                {"frame": i + 1, "offset": off, "length": min(frame_size, px.value_offset + present - off)})


def _read_item(fp: BinaryIO, little: bool) -> tuple[int, int] | None:
    head = fp.read(8)
    if len(head) < 8:
        return None
    g, e, length = struct.unpack(("<" if little else ">") + "HHI", head)
    return (g << 16) | e, length


def _encapsulated(fp: BinaryIO, ds: Dataset, px: PixelElement, size: int, frames: int,
                  frame_info: dict[str, Any], info: dict[str, Any], findings: Findings) -> None:
    fp.seek(px.value_offset)
    first = _read_item(fp, True)
    if first is None or first[0] != ITEM:
        findings.add("NO_BASIC_OFFSET_TABLE", "error", "encapsulated Pixel Data does not start with an item")
        return
    bot_len = first[1]
    bot = list(struct.unpack(f"<{bot_len // 4}I", fp.read(bot_len - bot_len % 4))) if bot_len else []
    fp.seek(px.value_offset + 8 + bot_len)
    first_fragment_item = fp.tell()
    fragments: list[dict[str, int]] = []
    ended = False
    while True:
        pos = fp.tell()
        item = _read_item(fp, True)
        if item is None:
            break
        tag, length = item
        if tag == SEQ_DELIM:
            ended = True
            break
        if tag != ITEM or length == UNDEFINED:
            findings.add("BAD_ITEM", "error", f"unexpected tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset {pos} "
                         "inside encapsulated Pixel Data")
            break
        fragments.append({"offset": pos + 8, "length": length, "item_offset": pos})
        if pos + 8 + length > size:
            findings.add("TRUNCATED_FILE", "error", f"fragment at {pos + 8} claims {length} bytes beyond the end of the file")
            break
        fp.seek(pos + 8 + length)
    if not ended:
        findings.add("NO_SEQUENCE_DELIMITER", "error", "encapsulated Pixel Data has no sequence delimiter (truncated?)")
    info["actual_size"] = sum(f["length"] for f in fragments)
    for f in fragments:
        if f["length"] % 2:
            findings.add("ODD_LENGTH", "error", f"fragment at {f['offset']} has odd length {f['length']}")
    eot = _extended_offsets(ds)
    frame_info["basic_offset_table"] = bot or None
    if eot is not None:
        frame_info["extended_offset_table"] = eot
    groups = _group_fragments(fp, fragments, frames, bot, eot, first_fragment_item, findings)
    for i, g in enumerate(groups):
        frame_info["frame_offsets"].append({
            "frame": i + 1, "offset": g[0]["offset"], "length": sum(f["length"] for f in g),
            "fragments": [{"offset": f["offset"], "length": f["length"]} for f in g]})
    if not fragments:
        findings.add("NO_FRAGMENTS", "error", "encapsulated Pixel Data holds no fragments")
    elif len(fragments) < frames:
        findings.add("FRAMES_VS_FRAGMENTS", "error", f"NumberOfFrames is {frames} but there are only {len(fragments)} fragments")


def _extended_offsets(ds: Dataset) -> list[int] | None:
    try:
        raw = ds.get("ExtendedOffsetTable")
        if raw is None:
            return None
        data = raw if isinstance(raw, bytes) else bytes(raw)
        return list(struct.unpack(f"<{len(data) // 8}Q", data))
    except Exception:
        return None


def _group_fragments(fp: BinaryIO, fragments: list[dict[str, int]], frames: int, bot: list[int],
                     eot: list[int] | None, base: int, findings: Findings) -> list[list[dict[str, int]]]:
    """Which fragments make which frame, by the rules of PS3.5 A.4 and what viewers do."""
    if not fragments:
        return []
    if frames == 1:
        return [fragments]
    for name, table in (("Basic Offset Table", bot), ("Extended Offset Table", eot)):
        if not table:
            continue
        if len(table) != frames:
            findings.add("OFFSET_TABLE_LENGTH", "error", f"{name} has {len(table)} entries for {frames} frames")
            continue
        starts = {f["item_offset"] - base: i for i, f in enumerate(fragments)}
        if any(b not in starts for b in table) or table != sorted(table):
            findings.add("OFFSET_TABLE_INVALID", "error", f"{name} entries do not point at fragment items")
            continue
        idx = [starts[b] for b in table] + [len(fragments)]
        return [fragments[idx[i]:idx[i + 1]] for i in range(frames)]
    if len(fragments) == frames:
        return [[f] for f in fragments]
    groups: list[list[dict[str, int]]] = []
    for f in fragments:
        fp.seek(f["offset"])
        start = fp.read(8)
        if not groups or any(start.startswith(m) for m in FRAME_STARTS):
            groups.append([f])
        else:
            groups[-1].append(f)
    if len(groups) != frames:
        findings.add("FRAME_BOUNDARIES_UNKNOWN", "error", f"{len(fragments)} fragments for {frames} frames and no "
                     f"usable offset table; codestream markers suggest {len(groups)} frames")
    return groups


def _hex_guide(fp: BinaryIO, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen = frames[:HEX_GUIDE_FIRST] + (frames[-1:] if len(frames) > HEX_GUIDE_FIRST else [])
    guide = []
    for f in chosen:
        fp.seek(f["offset"])
        first = fp.read(min(16, f["length"]))
        guide.append({"frame": f["frame"], "offset_hex": f"0x{f['offset']:08X}", "offset": f["offset"],
                      "first_bytes": " ".join(f"{b:02X}" for b in first)})
    return guide


# -- consistency of the 0028 group -------------------------------------------------------------


PIXEL_VALUE_ATTRS = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                     "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit")
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK"}


def _check_group_0028(ds: Dataset, f: Findings) -> None:
    ba, bs, hb = _int(ds, "BitsAllocated"), _int(ds, "BitsStored"), _int(ds, "HighBit")
    pr, spp = _int(ds, "PixelRepresentation"), _int(ds, "SamplesPerPixel")
    pi = _s(ds, "PhotometricInterpretation")
    if ba is not None and ba != 1 and ba % 8:
        f.add("BITS_ALLOCATED_INVALID", "error", f"BitsAllocated is {ba}: must be 1 or a multiple of 8")
    if ba is not None and bs is not None and bs > ba:
        f.add("BITS_STORED_GT_ALLOCATED", "error", f"BitsStored {bs} > BitsAllocated {ba}")
    if bs is not None and hb is not None and hb != bs - 1:
        f.add("HIGH_BIT_MISMATCH", "warning", f"HighBit {hb} is not BitsStored - 1 ({bs - 1})")
    if pr is not None and pr not in (0, 1):
        f.add("PIXEL_REPRESENTATION_INVALID", "error", f"PixelRepresentation is {pr}")
    for kw in PIXEL_VALUE_ATTRS:
        if kw in ds and pr in (0, 1):
            vr = ds[kw].VR
            if vr in ("US", "SS") and vr != ("SS" if pr == 1 else "US"):
                f.add("PIXEL_REPRESENTATION_VR", "warning",
                      f"{kw} has VR {vr} but PixelRepresentation {pr} means {'SS' if pr == 1 else 'US'}")
    if pi and spp is not None:
        if pi.startswith("MONOCHROME") or pi == "PALETTE COLOR":
            if spp != 1:
                f.add("SAMPLES_VS_PHOTOMETRIC", "error", f"{pi} with SamplesPerPixel {spp}")
        elif pi in COLOUR and spp not in (3, 4):
            f.add("SAMPLES_VS_PHOTOMETRIC", "error", f"{pi} with SamplesPerPixel {spp}")
    if spp and spp > 1 and "PlanarConfiguration" not in ds:
        f.add("PLANAR_CONFIGURATION_MISSING", "warning", "SamplesPerPixel > 1 without PlanarConfiguration")
    if pi == "MONOCHROME1" and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        f.add("MONOCHROME1_WITH_VOI", "warning", "MONOCHROME1 with a VOI LUT/window: many viewers invert twice or not at all")
    if pi == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in ds:
        f.add("PALETTE_MISSING", "error", "PALETTE COLOR without palette lookup tables")
    if ("Rows" in ds) != ("Columns" in ds) or _int(ds, "Rows") == 0 or _int(ds, "Columns") == 0:
        f.add("DIMENSIONS_INVALID", "error", f"Rows {ds.get('Rows')!r}, Columns {ds.get('Columns')!r}")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Key figures for the index and for listings."""
    px = report.get("pixel_data_info") or {}
    fi = report.get("frame_info") or {}
    sev = [x["severity"] for x in report.get("findings", [])]
    return {"pixel_data_offset": px.get("pixel_data_offset"), "actual_size": px.get("actual_size"),
            "expected_size": px.get("expected_size"), "frame_count": fi.get("frame_count"),
            "errors": sev.count("error"), "warnings": sev.count("warning"),
            "codes": sorted({x["code"] for x in report.get("findings", [])})}


