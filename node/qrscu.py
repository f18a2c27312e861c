"""This node as a Query/Retrieve client: C-FIND, C-MOVE and C-GET against a remote node.

Query keys are given as DCMTK gives them (Keyword=Value, empty = return
key). C-GET stores what arrives through the archive's one ingest path, so a
retrieved instance is as durable, indexed and analysed as a received one.
Every way a request can fail ends as a QRFailed with a kind the CLI maps to
its own exit code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from node import receive
from node.peers import Peer
from node.scu import AssociationFailed, Timeouts, _ae, _associate
from storage.ingest import Ingester, Outcome

log = logging.getLogger("dicomnode.qrscu")

MODELS = {
    ("study", "find"): StudyRootQueryRetrieveInformationModelFind,
    ("study", "move"): StudyRootQueryRetrieveInformationModelMove,
    ("study", "get"): StudyRootQueryRetrieveInformationModelGet,
    ("patient", "find"): PatientRootQueryRetrieveInformationModelFind,
    ("patient", "move"): PatientRootQueryRetrieveInformationModelMove,
    ("patient", "get"): PatientRootQueryRetrieveInformationModelGet,
}
DEFAULT_KEYS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
    "STUDY": ["PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
              "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyInstanceUID"],
    "SERIES": ["StudyInstanceUID", "SeriesNumber", "Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances",
               "SeriesInstanceUID"],
    "IMAGE": ["StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "SOPClassUID", "SOPInstanceUID"],
}
# Storage syntaxes offered for C-GET: what arrives is archived as it comes
GET_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.2"]
PENDING = (0xFF00, 0xFF01)


class QRFailed(Exception):
    """kind: refused (the remote answered the request with a failure) | timeout (no answer)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Retrieve:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    status: int = 0
    failed_uids: list[str] = field(default_factory=list)
    stored: list[Outcome] = field(default_factory=list)  # C-GET: what the archive made of each arrival

    @property
    def total(self) -> int | None:
        return None if self.remaining is None else self.remaining + self.completed + self.failed + self.warning


def identifier(level: str, keys: dict[str, str], defaults: bool = True) -> Dataset:
    """The identifier of -k keys; DEFAULT_KEYS of the level are added as return keys (find)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.SpecificCharacterSet = "ISO_IR 192"  # so a key may hold any character
    wanted = dict.fromkeys(DEFAULT_KEYS[level], "") if defaults else {}
    wanted.update(keys)
    for kw, value in wanted.items():
        tag = tag_for_keyword(kw)
        if tag is None:
            raise ValueError(f"{kw!r} is not a DICOM keyword")
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, vr, [])
            continue
        if vr in ("US", "SS", "UL", "SL"):
            ds.add_new(tag, vr, int(value) if value else None)
            continue
        ds.add_new(tag, vr, value.split("\\") if "\\" in value else (value or None))
    return ds


def split_level(keys: dict[str, str], level: str | None) -> tuple[str, dict[str, str]]:
    """-k QueryRetrieveLevel=X is accepted as well as --level (DCMTK habit)."""
    keys = dict(keys)
    from_key = keys.pop("QueryRetrieveLevel", None)
    chosen = (level or from_key or "STUDY").upper()
    if chosen not in DEFAULT_KEYS:
        raise ValueError(f"level {chosen!r}: PATIENT, STUDY, SERIES or IMAGE")
    return chosen, keys


def _failure(rsp: Dataset | None, what: str) -> QRFailed:
    if rsp is None or "Status" not in rsp:
        return QRFailed("timeout", f"no {what} response (DIMSE timeout, or the association was aborted)")
    comment = f": {rsp.ErrorComment}" if "ErrorComment" in rsp else ""
    return QRFailed("refused", f"{what} answered with status 0x{int(rsp.Status):04X}{comment}")


def find(peer: Peer, calling_aet: str, model: str, ident: Dataset, timeouts: Timeouts) -> Iterator[Dataset]:
    """The matches, as they arrive."""
    sop = MODELS[(model, "find")]
    ae = _ae(calling_aet, timeouts)
    ae.add_requested_context(sop)
    assoc = _associate(ae, peer)
    try:
        _check_accepted(assoc, sop, peer)
        last = None
        for rsp, ds in assoc.send_c_find(ident, sop):
            last = rsp
            if rsp and rsp.get("Status") in PENDING and ds is not None:
                yield ds
        if last is None or last.get("Status") != 0x0000:
            raise _failure(last, "C-FIND")
    finally:
        if assoc.is_established:
            assoc.release()


def move(peer: Peer, calling_aet: str, model: str, ident: Dataset, destination: str, timeouts: Timeouts,
         progress: Callable[[Retrieve], None] | None = None) -> Retrieve:
    sop = MODELS[(model, "move")]
    ae = _ae(calling_aet, timeouts)
    ae.add_requested_context(sop)
    assoc = _associate(ae, peer)
    try:
        _check_accepted(assoc, sop, peer)
        return _follow(assoc.send_c_move(ident, destination, sop), "C-MOVE", progress)
    finally:
        if assoc.is_established:
            assoc.release()


def get(peer: Peer, calling_aet: str, model: str, ident: Dataset, ingester: Ingester, timeouts: Timeouts,
        progress: Callable[[Retrieve], None] | None = None) -> Retrieve:
    """C-GET; each arriving instance goes through the archive's ingest path before we answer it."""
    sop = MODELS[(model, "get")]
    ae = _ae(calling_aet, timeouts)
    ae.add_requested_context(sop)
    roles = []
    for cx in StoragePresentationContexts[:127]:
        ae.add_requested_context(cx.abstract_syntax, GET_SYNTAXES)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    receive.install(ingester.new_sink)
    result = Retrieve()

    def on_store(event: Any) -> Dataset | int:
        req = event.request
        sink = receive.claim(event.dataset_path)
        out = ingester.ingest(sink, sop_class=req.AffectedSOPClassUID, sop_instance=req.AffectedSOPInstanceUID,
                              calling_aet=peer.aet, peer=f"{peer.host}:{peer.port}")
        result.stored.append(out)
        if out.ok:
            return 0x0000
        rsp = Dataset()
        rsp.Status = out.status
        rsp.ErrorComment = out.comment.encode("ascii", "replace").decode()[:64]
        return rsp

    def on_close(event: Any) -> None:
        receive.discard_unclaimed(event.assoc)

    assoc = _associate(ae, peer, ext_neg=roles,
                       evt_handlers_extra=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_CLOSE, on_close)])
    try:
        _check_accepted(assoc, sop, peer)
        followed = _follow(assoc.send_c_get(ident, sop), "C-GET", progress)
        followed.stored = result.stored
        return followed
    finally:
        if assoc.is_established:
            assoc.release()


def _check_accepted(assoc: Any, sop: UID, peer: Peer) -> None:
    if not any(cx.abstract_syntax == sop for cx in assoc.accepted_contexts):
        raise QRFailed("refused", f"{peer} does not offer {UID(sop).name}")


def _follow(responses: Iterator[tuple[Dataset, Dataset | None]], what: str,
            progress: Callable[[Retrieve], None] | None) -> Retrieve:
    """Counts from the pending responses; the final one decides."""
    r = Retrieve()
    last = None
    last_ds = None
    for rsp, ds in responses:
        last, last_ds = rsp, ds
        if not rsp or "Status" not in rsp:
            break
        for attr, name in (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
                           ("warning", "NumberOfWarningSuboperations"),
                           ("remaining", "NumberOfRemainingSuboperations")):
            if name in rsp and rsp[name].value is not None:
                setattr(r, attr, int(rsp[name].value))
        if rsp.Status in PENDING:
            if progress:
                progress(r)
            continue
    if last is None or "Status" not in last:
        raise _failure(last, what)
    r.status = int(last.Status)
    r.remaining = 0 if r.status in (0x0000, 0xB000) else r.remaining
    if last_ds is not None and "FailedSOPInstanceUIDList" in last_ds:
        v = last_ds.FailedSOPInstanceUIDList
        r.failed_uids = [str(u) for u in (v if isinstance(v, (list, MultiValue)) else [v]) if u]
    if r.status not in (0x0000, 0xB000, 0xFE00) and not (r.completed or r.failed or r.warning):
        raise _failure(last, what)
    if progress:
        progress(r)
    return r


__all__ = ["AssociationFailed", "QRFailed", "find", "move", "get", "identifier", "split_level"]
