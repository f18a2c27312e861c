"""Storage Commitment Push Model (PS3.4 Annex J), both roles.

SCP: an N-ACTION (Request Storage Commitment, action type 1) is answered at
once; the instances it names are then judged in a thread of their own
(storage/commitment.py: indexed, the same SOP class, the file still hashing
to its index entry) and the N-EVENT-REPORT (event type 1, all committed; 2,
failures listed with their reasons) goes back on the same association while
it is open, else on a new association to the requestor's `[remotes]` entry
(its AE title), in which this node takes the SCP role (role selection).

SCU (`dicomnode send --commit`): after the C-STOREs, one N-ACTION for every
instance sent, then the report is awaited on that association.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType

from dicomnode.errors import AssociationFailed
from dicomnode.node.dimse import patches
from dicomnode.node.dimse.ae import STORAGE_COMMITMENT, Timeouts, associate, client_ae
from dicomnode.node.dimse.users import described, user_of
from dicomnode.node.peers import Peer, remote_peer
from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive
from dicomnode.storage.commitment import Verdict, verify

log = logging.getLogger("dicomnode")

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance (PS3.4 J.3.5)
REQUEST_COMMITMENT = 1  # N-ACTION action type
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT event types
# N-ACTION statuses (PS3.7 Annex C)
SUCCESS, PROCESSING_FAILURE, MISSING_ATTRIBUTE, NO_SUCH_SOP_CLASS, NO_SUCH_ACTION, NOT_AUTHORIZED = (
    0x0000, 0x0110, 0x0120, 0x0118, 0x0123, 0x0124)


def references(ds: Dataset, keyword: str = "ReferencedSOPSequence") -> list[tuple[str, str]]:
    return [(str(i.get("ReferencedSOPClassUID", "")), str(i.get("ReferencedSOPInstanceUID", "")))
            for i in ds.get(keyword, [])]


def report_dataset(transaction: str, verdict: Verdict) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's event type and Event Information (PS3.4 J.3.3.1.2)."""
    info = Dataset()
    info.TransactionUID = transaction
    if verdict.committed:
        info.ReferencedSOPSequence = [_item(c, u) for c, u in verdict.committed]
    if verdict.failed:
        failed = []
        for c, u, reason, _words in verdict.failed:
            item = _item(c, u)
            item.FailureReason = reason
            failed.append(item)
        info.FailedSOPSequence = failed
    return (SOME_FAILED if verdict.failed else ALL_COMMITTED), info


def _item(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


class CommitmentSCP:
    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_N_ACTION, self.on_action)]

    def on_action(self, event: Event) -> tuple[int, Dataset | None]:
        assoc = event.assoc
        req = event.request
        if str(getattr(req, "RequestedSOPClassUID", "")) != STORAGE_COMMITMENT:
            return NO_SUCH_SOP_CLASS, None
        if event.action_type != REQUEST_COMMITMENT:
            return NO_SUCH_ACTION, None
        if not self.settings.may_use(assoc.requestor.ae_title, "store", user_of(assoc)):
            log.warning("storage commitment from %s refused: not allowed the store service", described(assoc))
            return NOT_AUTHORIZED, None
        try:
            ds = event.action_information
            transaction = str(ds.get("TransactionUID", ""))
            refs = references(ds)
        except Exception as exc:  # an undecodable Action Information is the requestor's fault, said once
            log.warning("storage commitment from %s: unreadable request (%s)", described(assoc), exc)
            return PROCESSING_FAILURE, None
        if not transaction or not refs or any(not c or not u for c, u in refs):
            return MISSING_ATTRIBUTE, None
        threading.Thread(target=self._report, args=(assoc, transaction, refs), daemon=True,
                         name=f"commitment-{transaction[-12:]}").start()
        return SUCCESS, None

    def _report(self, assoc: Association, transaction: str, refs: list[tuple[str, str]]) -> None:
        who = described(assoc)
        calling = assoc.requestor.ae_title
        try:
            verdict = verify(self.archive.layout, self.archive.index, refs)
        except Exception as exc:  # the index unreachable: every instance fails, and the requestor hears it
            log.error("storage commitment %s from %s: %s", transaction, who, exc)
            verdict = Verdict(failed=[(c, u, PROCESSING_FAILURE, str(exc)) for c, u in refs])
        event_type, info = report_dataset(transaction, verdict)
        how = "on the same association"
        sent = _send_on(assoc, info, event_type)
        if not sent:
            remote = self.settings.remote_by_aet(calling)
            if remote is None or remote.url:
                log.warning("storage commitment %s from %s: the association has closed and %s has no "
                            "[remotes] entry to send the report to", transaction, who, calling)
                return
            how = f"to {remote.name}"
            sent = _send_to(remote_peer(remote, self.settings), self.settings, info, event_type)
        log.info("storage commitment %s from %s: %d committed, %d failed%s; report %s%s", transaction, who,
                 len(verdict.committed), len(verdict.failed),
                 "".join(f"; {u}: {w}" for _c, u, _r, w in verdict.failed[:5]), how, "" if sent else " failed")


def _send_on(assoc: Association, info: Dataset, event_type: int) -> bool:
    """The report on the requestor's own association, if it is still open and answers."""
    if not assoc.is_established:
        return False
    try:
        with patches.reactor_paused(assoc) as still_open:
            if not still_open:
                return False
            status, _reply = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
    except (RuntimeError, ValueError) as exc:  # no context for it any more, or the association went away
        log.info("storage commitment report not sent on the same association: %s", exc)
        return False
    return bool(status) and int(status.Status) == 0


def _send_to(peer: Peer, s: Settings, info: Dataset, event_type: int) -> bool:
    """The report on a new association, in which this node is the Storage Commitment SCP."""
    ae = client_ae(s.aet, Timeouts.of(s))
    ae.add_requested_context(STORAGE_COMMITMENT)
    try:
        assoc = associate(ae, peer, ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True)])
    except AssociationFailed as exc:
        log.warning("storage commitment report to %s: %s", peer, exc)
        return False
    try:
        status, _reply = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
    except (RuntimeError, ValueError) as exc:
        log.warning("storage commitment report to %s: %s", peer, exc)
        return False
    finally:
        assoc.release()
    return bool(status) and int(status.Status) == 0


@dataclass
class CommitResult:
    transaction: str
    committed: set[str] = field(default_factory=set)
    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> Failure Reason
    error: str | None = None  # no report (refused, no answer in time)


def request(peer: Peer, refs: list[tuple[str, str]], calling_aet: str, timeouts: Timeouts,
            wait: float) -> CommitResult:
    """Ask `peer` to commit `refs` and wait up to `wait` seconds for its report on this association."""
    result = CommitResult(str(generate_uid()))
    reports: queue.Queue[Dataset] = queue.Queue()

    def on_report(event: Event) -> tuple[int, Dataset | None]:
        reports.put(event.event_information)
        return SUCCESS, None

    ae = client_ae(calling_aet, timeouts)
    ae.add_requested_context(STORAGE_COMMITMENT)
    try:
        assoc = associate(ae, peer, [(evt.EVT_N_EVENT_REPORT, on_report)])
    except AssociationFailed as exc:
        if exc.kind != "aborted":
            raise
        # pynetdicom aborts an association in which no context was accepted: the only one was ours
        result.error = f"{peer} does not offer storage commitment (it accepted no presentation context for it)"
        return result
    try:
        if not any(str(cx.abstract_syntax) == STORAGE_COMMITMENT for cx in assoc.accepted_contexts):
            result.error = f"{peer} does not offer storage commitment (presentation context rejected)"
            return result
        ds = Dataset()
        ds.TransactionUID = result.transaction
        ds.ReferencedSOPSequence = [_item(c, u) for c, u in refs]
        status, _reply = assoc.send_n_action(ds, REQUEST_COMMITMENT, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE)
        if not status or int(status.Status) != SUCCESS:
            code = f"0x{int(status.Status):04X}" if status else "none (timeout or abort)"
            result.error = f"{peer} answered the commitment request with status {code}"
            return result
        try:
            info = reports.get(timeout=wait)
        except queue.Empty:
            result.error = (f"no storage commitment report from {peer} within {wait:.0f} s on this association "
                            "(a peer that sends it on a new association needs this node running: serve)")
            return result
    finally:
        if assoc.is_established:
            assoc.release()
    if str(info.get("TransactionUID", "")) != result.transaction:
        result.error = f"{peer} reported on another transaction ({info.get('TransactionUID')})"
        return result
    result.committed = {u for _c, u in references(info)}
    for item in info.get("FailedSOPSequence", []):
        result.failed[str(item.get("ReferencedSOPInstanceUID", ""))] = int(item.get("FailureReason", 0x0110))
    return result
