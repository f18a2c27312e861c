"""Application entities: the node's own (what it accepts) and its clients' (what they propose).

All association set-up lives here, so that transport options apply to every
association alike: TCP_NODELAY (a response must not wait for the peer's
delayed ACK), timeouts from the settings, and the contexts offered.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID_dictionary
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

from dicomnode.errors import AssociationFailed
from dicomnode.node.dimse import patches, tls, wire
from dicomnode.node.peers import Peer
from dicomnode.node.settings import Settings

MAX_CONTEXTS = 128  # presentation contexts one association can carry (PS3.8 9.3.2.2: odd IDs 1-255)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE = (*UNCOMPRESSED, ExplicitVRBigEndian)  # pynetdicom re-encodes between these
# Query/Retrieve SOP classes: service -> information model root -> SOP Class UID (PS3.4 C.6)
QR_MODELS: dict[str, dict[str, str]] = {
    "find": {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.1", "STUDY": "1.2.840.10008.5.1.4.1.2.2.1"},
    "move": {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.2", "STUDY": "1.2.840.10008.5.1.4.1.2.2.2"},
    "get": {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.3", "STUDY": "1.2.840.10008.5.1.4.1.2.2.3"},
}
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
QR_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
# The acceptor's order decides which proposed syntax is accepted (pynetdicom). pynetdicom's list puts
# Implicit VR first: a sender proposing Explicit VR (DCMTK's default) had to convert every file to
# Implicit VR, which was then stored without its VRs, and a C-GET of a file stored in Explicit VR
# was decoded and re-encoded per image. Explicit VR Little Endian first, then Implicit, then the rest.
STORAGE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]


def qr_root(service: str, sop_class_uid: str) -> str | None:
    """PATIENT or STUDY for a Q/R SOP class of the service, None for another class."""
    return next((root for root, uid in QR_MODELS[service].items() if uid == sop_class_uid), None)


@dataclass
class Timeouts:
    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> Timeouts:
        return cls(settings.acse_timeout, settings.dimse_timeout, settings.network_timeout)


def nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: Nagle off, so a response or a two-PDU request goes out at once."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError):
        pass


class _SharedContexts(list[PresentationContext]):
    """A server's supported contexts, which pynetdicom deep-copies for every new association.

    The copy only feeds the negotiation (presentation.negotiate_as_acceptor and
    negotiate_unrestricted), which reads the acceptor's contexts and builds new ones for its
    answer; nothing changes them once the server runs. So each association gets a new list of
    the same contexts: copying the default settings' ~200 contexts, even without copying their
    UIDs, was 0.4 of the 0.9 ms that making an association's object took (2026-11-30; copied
    with their UIDs it had been ~80 ms)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


def share_contexts(server: Any) -> None:
    """Give a started server (ae.start_server) its contexts as a _SharedContexts list."""
    server.contexts = _SharedContexts(server.contexts)


@cache
def retired_storage_classes() -> tuple[str, ...]:
    """Storage SOP classes the standard has retired (Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6,
    ...): modalities still send them, and an archive that refuses them loses those images."""
    current = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    return tuple(uid for uid, (name, kind, _info, retired, _kw) in UID_dictionary.items()
                 if kind == "SOP Class" and retired == "Retired" and "Storage" in name
                 and "Commitment" not in name and uid not in current)


def _no_narration() -> None:
    """pynetdicom narrates every PDU and DIMSE message (at INFO and DEBUG) through handlers it binds
    to each association; with its logger at ERROR (node/logs.py) nobody reads the narration, whose
    formatting cost every C-STORE ~0.1 ms. They stay bound when that logger was turned up."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"


def server_ae(s: Settings) -> AE:
    """The node's AE: Verification, Q/R, and every storage class in every transfer syntax."""
    _no_narration()
    patches.encode_with(wire.encode_flat)
    patches.quick_send(wire.command_set)
    patches.quick_receive(wire.decode_command)
    patches.quick_pdata()
    patches.remember_valid_uids()
    patches.wake_reactors()
    ae = AE(ae_title=s.aet)
    ae.require_called_aet = s.require_called_aet
    ae.require_calling_aet = list(s.allowed_calling)
    # pynetdicom's own limit counts connections that have not asked for anything yet; the node's
    # limits (node/dimse/guard.py) count requests, so pynetdicom's is set out of their way
    ae.maximum_associations = 1_000_000
    ae.maximum_pdu_size = s.max_pdu
    ae.acse_timeout = s.acse_timeout
    ae.dimse_timeout = s.dimse_timeout
    ae.network_timeout = s.network_timeout
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(STORAGE_COMMITMENT)  # Push Model SCP (node/dimse/commitment.py)
    for models in QR_MODELS.values():
        for uid in models.values():
            ae.add_supported_context(uid, QR_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        # both roles: a C-GET requester proposes to be the storage SCP on its own association
        ae.add_supported_context(str(cx.abstract_syntax), STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    for i, uid in enumerate((*retired_storage_classes(), *s.extra_sop_classes)):
        # pynetdicom routes a C-STORE by its SOP class's service: retired and private classes must be
        # registered as storage
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, f"AcceptedStorage{i}", StorageServiceClass)
        ae.add_supported_context(uid, STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def client_ae(calling_aet: str, timeouts: Timeouts) -> AE:
    _no_narration()
    patches.encode_with(wire.encode_flat)
    patches.quick_send(wire.command_set)
    patches.quick_receive(wire.decode_command)
    patches.quick_pdata()
    patches.remember_valid_uids()
    patches.wake_reactors()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def associate(ae: AE, peer: Peer, evt_handlers_extra: list[Any] | None = None, **kwargs: Any) -> Association:
    """An established association, or AssociationFailed saying why (unreachable, rejected, aborted)."""
    rejection: list[str] = []
    connected: list[bool] = []

    def on_open(event: Event) -> None:
        connected.append(True)
        nodelay(event)

    def on_acse_recv(event: Event) -> None:
        prim = event.primitive  # type: ignore[attr-defined]
        if getattr(prim, "result", None) in (0x01, 0x02):
            rejection.append(f"{prim.result_str}, {prim.source_str}: {prim.reason_str}")

    context = tls.client_context(peer.tls) if peer.tls else None
    if context is not None:
        kwargs["tls_args"] = (context, peer.host)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet,
                             evt_handlers=[(evt.EVT_ACSE_RECV, on_acse_recv), (evt.EVT_CONN_OPEN, on_open),
                                           *(evt_handlers_extra or [])],
                             **kwargs)
    except OSError as exc:
        raise AssociationFailed("unreachable", f"{peer}: {exc}") from None
    if assoc.is_established:
        return assoc
    why = tls.failure(context) if context is not None else None
    if why is not None:
        raise AssociationFailed("rejected", f"{peer}: TLS: {why}")
    if not connected:
        raise AssociationFailed("unreachable", f"{peer}: cannot connect (refused, or no route within "
                                f"{ae.network_timeout:.0f} s)")
    if assoc.is_rejected:
        raise AssociationFailed("rejected", f"{peer} rejected the association ({'; '.join(rejection) or 'no reason'})")
    if assoc.is_aborted:
        raise AssociationFailed("aborted", f"{peer} aborted the association (no presentation context accepted?)")
    raise AssociationFailed("unreachable", f"{peer} did not answer (connection refused or timed out)")
