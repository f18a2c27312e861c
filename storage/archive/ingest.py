"""The one way an object enters the archive (C-STORE, import, and later move/get).

Order of events, each step durable before the next:
  1. bytes streamed into a HashingSink in <root>/tmp (hash computed on the way)
  2. header parsed and identifiers validated (never the pixel data); the
     storage quotas admit it, recycling old studies if so configured (quota.py)
  3. sink fsynced (the fsync starts with step 2 and runs beside it), renamed to
     its hashed path, folder fsynced
  4. index rows committed (3's rename and folder fsync and 4 are shared by the
     stores that arrive together: commit.py, group commit)
  5. only now the caller answers Success; a replaced file is removed last
A failure at any step removes what that step left and yields a DICOM status
with an error comment, so nothing half-done stays visible.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.storage.archive import durable
from dicomnode.storage.archive.commit import Committer, Unit
from dicomnode.storage.archive.durable import HashingSink
from dicomnode.storage.archive.header import (
    Header,
    HeaderError,
    has_part10_prefix,
    index_values,
    read_header,
    structure_problem,
    uid_problem,
)
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.archive.quota import Admission, Arrival, Limits, Quota
from dicomnode.storage.audit import AuditLog
from dicomnode.storage.index.rows import FileFacts, Index, Put, PutResult

log = logging.getLogger("dicomnode.ingest")

SUCCESS = 0x0000
DUPLICATE = 0x0111
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
BAD_IDENTIFIER = 0xC001


class DuplicatePolicy(str, Enum):
    KEEP = "keep"
    OVERWRITE = "overwrite"
    REJECT = "reject"


@dataclass
class Outcome:
    status: int
    comment: str = ""
    sop_instance_uid: str = ""
    path: Path | None = None
    action: str = ""  # stored | replaced | kept | failed
    identity: dict[str, str] = field(default_factory=dict)  # the object's own UIDs, when it could be parsed

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


# (calling AE, Modality, SOP Class UID) -> the on-arrival actions queued with the instance
Plan = Callable[[str | None, str | None, str | None], list[str]]


class Ingester:
    def __init__(self, layout: Layout, index: Index, duplicates: DuplicatePolicy = DuplicatePolicy.KEEP,
                 min_free_bytes: int = 0, plan: Plan | None = None, limits: Limits = Limits(),
                 audit: AuditLog | None = None) -> None:
        self.layout = layout
        self.audit = audit
        self.index = index
        self.plan = plan
        self.duplicates = DuplicatePolicy(duplicates)
        self.min_free_bytes = min_free_bytes
        self.committer = Committer(index)
        self.quota = Quota(layout, index, limits, self.duplicates is DuplicatePolicy.OVERWRITE,
                           audit) if limits.any else None

    def new_sink(self) -> HashingSink:
        return HashingSink(self.layout.tmp)

    def has_room(self) -> bool:
        if self.min_free_bytes <= 0:
            return True
        return shutil.disk_usage(self.layout.tmp).free >= self.min_free_bytes

    def ingest(self, sink: HashingSink, *, sop_class: str | None = None, sop_instance: str | None = None,
               study: str | None = None, calling_aet: str | None = None, peer: str | None = None,
               force: bool = False) -> Outcome:
        """Archive a complete sink; the sink is consumed (kept or discarded) in every case.

        `sop_class`, `sop_instance` and `study` are what the sender said the object is (the
        C-STORE command; the study of a STOW-RS URL): an object that is something else is refused.
        """
        try:
            out = self._ingest(sink, Claims(sop_class, sop_instance, study), calling_aet, peer, force)
        except Exception as exc:  # last resort: never let one object take the server down
            log.exception("ingest failed")
            out = Outcome(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}: {exc}", action="failed")
        if out.action in ("failed", "kept"):
            sink.discard()
        if self.audit is not None:
            ids = out.identity
            self.audit.record("stored", "success" if out.ok else "failure", action=out.action,
                              status=f"0x{out.status:04X}", aet=calling_aet, peer=peer,
                              study=ids.get("StudyInstanceUID"), series=ids.get("SeriesInstanceUID"),
                              sop=ids.get("SOPInstanceUID") or sop_instance, sop_class=ids.get("SOPClassUID"),
                              reason=None if out.ok else out.comment)
        return out

    def _ingest(self, sink: HashingSink, claims: Claims, calling_aet: str | None, peer: str | None,
                force: bool) -> Outcome:
        if sink.error is not None:
            return _resource_failure(sink.error)
        if not self.has_room():
            return Outcome(OUT_OF_RESOURCES, "archive is below its free-space reserve", action="failed")
        try:
            sink.start_seal()  # the fsync runs while the header is parsed and checked
        except OSError as exc:
            return _resource_failure(exc)
        try:
            header = read_header(sink.path, force=force)
        except HeaderError as exc:
            return Outcome(CANNOT_UNDERSTAND, str(exc)[:1024], action="failed")
        out = self._archive(sink, header, claims, calling_aet, peer)
        out.identity = {kw: header.uid(kw) for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                                      "SeriesInstanceUID")}
        return out

    def _archive(self, sink: HashingSink, header: Header, claims: Claims, calling_aet: str | None,
                 peer: str | None) -> Outcome:
        problem = identity_problem(header, claims)
        if problem is not None:
            return problem
        flaw = structure_problem(header, sink.path, sink.size)
        if flaw is not None:  # stored, it would break every reader that comes after (dcmdump too)
            return Outcome(CANNOT_UNDERSTAND, flaw, header.uid("SOPInstanceUID"), action="failed")
        values = index_values(header)
        sop_uid = values["IMAGE"]["SOPInstanceUID"]

        # Duplicates are found by the index write itself (no extra query on the
        # common path); a duplicate's file, placed a moment early, is removed then.
        final = self.layout.object_path(values["STUDY"]["StudyInstanceUID"],
                                        values["SERIES"]["SeriesInstanceUID"], sop_uid, sink.sha256)
        facts = FileFacts(self.layout.relative(final), sink.size, sink.sha256, calling_aet, peer)
        actions = self.plan(calling_aet, values["SERIES"].get("Modality"), values["IMAGE"]["SOPClassUID"]) \
            if self.plan else []
        admission = self._admit(values, sink.size)
        if admission.refused:
            return Outcome(OUT_OF_RESOURCES, admission.refused, sop_uid, action="failed")
        try:
            sink.sealed()  # the file's bytes are on disk before it gets its name
        except OSError as exc:
            if self.quota is not None:
                self.quota.release(admission)
            return _resource_failure(exc)
        try:
            unit = self.committer.commit(Unit(sink.path, final, Put(values, facts,
                                                                    self.duplicates is DuplicatePolicy.OVERWRITE,
                                                                    actions)))
        finally:
            if self.quota is not None:
                self.quota.release(admission)
        if unit.placed:
            sink.kept()  # the temp file is the final one now
        if unit.result is None:
            if unit.placed and not unit.was_there:
                durable.remove(final)
            if isinstance(unit.error, OSError):
                return _resource_failure(unit.error)
            return Outcome(PROCESSING_FAILURE, f"index unavailable: {type(unit.error).__name__}", sop_uid,
                           action="failed")
        result, other = unit.result
        if result is PutResult.EXISTS:
            if other != facts.path:  # identical content lands on the kept file's own name
                durable.remove(final)
            return self._duplicate(sop_uid, other or "")
        if result is PutResult.REPLACED and other and other != facts.path:
            durable.remove(self.layout.absolute(other))
        action = "replaced" if result is PutResult.REPLACED else "stored"
        return Outcome(SUCCESS, "", sop_uid, final, action)

    def _admit(self, values: dict[str, dict[str, Any]], size: int) -> Admission:
        """The quotas' word on an object (always admitted when none is set)."""
        if self.quota is None:
            return Admission()
        pv = values["PATIENT"]
        return self.quota.admit(Arrival(values["STUDY"]["StudyInstanceUID"],
                                        (pv.get("PatientID") or "", pv.get("IssuerOfPatientID") or ""),
                                        values["IMAGE"]["SOPInstanceUID"], size))

    def _duplicate(self, sop_uid: str, existing_path: str) -> Outcome:
        if self.duplicates is DuplicatePolicy.REJECT:
            return Outcome(DUPLICATE, f"duplicate SOP Instance UID {sop_uid} (policy: reject)", sop_uid,
                           action="failed")
        return Outcome(SUCCESS, "", sop_uid, self.layout.absolute(existing_path), "kept")

    def import_file(self, path: Path, force: bool = False) -> Outcome:
        """Copy a local file into a sink and ingest it exactly as a C-STORE would be."""
        sink = self.new_sink()
        try:
            with open(path, "rb") as src:
                if _has_part10_prefix(src):
                    shutil.copyfileobj(src, sink, 1 << 20)
                else:
                    _write_with_meta(src, sink)
        except (OSError, HeaderError) as exc:
            sink.discard()
            status = OUT_OF_RESOURCES if durable.is_out_of_space(exc) else CANNOT_UNDERSTAND
            return Outcome(status, f"cannot read {path.name}: {exc}", action="failed")
        return self.ingest(sink, calling_aet=None, peer="import", force=force)


@dataclass(frozen=True)
class Claims:
    """What a sender says an object is; None where it says nothing."""

    sop_class: str | None = None
    sop_instance: str | None = None
    study: str | None = None


def identity_problem(header: Header, claims: Claims = Claims()) -> Outcome | None:
    """Why an object cannot be archived (as a failed Outcome), or None."""
    sop_class, sop_instance = claims.sop_class, claims.sop_instance
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        why = uid_problem(header.uid(kw))
        if why is not None:
            status = CANNOT_UNDERSTAND if kw == "SOPClassUID" else BAD_IDENTIFIER
            return Outcome(status, f"{kw} is {why}", header.uid("SOPInstanceUID"), action="failed")
    if sop_instance is not None and header.uid("SOPInstanceUID") != sop_instance.strip("\x00 "):
        return Outcome(DOES_NOT_MATCH, f"SOP Instance UID differs from request: data set has "
                       f"{header.uid('SOPInstanceUID')}, request {sop_instance}",
                       header.uid("SOPInstanceUID"), action="failed")
    if sop_class is not None and header.uid("SOPClassUID") != sop_class.strip("\x00 "):
        return Outcome(DOES_NOT_MATCH, f"SOP Class UID differs from request: data set has "
                       f"{header.uid('SOPClassUID')}, request {sop_class}",
                       header.uid("SOPInstanceUID"), action="failed")
    if claims.study is not None and header.uid("StudyInstanceUID") != claims.study.strip("\x00 "):
        return Outcome(DOES_NOT_MATCH, f"Study Instance UID differs from request: data set has "
                       f"{header.uid('StudyInstanceUID')}, request {claims.study}",
                       header.uid("SOPInstanceUID"), action="failed")
    if not header.transfer_syntax:
        return Outcome(CANNOT_UNDERSTAND, "no Transfer Syntax UID in the file meta information", action="failed")
    return None


def _resource_failure(exc: OSError) -> Outcome:
    what = "disk full" if durable.is_out_of_space(exc) else f"{type(exc).__name__}: {exc.strerror or exc}"
    return Outcome(OUT_OF_RESOURCES, f"cannot write to the archive: {what}", action="failed")


def _has_part10_prefix(f: BinaryIO) -> bool:
    head = f.read(132)
    f.seek(0)
    return has_part10_prefix(head)


def _write_with_meta(src: BinaryIO, sink: HashingSink) -> None:
    """A file without the Part 10 preamble: give it one, keeping the data set's bytes where possible.

    A bare data set (no File Meta either, as some old modalities and dumps
    write) is copied byte for byte behind a File Meta built from its own
    encoding; one with a File Meta but no preamble is re-written by pydicom.
    """
    try:
        ds = dcmread(src, force=True, stop_before_pixels=True, defer_size=1024)
    except Exception as exc:
        raise HeaderError(f"not DICOM: {type(exc).__name__}: {exc}") from exc
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise HeaderError("not DICOM: no SOP Class / SOP Instance UID")
    src.seek(0)
    if "TransferSyntaxUID" in ds.file_meta:
        full = dcmread(src, force=True)
        full.save_as(sink, enforce_file_format=True)  # type: ignore[arg-type]
        return
    implicit, little = ds.original_encoding
    tsyntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = tsyntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    sink.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(sink, meta, enforce_standard=True)  # type: ignore[arg-type]
    shutil.copyfileobj(src, sink, 1 << 20)
