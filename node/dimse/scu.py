"""This node as a client: C-ECHO and C-STORE to a remote node.

Association failures are classified (unreachable, rejected with its reason,
aborted) so the CLI can give each its own message and exit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRBigEndian
from pynetdicom import _config

from dicomnode.errors import AssociationFailed
from dicomnode.node.dimse.ae import MAX_CONTEXTS, NATIVE, UNCOMPRESSED, VERIFICATION, Timeouts, associate, client_ae
from dicomnode.node.dimse.status import is_warning
from dicomnode.node.peers import Peer
from dicomnode.node.transcode import little_endian

log = logging.getLogger("dicomnode.scu")


@dataclass
class SendItem:
    path: Path
    sop_class: str = ""
    sop_instance: str = ""
    transfer_syntax: str = ""
    status: int | None = None
    comment: str = ""

    @property
    def state(self) -> str:
        if self.status is None:
            return "failed"
        if self.status == 0:
            return "success"
        if is_warning(self.status):
            return "warning"
        return "failed"


@dataclass
class SendReport:
    items: list[SendItem] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for i in self.items if i.state == state)


def _refusal(assoc: Any, it: SendItem, accepted: set[str]) -> str:
    peer, name = assoc.acceptor.ae_title, UID(it.sop_class).name
    retired = " (a retired SOP class)" if UID(it.sop_class).is_retired else ""
    if not accepted:
        return f"{peer} does not accept {name}{retired}: it rejected the presentation context"
    return (f"{peer} accepts {name} only as {', '.join(UID(a).name for a in sorted(accepted))}, "
            f"not as this file is ({UID(it.transfer_syntax).name}), and it cannot be converted to those")


def echo(peer: Peer, calling_aet: str, timeouts: Timeouts | None = None) -> float:
    """C-ECHO round trip in milliseconds (association set-up excluded)."""
    ae = client_ae(calling_aet, timeouts or Timeouts())
    ae.add_requested_context(VERIFICATION)
    assoc = associate(ae, peer)
    try:
        t0 = time.perf_counter()
        status = assoc.send_c_echo()
        rtt = (time.perf_counter() - t0) * 1000
    finally:
        assoc.release()
    if not status or status.Status != 0:
        code = getattr(status, "Status", None)
        raise AssociationFailed("refused", f"{peer} answered C-ECHO with status "
                                f"{'none' if code is None else f'0x{code:04X}'}")
    return rtt


def inspect(path: Path) -> SendItem:
    item = SendItem(path)
    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size=1024, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        item.sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        item.sop_instance = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or ds.get("SOPInstanceUID", ""))
        item.transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if not (item.sop_class and item.sop_instance and item.transfer_syntax):
            item.comment = "not a DICOM Part 10 file with SOP Class, SOP Instance and Transfer Syntax UIDs"
    except Exception as exc:
        item.comment = f"not readable as DICOM: {type(exc).__name__}: {exc}"
    return item


def send(peer: Peer, paths: list[Path], calling_aet: str, timeouts: Timeouts | None = None,
         progress: Callable[[SendItem], None] | None = None) -> SendReport:
    """C-STORE every readable file over one association (more only past 128 contexts)."""
    report = SendReport([inspect(p) for p in paths])
    todo = [i for i in report.items if not i.comment]
    for i in report.items:
        if i.comment and progress:
            progress(i)
    for batch in _batches(todo):
        _send_batch(peer, batch, calling_aet, timeouts or Timeouts(), progress)
    return report


Context = tuple[str, tuple[str, ...]]


def _contexts(item: SendItem) -> list[Context]:
    """What to propose for a file: its own transfer syntax, and the little endian ones it can be
    converted to. Explicit VR Big Endian gets a context of its own: a peer accepting one of the
    little endian syntaxes in a shared context would leave no context for the file as it is."""
    ts = UID(item.transfer_syntax)
    if ts in UNCOMPRESSED:
        return [(item.sop_class, tuple(dict.fromkeys((str(ts), *UNCOMPRESSED))))]
    if ts in NATIVE:
        return [(item.sop_class, (str(ts),)), (item.sop_class, tuple(map(str, UNCOMPRESSED)))]
    return [(item.sop_class, (str(ts),))]


def _batches(items: list[SendItem]) -> Iterator[list[SendItem]]:
    batch: list[SendItem] = []
    seen: set[Context] = set()
    for it in items:
        cxs = _contexts(it)
        if len(seen | set(cxs)) > MAX_CONTEXTS:
            yield batch
            batch, seen = [], set()
        seen.update(cxs)
        batch.append(it)
    if batch:
        yield batch


def _send_batch(peer: Peer, items: list[SendItem], calling_aet: str, timeouts: Timeouts,
                progress: Callable[[SendItem], None] | None) -> None:
    ae = client_ae(calling_aet, timeouts)
    for abstract, syntaxes in dict.fromkeys(cx for i in items for cx in _contexts(i)):
        ae.add_requested_context(abstract, list(syntaxes))
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream files as they are; memory stays flat
    try:
        assoc = associate(ae, peer)
    except AssociationFailed as exc:
        for it in items:
            it.comment = str(exc)
            if progress:
                progress(it)
        raise
    try:
        for it in items:
            _store_one(assoc, it)
            if progress:
                progress(it)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for it in items:
        if it.status is None and not it.comment:
            it.comment = "association ended before this file was sent"


def _store_one(assoc: Any, it: SendItem) -> None:
    accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == it.sop_class}
    ts = UID(it.transfer_syntax)
    try:
        if it.transfer_syntax in accepted:
            rsp = assoc.send_c_store(it.path)  # streamed as stored
        elif ts in UNCOMPRESSED and accepted & set(map(str, UNCOMPRESSED)):
            rsp = assoc.send_c_store(dcmread(it.path))  # pynetdicom re-encodes between these two
        elif ts == ExplicitVRBigEndian and accepted & set(map(str, UNCOMPRESSED)):
            rsp = assoc.send_c_store(little_endian(dcmread(it.path)))
        else:
            it.comment = _refusal(assoc, it, accepted)
            return
    except (ValueError, AttributeError, OSError) as exc:
        it.comment = f"{type(exc).__name__}: {exc}"
        return
    if not rsp or "Status" not in rsp:
        it.comment = "no response (association aborted or DIMSE timeout)"
        return
    it.status = int(rsp.Status)
    if "ErrorComment" in rsp:
        it.comment = str(rsp.ErrorComment)
