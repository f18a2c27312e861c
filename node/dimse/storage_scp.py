"""The node's application entity: what it accepts and how each request is answered."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE

from dicomnode.node import metrics
from dicomnode.node.activity import Activity
from dicomnode.node.dimse import guard, receive
from dicomnode.node.dimse.ae import nodelay, server_ae
from dicomnode.node.dimse.status import NOT_AUTHORIZED, status_dataset
from dicomnode.node.dimse.tally import Tally
from dicomnode.node.dimse.users import described, user_of, who_fields
from dicomnode.node.settings import Settings
from dicomnode.storage.archive.ingest import Ingester, Outcome

log = logging.getLogger("dicomnode")


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


class StorageSCP:
    """Binds the network events to the archive's ingest path."""

    def __init__(self, settings: Settings, ingester: Ingester, activity: Activity | None = None,
                 tally: Tally | None = None) -> None:
        self.settings = settings
        self.ingester = ingester
        self.activity = activity  # lets the workers hold back while images arrive
        self.in_flight = InFlight()
        self.admission = guard.Admission(settings, tally)
        guard.install(settings)
        self._stats: dict[int, AssocStats] = {}
        self.ae_labels = metrics.AeLabels(r.aet for r in settings.remotes.values())
        self._lock = threading.Lock()
        receive.install(ingester.new_sink)

    def build_ae(self) -> AE:
        return server_ae(self.settings)

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_CONN_OPEN, nodelay),
            (evt.EVT_CONN_OPEN, self.admission.on_conn_open),
            (evt.EVT_REQUESTED, self.admission.on_requested),
            (evt.EVT_USER_ID, self.admission.users.on_user_id),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_ACSE_SENT, self.on_acse_sent),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    # -- association events -------------------------------------------------

    def on_conn_close(self, event: Event) -> None:
        self.admission.closed(event)
        dropped = receive.discard_unclaimed(event.assoc)
        if dropped:
            log.warning("association %s closed mid-transfer: %d partial object(s) discarded",
                        _who(event.assoc), dropped)

    def on_accepted(self, event: Event) -> None:
        metrics.association_accepted(self.ae_labels.of(event.assoc.requestor.ae_title, admit=True))
        self._audit("association", "success", **who_fields(event.assoc),
                    tls=isinstance(event.assoc.dul.socket and event.assoc.dul.socket.socket, ssl.SSLSocket) or None)
        with self._lock:
            self._stats[id(event.assoc)] = AssocStats()
            if self.activity is not None:
                self.activity.open_associations.value += 1

    def on_acse_sent(self, event: Event) -> None:
        """An A-ASSOCIATE-RJ on its way out: log who was refused and why, in the operator's terms."""
        prim = event.primitive  # type: ignore[attr-defined]
        if not isinstance(prim, A_ASSOCIATE) or prim.result not in (0x01, 0x02):
            return
        a, s = event.assoc, self.settings
        metrics.association_rejected(self.ae_labels.of(guard.calling_aet(a)))
        request = a.requestor.primitive
        called = request.called_ae_title if request is not None else "?"
        why = a.__dict__.get("_dn_rejected_because") or {
            "Calling AE title not recognised": f"calling AE {a.requestor.ae_title!r} is not in allowed_calling",
            "Called AE title not recognised": f"called AE {called!r} is not ours ({s.aet})",
        }.get(prim.reason_str, prim.reason_str.lower())
        log.warning("association from %s rejected (%s): %s", _who(a), prim.result_str.lower(), why)
        self._audit("association", "failure", **{**who_fields(a), "aet": guard.calling_aet(a) or None},
                    reason=why)

    def on_closed(self, event: Event) -> None:
        self.admission.closed(event)
        with self._lock:
            st = self._stats.pop(id(event.assoc), None)
            if st is not None and self.activity is not None:
                self.activity.open_associations.value -= 1
        if st is None:
            return
        metrics.association_closed(self.ae_labels.of(event.assoc.requestor.ae_title))
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        secs = time.monotonic() - st.started
        log.info("association %s %s after %.2f s: %d stored, %d duplicates kept, %d failed, %.1f MB",
                 _who(event.assoc), how, secs, st.stored, st.kept, st.failed, st.bytes / 1e6)

    def _audit(self, event: str, outcome: str, **fields: object) -> None:
        if self.ingester.audit is not None:
            self.ingester.audit.record(event, outcome, **fields)

    # -- DIMSE services -----------------------------------------------------

    def on_echo(self, _event: Event) -> int:
        return 0x0000

    def on_store(self, event: Event) -> int | Dataset:
        t0 = time.perf_counter()
        req = cast(C_STORE, event.request)
        calling = event.assoc.requestor.ae_title
        if not self.settings.may_use(calling, "store", user_of(event.assoc)):
            sink = receive.claim(event.dataset_path)
            sink.discard()
            metrics.object_received(self.ae_labels.of(calling), NOT_AUTHORIZED, sink.size)
            log.warning("store from %s refused: not allowed the store service", _who(event.assoc))
            return status_dataset(NOT_AUTHORIZED, f"{described(event.assoc)} is not allowed store")
        with self.in_flight:
            out, size = receive.store(self.ingester, event, calling, f"{event.assoc.requestor.address}:"
                                      f"{event.assoc.requestor.port}")
        self._record(event.assoc, out, size)
        metrics.object_received(self.ae_labels.of(calling), out.status, size,
                                time.perf_counter() - t0 if out.ok else None)
        if self.activity is not None:
            self.activity.stored()
        ms = (time.perf_counter() - t0) * 1000
        cls = UID(str(req.AffectedSOPClassUID)).name
        if out.ok:
            what = {"kept": "duplicate kept", "replaced": "replaced"}.get(out.action, "stored")
            log.info("%s %s (%s, %d bytes) from %s in %.1f ms", what, out.sop_instance_uid, cls,
                     size, _who(event.assoc), ms)
        else:
            log.warning("store of %s from %s failed 0x%04X: %s", req.AffectedSOPInstanceUID,
                        _who(event.assoc), out.status, out.comment)
        return receive.response(out)

    def _record(self, assoc: Association, out: Outcome, size: int) -> None:
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


def _who(assoc: Association) -> str:
    r = assoc.requestor
    user = user_of(assoc)
    return f"{guard.calling_aet(assoc)}@{r.address}:{r.port}" + (f" (user {user})" if user else "")
