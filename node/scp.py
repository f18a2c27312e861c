"""The node's application entity: what it accepts and how each request is answered."""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid, uid_to_service_class

from node import receive
from node.config import Settings
from node.qrscp import FIND_MODELS, GET_MODELS, MOVE_MODELS
from storage.ingest import Ingester, Outcome

log = logging.getLogger("dicomnode")

ERROR_COMMENT_MAX = 64  # (0000,0902) is LO
QR_SOP_CLASSES = (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS)
QR_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


@dataclass
class AssocStats:
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    kept: int = 0
    failed: int = 0
    bytes: int = 0


class InFlight:
    """Counts stores between 'data set complete' and 'response decided', for a clean shutdown."""

    def __init__(self) -> None:
        self._n = 0
        self._cv = threading.Condition()

    def __enter__(self) -> None:
        with self._cv:
            self._n += 1

    def __exit__(self, *_exc: object) -> None:
        with self._cv:
            self._n -= 1
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._n == 0, timeout)


class _CheaplyCopiedContext(PresentationContext):
    """A supported context whose deep copy shares its (immutable) UID objects.

    pynetdicom deep-copies every supported context for each new association;
    with 170 storage classes x 45 transfer syntaxes that was ~80 ms of CPU
    per association, which modalities that open one association per image
    pay for every image.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> "_CheaplyCopiedContext":
        new = copy.copy(self)
        new._transfer_syntax = list(self._transfer_syntax)
        return new


class StorageSCP:
    """Binds the network events to the archive's ingest path."""

    def __init__(self, settings: Settings, ingester: Ingester, activity: Any = None) -> None:
        self.settings = settings
        self.ingester = ingester
        self.activity = activity  # pipeline.Activity: lets the workers hold back while images arrive
        self.in_flight = InFlight()
        self._stats: dict[int, AssocStats] = {}
        self._lock = threading.Lock()
        receive.install(ingester.new_sink)

    def build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.aet)
        ae.require_called_aet = s.require_called_aet
        ae.require_calling_aet = list(s.allowed_calling)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.add_supported_context(Verification)
        for uid in QR_SOP_CLASSES:
            ae.add_supported_context(uid, QR_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # both roles: a C-GET requester proposes to be the storage SCP on its own association
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for i, uid in enumerate(s.extra_sop_classes):
            # pynetdicom routes a C-STORE by its SOP class's service: a private class must be registered
            if uid_to_service_class(uid) is not StorageServiceClass:
                register_uid(uid, f"ConfiguredPrivateStorage{i}", StorageServiceClass)
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        for cx in ae.supported_contexts:
            cx.__class__ = _CheaplyCopiedContext
        return ae

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_CONN_OPEN, self.on_open),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    # -- association events -------------------------------------------------

    def on_open(self, event: Any) -> None:
        """Disable Nagle: a response must not wait for the peer's delayed ACK."""
        try:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass

    def on_conn_close(self, event: Any) -> None:
        dropped = receive.discard_unclaimed(event.assoc)
        if dropped:
            log.warning("association %s closed mid-transfer: %d partial object(s) discarded",
                        _who(event.assoc), dropped)

    def on_accepted(self, event: Any) -> None:
        with self._lock:
            self._stats[id(event.assoc)] = AssocStats()
            if self.activity is not None:
                self.activity.open_associations.value += 1

    def on_rejected(self, event: Any) -> None:
        a = event.assoc
        log.warning("association from %s rejected (called %s)", _who(a), a.acceptor.ae_title)

    def on_closed(self, event: Any) -> None:
        with self._lock:
            st = self._stats.pop(id(event.assoc), None)
            if st is not None and self.activity is not None:
                self.activity.open_associations.value -= 1
        if st is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        secs = time.monotonic() - st.started
        log.info("association %s %s after %.2f s: %d stored, %d duplicates kept, %d failed, %.1f MB",
                 _who(event.assoc), how, secs, st.stored, st.kept, st.failed, st.bytes / 1e6)

    # -- DIMSE services -----------------------------------------------------

    def on_echo(self, _event: Any) -> int:
        return 0x0000

    def on_store(self, event: Any) -> int | Dataset:
        t0 = time.perf_counter()
        req = event.request
        calling = event.assoc.requestor.ae_title
        if not self.settings.may_use(calling, "store"):
            receive.claim(event.dataset_path).discard()
            log.warning("store from %s refused: not allowed the store service", _who(event.assoc))
            rsp = Dataset()
            rsp.Status = 0x0124
            rsp.ErrorComment = f"{calling} is not allowed store"[:ERROR_COMMENT_MAX]
            return rsp
        with self.in_flight:
            sink = receive.claim(event.dataset_path)
            out = self.ingester.ingest(
                sink,
                sop_class=req.AffectedSOPClassUID,
                sop_instance=req.AffectedSOPInstanceUID,
                calling_aet=event.assoc.requestor.ae_title,
                peer=f"{event.assoc.requestor.address}:{event.assoc.requestor.port}",
            )
        self._record(event.assoc, out, sink.size)
        if self.activity is not None:
            self.activity.stored()
        ms = (time.perf_counter() - t0) * 1000
        cls = UID(str(req.AffectedSOPClassUID)).name
        if out.ok:
            what = {"kept": "duplicate kept", "replaced": "replaced"}.get(out.action, "stored")
            log.info("%s %s (%s, %d bytes) from %s in %.1f ms", what, out.sop_instance_uid, cls,
                     sink.size, _who(event.assoc), ms)
            return 0x0000
        log.warning("store of %s from %s failed 0x%04X: %s", req.AffectedSOPInstanceUID,
                    _who(event.assoc), out.status, out.comment)
        rsp = Dataset()
        rsp.Status = out.status
        rsp.ErrorComment = out.comment.encode("ascii", "replace").decode()[:ERROR_COMMENT_MAX]
        return rsp

    def _record(self, assoc: Any, out: Outcome, size: int) -> None:
        with self._lock:
            st = self._stats.get(id(assoc))
            if st is None:
                return
            if not out.ok:
                st.failed += 1
            elif out.action == "kept":
                st.kept += 1
            else:
                st.stored += 1
                st.bytes += size


def _who(assoc: Any) -> str:
    r = assoc.requestor
    return f"{r.ae_title}@{r.address}:{r.port}"
