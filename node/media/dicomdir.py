"""DICOMDIR file-sets (PS3.10 section 8, PS3.11 Annex D, PS3.3 Annex F): archived instances out
to media, and media read safely for import and listing.

Export builds the directory records with pydicom's FileSet from each instance's
header only (read up to the pixel data), lets FileSet lay out the file-set
(8-character upper-case IDs: PT000000/ST000000/SE000000/IM000000), then puts
each archived file there by copying its bytes, so memory holds headers, never
pixel data, and the files on the media are byte for byte the archived ones. The
`general` profile (STD-GEN-CD/DVD/USB: Explicit VR Little Endian) rewrites the
objects that are stored otherwise; that one object is then held in memory.

Reading never trusts the media: the records are walked by their offsets with a
guard against loops, a Referenced File ID must be 1 to 8 components of 1 to 8
characters A-Z 0-9 _ (lower case tolerated, as some file systems show them),
and must resolve inside the file-set's folder (no `..`, no symbolic link out).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomnode.errors import DicomnodeError
from dicomnode.node.transcode import little_endian
from dicomnode.storage.archive.durable import atomic_file, fsync_dir
from dicomnode.storage.archive.header import looks_like_dicom

# PS3.11: the general-purpose profiles (CD-R, DVD, USB and flash) take Explicit VR Little Endian only
PROFILES = {"as-stored": None, "general": ExplicitVRLittleEndian}
FILE_SET_ID = "DICOMNODE"
_COMPONENT = re.compile(r"^[A-Za-z0-9_]{1,8}$")
# Type 1 keys of the PATIENT, STUDY, SERIES and IMAGE records (PS3.3 F.5) that objects in the wild
# leave empty; like `dcmmkdir --invent`, the record gets a made-up value (the file is not changed)
# and the export says so
_INVENTED = {"PatientID": "UNKNOWN", "StudyDate": "19000101", "StudyTime": "000000", "StudyID": "1",
             "SeriesNumber": "1", "Modality": "OT"}


class MediaError(DicomnodeError):
    """The file-set cannot be made or read; the message says why."""


@dataclass
class Exported:
    out: Path
    instances: int = 0
    bytes: int = 0
    profile: str = "as-stored"
    invented: list[str] = field(default_factory=list)  # "<SOP Instance UID>: StudyID" ...
    failed: list[tuple[Path, str]] = field(default_factory=list)


def export(files: list[Path], out: Path, profile: str = "as-stored", as_zip: bool = False,
           advance: Callable[[], None] | None = None) -> Exported:
    """Write `files` (archived instances) as a file-set in the empty or new folder `out`, or as the
    ZIP file `out` holding that tree. MediaError when `out` is in the way or nothing could go."""
    if profile not in PROFILES:
        raise MediaError(f"profile {profile!r}: one of {', '.join(PROFILES)}")
    if as_zip:
        if out.exists():
            raise MediaError(f"{out} exists: the ZIP file must be new")
        tree = Path(tempfile.mkdtemp(prefix=".dicomdir-", dir=out.parent if out.parent.is_dir() else None))
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MediaError(f"{out} exists and is not an empty folder")
        out.mkdir(parents=True, exist_ok=True)
        tree = out
    done = Exported(out, profile=profile)
    try:
        _write_tree(files, tree, PROFILES[profile], done, advance)
        if as_zip:
            _zip(tree, out)
    finally:
        if as_zip:
            shutil.rmtree(tree, ignore_errors=True)
    return done


def _write_tree(files: list[Path], tree: Path, syntax: str | None, done: Exported,
                advance: Callable[[], None] | None) -> None:
    fs = FileSet()
    fs.ID = FILE_SET_ID
    sources: dict[str, tuple[Path, str]] = {}  # SOP Instance UID -> (archived file, its transfer syntax)
    counters: dict[str, int] = {}
    for path in files:
        uid = ""
        try:
            header = dcmread(path, stop_before_pixels=True)
            uid = str(header.SOPInstanceUID)
            _complete(header, counters, done)
            instance = fs.add(header)
            # the leaf record, as FileSet made it (pydicom keeps it in the node; pydicom is pinned)
            leaf: Dataset = instance.node._record
            if syntax:  # the record names the syntax of the file on the media
                leaf.ReferencedTransferSyntaxUIDInFile = syntax
            if leaf.DirectoryRecordType == "SR DOCUMENT":
                _sr_record(leaf, header)
            sources[uid] = (path, str(header.file_meta.TransferSyntaxUID))
        except Exception as exc:  # a header pydicom cannot read, or a record it cannot make
            for half in [i for i in fs if i.SOPInstanceUID == uid and uid not in sources]:
                fs.remove(half)  # FileSet registers an instance before it has written its placeholder
            done.failed.append((path, f"{type(exc).__name__}: {exc}".split("\n")[0][:300]))
            if advance:
                advance()
    if not sources:
        raise MediaError("nothing to export: " + "; ".join(f"{p.name}: {why}" for p, why in done.failed[:5]))
    fs.write(tree)  # the DICOMDIR, and header-only files where the instances go
    for instance in fs:
        source, stored = sources[instance.SOPInstanceUID]
        target = tree / instance.FileID
        _put(source, target, syntax if syntax and stored != syntax else None)
        done.instances += 1
        done.bytes += target.stat().st_size
        if advance:
            advance()
    with open(tree / "DICOMDIR", "rb") as f:  # written by FileSet: made durable here
        os.fsync(f.fileno())
    fsync_dir(tree)


def _complete(header: Dataset, counters: dict[str, int], done: Exported) -> None:
    """Type 1 keys of the records that the object lacks, invented (and reported)."""
    sop = str(header.get("SOPInstanceUID", ""))
    for keyword, value in _INVENTED.items():
        if not str(header.get(keyword, "") or "").strip():
            if keyword in ("StudyDate", "StudyTime"):  # as dcmmkdir does: the series', content's or acquisition's
                kind = keyword[5:]
                value = next((str(header.get(k + kind)) for k in ("Series", "Content", "Acquisition")
                              if header.get(k + kind)), value)
            setattr(header, keyword, value)
            done.invented.append(f"{sop}: {keyword}")
    if not str(header.get("InstanceNumber", "") or "").strip():
        series = str(header.get("SeriesInstanceUID", ""))
        counters[series] = counters.get(series, 0) + 1
        header.InstanceNumber = counters[series]
        done.invented.append(f"{sop}: InstanceNumber")


def _sr_record(leaf: Dataset, header: Dataset) -> None:
    """An SR DOCUMENT record as PS3.3 F.5.21 has it (and dciodvfy checks it): of the document's root
    content, only the HAS CONCEPT MOD items (FileSet copies all of it), and the Verification
    DateTime of a verified document (the last verifier's)."""
    context = [i for i in leaf.get("ContentSequence", []) if i.get("RelationshipType") == "HAS CONCEPT MOD"]
    if "ContentSequence" in leaf:
        if context:
            leaf.ContentSequence = context
        else:
            del leaf.ContentSequence
    if str(leaf.get("VerificationFlag", "")).upper() == "VERIFIED" and not leaf.get("VerificationDateTime"):
        verifiers = [v for v in header.get("VerifyingObserverSequence", []) if v.get("VerificationDateTime")]
        if verifiers:
            leaf.VerificationDateTime = verifiers[-1].VerificationDateTime


def _put(source: Path, target: Path, syntax: str | None) -> None:
    """The archived file at `target` (replacing FileSet's header-only copy), durably: as it is, or
    rewritten in `syntax` when one is given."""
    with atomic_file(target) as temp:
        if not syntax:
            shutil.copyfile(source, temp)
            return
        ds = dcmread(source)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # to Explicit VR Little Endian; the same instance
        elif not ds.original_encoding[1]:  # big endian: the words of bulk values swapped too
            little_endian(ds)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.save_as(temp, enforce_file_format=True, implicit_vr=False, little_endian=True)


def _zip(tree: Path, out: Path) -> None:
    """The tree as a ZIP (stored, not deflated: pixel data does not shrink), made whole before it is `out`."""
    with atomic_file(out) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tree).as_posix())


# -- reading media ------------------------------------------------------------------------------


@dataclass
class Record:
    """A directory record: its type, its key attributes, the file it references, the records below."""

    type: str
    keys: dict[str, str]
    file_id: str | None = None
    file: Path | None = None
    children: list[Record] = field(default_factory=list)


@dataclass
class Media:
    root: Path
    dicomdir: Path
    records: list[Record] = field(default_factory=list)  # the root entity's records (PATIENT, ...)
    files: list[Path] = field(default_factory=list)  # referenced, present, inside the file-set
    missing: list[str] = field(default_factory=list)  # referenced File IDs with no file
    unsafe: list[str] = field(default_factory=list)  # File IDs refused (outside the file-set, malformed)
    unreferenced: list[Path] = field(default_factory=list)  # DICOM files no record names
    not_dicom: list[Path] = field(default_factory=list)  # other files
    problems: list[str] = field(default_factory=list)  # of the DICOMDIR itself (loops, bad offsets)


KEYS = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": ("StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID", "StudyInstanceUID"),
    "SERIES": ("Modality", "SeriesNumber", "SeriesDescription", "SeriesInstanceUID"),
}
LEAF_KEYS = ("InstanceNumber", "ReferencedSOPClassUIDInFile", "ReferencedSOPInstanceUIDInFile",
             "ReferencedTransferSyntaxUIDInFile")


def find_dicomdir(path: Path) -> Path | None:
    """The DICOMDIR `path` is or holds at its top (any case), else None."""
    if path.is_file():
        return path if path.name.upper() == "DICOMDIR" else None
    if path.is_dir():
        for p in path.iterdir():
            if p.name.upper() == "DICOMDIR" and p.is_file():
                return p
    return None


def read_media(dicomdir: Path) -> Media:
    """The file-set of a DICOMDIR: its record tree and the files it references, checked."""
    root = dicomdir.parent.resolve()
    media = Media(root, dicomdir)
    try:
        ds = dcmread(dicomdir, force=True)
        records = list(ds.DirectoryRecordSequence)
    except Exception as exc:
        raise MediaError(f"{dicomdir}: not a readable DICOMDIR ({type(exc).__name__}: {exc})") from exc
    by_offset = {int(getattr(r, "seq_item_tell", -1)): r for r in records}
    first = int(ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity", 0) or 0)
    seen: set[int] = set()
    if first in by_offset:
        media.records = _entity(first, by_offset, seen, media, depth=0)
        unreached = [r for r in records if int(getattr(r, "seq_item_tell", -1)) not in seen]
        if unreached:  # their files still count: media whose offsets are off still hold the images
            media.problems.append(f"{len(unreached)} records are not reachable from the root entity")
            media.records += [_record(r, media) for r in unreached]
    else:  # offsets that point nowhere: the records in order, as a flat list
        media.problems.append("the DICOMDIR's offsets do not point at its records: records read in order")
        media.records = [_record(r, media) for r in records]
    referenced = {f.resolve() for f in media.files}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.resolve() == dicomdir.resolve() or path.resolve() in referenced:
            continue
        (media.unreferenced if looks_like_dicom(path) else media.not_dicom).append(path)
    return media


def _entity(offset: int, by_offset: dict[int, Any], seen: set[int], media: Media, depth: int) -> list[Record]:
    """The records of one directory entity: a chain of next-record offsets from `offset`."""
    out: list[Record] = []
    while offset:
        if offset in seen:
            media.problems.append(f"a loop of directory records at offset {offset}: stopped there")
            break
        if offset not in by_offset:
            media.problems.append(f"an offset ({offset}) that points at no directory record")
            break
        if depth > 16:
            media.problems.append("directory records nested more than 16 deep: stopped there")
            break
        seen.add(offset)
        item = by_offset[offset]
        record = _record(item, media)
        lower = int(item.get("OffsetOfReferencedLowerLevelDirectoryEntity", 0) or 0)
        if lower:
            record.children = _entity(lower, by_offset, seen, media, depth + 1)
        out.append(record)
        offset = int(item.get("OffsetOfTheNextDirectoryRecord", 0) or 0)
    return out


def _record(item: Dataset, media: Media) -> Record:
    kind = str(item.get("DirectoryRecordType", "") or "").strip().upper()
    keys = {kw: _text(item.get(kw)) for kw in KEYS.get(kind, LEAF_KEYS) if kw in item}
    record = Record(kind, keys)
    raw = item.get("ReferencedFileID")
    if raw:
        parts = [str(p).strip() for p in ([raw] if isinstance(raw, str) else raw)]  # one component, or several
        record.file_id = "\\".join(parts)
        path = _safe_path(media.root, parts)
        if path is None:
            media.unsafe.append(record.file_id)
        elif not path.is_file():
            media.missing.append(record.file_id)
        else:
            record.file = path
            media.files.append(path)
    return record


def _safe_path(root: Path, parts: list[str]) -> Path | None:
    """The file a Referenced File ID names inside `root` (components matched regardless of case),
    or None when it is malformed or leads outside."""
    if not 1 <= len(parts) <= 8 or not all(_COMPONENT.match(p) for p in parts):
        return None
    here = root
    for part in parts:
        exact = here / part
        if not exact.exists() and here.is_dir():
            exact = next((p for p in here.iterdir() if p.name.upper() == part.upper()), exact)
        here = exact
    try:
        resolved = here.resolve()
    except OSError:
        return None
    return resolved if resolved.is_relative_to(root) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def walk(records: list[Record], depth: int = 0) -> Iterator[tuple[int, Record]]:
    for r in records:
        yield depth, r
        yield from walk(r.children, depth + 1)
