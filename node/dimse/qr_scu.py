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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import build_role

from dicomnode.errors import QRFailed
from dicomnode.node.dimse import receive
from dicomnode.node.dimse.ae import MAX_CONTEXTS, QR_MODELS, Timeouts, associate, client_ae
from dicomnode.node.dimse.status import CANCEL, PENDING, PENDING_WARNING, SUBOPS_WITH_FAILURES, SUCCESS
from dicomnode.node.peers import Peer
from dicomnode.storage.archive.ingest import Ingester, Outcome

log = logging.getLogger("dicomnode.qrscu")

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
PENDINGS = (PENDING, PENDING_WARNING)


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


@contextmanager
def _session(peer: Peer, calling_aet: str, timeouts: Timeouts, service: str, model: str,
             prepare: Callable[[AE], None] | None = None, **kwargs: Any) -> Iterator[tuple[Association, str]]:
    """An association offering the service's SOP class of the model, released on leaving."""
    sop = QR_MODELS[service][model.upper()]
    ae = client_ae(calling_aet, timeouts)
    ae.add_requested_context(sop)
    if prepare is not None:
        prepare(ae)
    assoc = associate(ae, peer, **kwargs)
    try:
        _check_accepted(assoc, sop, peer)
        yield assoc, sop
    finally:
        if assoc.is_established:
            assoc.release()


def find(peer: Peer, calling_aet: str, model: str, ident: Dataset, timeouts: Timeouts) -> Iterator[Dataset]:
    """The matches, as they arrive."""
    with _session(peer, calling_aet, timeouts, "find", model) as (assoc, sop):
        last = None
        for rsp, ds in assoc.send_c_find(ident, sop):
            last = rsp
            if rsp and rsp.get("Status") in PENDINGS and ds is not None:
                yield ds
        if last is None or last.get("Status") != SUCCESS:
            raise _failure(last, "C-FIND")


def move(peer: Peer, calling_aet: str, model: str, ident: Dataset, destination: str, timeouts: Timeouts,
         progress: Callable[[Retrieve], None] | None = None) -> Retrieve:
    with _session(peer, calling_aet, timeouts, "move", model) as (assoc, sop):
        return _follow(assoc.send_c_move(ident, destination, sop), "C-MOVE", progress)


def get(peer: Peer, calling_aet: str, model: str, ident: Dataset, ingester: Ingester, timeouts: Timeouts,
        progress: Callable[[Retrieve], None] | None = None) -> Retrieve:
    """C-GET; each arriving instance goes through the archive's ingest path before we answer it."""
    roles = []

    def storage_contexts(ae: AE) -> None:
        for cx in StoragePresentationContexts[:MAX_CONTEXTS - 1]:  # one context is the C-GET's own
            ae.add_requested_context(str(cx.abstract_syntax), GET_SYNTAXES)
            roles.append(build_role(str(cx.abstract_syntax), scp_role=True))

    receive.install(ingester.new_sink)
    stored: list[Outcome] = []

    def on_store(event: Event) -> Dataset | int:
        out, _size = receive.store(ingester, event, peer.aet, f"{peer.host}:{peer.port}")
        stored.append(out)
        return receive.response(out)

    def on_close(event: Event) -> None:
        receive.discard_unclaimed(event.assoc)

    with _session(peer, calling_aet, timeouts, "get", model, storage_contexts, ext_neg=roles,
                  evt_handlers_extra=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_CLOSE, on_close)]) as (assoc, sop):
        followed = _follow(assoc.send_c_get(ident, sop), "C-GET", progress)
        followed.stored = stored
        return followed


def _check_accepted(assoc: Association, sop: str, peer: Peer) -> None:
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
        if rsp.Status in PENDINGS:
            if progress:
                progress(r)
            continue
    if last is None or "Status" not in last:
        raise _failure(last, what)
    r.status = int(last.Status)
    r.remaining = 0 if r.status in (SUCCESS, SUBOPS_WITH_FAILURES) else r.remaining
    if last_ds is not None and "FailedSOPInstanceUIDList" in last_ds:
        v = last_ds.FailedSOPInstanceUIDList
        r.failed_uids = [str(u) for u in (v if isinstance(v, (list, MultiValue)) else [v]) if u]
    if r.status not in (SUCCESS, SUBOPS_WITH_FAILURES, CANCEL) and not (r.completed or r.failed or r.warning):
        raise _failure(last, what)
    if progress:
        progress(r)
    return r


__all__ = ["find", "get", "identifier", "move", "split_level"]
