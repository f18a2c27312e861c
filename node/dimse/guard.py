"""What keeps a hostile or broken peer from taking the node away from everyone else.

- Admission (EVT_REQUESTED): an association counts once its request has
  arrived, against `max_associations` in all, `max_associations_per_host` per
  IP address and `max_associations_per_aet` per calling AE title; beyond, it
  is rejected as pynetdicom would (transient, local limit exceeded) with the
  limit in the log. The limits are the node's, counted over all its receiving
  processes (tally.py). Connections that have sent nothing yet do not count: a
  burst of idle sockets cannot lock modalities out. A calling AE title that
  [remotes] ties to a certificate name must come over TLS with a certificate
  that names it (else rejected: calling AE title not recognised).
- Waiting connections (EVT_CONN_OPEN): at most `max_pending_per_host` from
  one address may sit before their A-ASSOCIATE-RQ; more are closed at once.
- Reading a PDU (patches.wrap_socket_recv): a body longer than we announced
  (or, before association, a request over 1 MiB) closes the connection
  before any of it is buffered; a PDU must arrive whole within a deadline
  (the request within `acse_timeout` of its first byte, any other within
  `network_timeout`), so a peer trickling one byte a second is cut off.
  A cut read returns short, which pynetdicom treats as a closed connection.
- The TLS handshake (patches.handshake_in_thread, tls.accept_handshake) runs in
  the connection's thread within `acse_timeout`, never in the accept loop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket

from dicomnode.node.dimse import patches, tls
from dicomnode.node.dimse.tally import ASKED, WAITING, Tally
from dicomnode.node.dimse.users import UserIdentity
from dicomnode.node.settings import Settings

log = logging.getLogger("dicomnode")

MAX_REQUEST_PDU = 1 << 20  # an A-ASSOCIATE-RQ of 128 contexts with many syntaxes is well under 100 KB
MAX_PDU_UNANNOUNCED = 64 << 20  # max_pdu = 0 announces no limit; this is still kept
CLIENT_MAX_PDU = 256 << 20  # what we accept from a remote we called (peers ignore our announced size)
_READ_AHEAD = 1 << 20  # what a PDU read allocates before its data arrive


@dataclass
class Limits:
    max_pdu: int = 131072
    acse_timeout: float = 30.0
    network_timeout: float | None = 60.0


_limits = Limits()


def install(settings: Settings) -> None:
    """Bound every PDU read of this process by the settings' limits; TLS handshakes out of the accept loop."""
    _limits.max_pdu = settings.max_pdu or MAX_PDU_UNANNOUNCED
    _limits.acse_timeout = settings.acse_timeout
    _limits.network_timeout = settings.network_timeout or None
    patches.wrap_socket_recv(_bounded)
    patches.handshake_in_thread(lambda sock, address: tls.accept_handshake(sock, address, _limits.acse_timeout))


def _bounded(_original: Callable[..., bytearray]) -> Callable[..., bytearray]:
    def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
        assoc = self.assoc
        now = time.monotonic()
        requesting = assoc.is_acceptor and assoc.requestor.primitive is None
        if nr_bytes == 6:  # a PDU's header: a new PDU begins, and with it its deadline
            first = self.__dict__.setdefault("_dn_first_byte", now)
            budget = _limits.acse_timeout if requesting else _limits.network_timeout
            self.__dict__["_dn_deadline"] = (first if requesting else now) + budget if budget else None
        else:
            cap = MAX_REQUEST_PDU if requesting else _limits.max_pdu if assoc.is_acceptor else CLIENT_MAX_PDU
            if nr_bytes > cap:
                log.warning("%s declared a PDU of %d bytes, over the limit of %d: connection closed",
                            _peer(assoc), nr_bytes, cap)
                self.close()
                return bytearray()
        return _read(self, nr_bytes, self.__dict__.get("_dn_deadline"))

    return recv


def _read(sock: AssociationSocket, nr_bytes: int, deadline: float | None) -> bytearray:
    """Up to nr_bytes, by the deadline; short (and the connection closed) when it passes.

    Read into one buffer (no chunk objects to join), allocated up to _READ_AHEAD at first and
    grown as the data arrive, so a peer that declares a large PDU and sends nothing costs little.
    The socket's timeout is set once and tightened only when it would let a read run more than a
    second past the deadline (each settimeout is two ioctls, and a PDU takes several reads).
    """
    raw = sock.socket
    if raw is None:
        return bytearray()
    data = bytearray(min(nr_bytes, _READ_AHEAD))
    got = 0
    before = timeout = raw.gettimeout()
    late = False
    try:
        while got < nr_bytes:
            if got == len(data):
                data.extend(bytes(min(len(data), nr_bytes - got)))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    late = True
                    break
                if timeout is None or timeout > left + 1.0 or timeout <= 0:
                    timeout = left
                    raw.settimeout(left)
            try:
                with memoryview(data) as view:
                    n = raw.recv_into(view[got:])
            except socket.timeout:
                timeout = None  # the deadline check above decides, and sets a fresh timeout
                continue
            if not n:
                break
            got += n
    finally:
        if sock.socket is not None and timeout != before:
            raw.settimeout(before)
    if late:
        log.warning("%s: a PDU did not arrive whole in time: connection closed", _peer(sock.assoc))
        sock.close()
    if got < len(data):
        del data[got:]
    return data


def _reject(assoc: Association, why: str, result: int, source: int, diagnostic: int) -> None:
    """A-ASSOCIATE-RJ from an EVT_REQUESTED handler, as pynetdicom rejects: then wait (kill) until the
    DUL has sent it and the peer has closed, or the ARTIM timer has run out. Without the wait the
    association's thread closes the socket at once and the peer sees an abort, not the reason."""
    assoc.__dict__["_dn_rejected_because"] = why
    assoc.acse.send_reject(result, source, diagnostic)
    assoc.kill()


def calling_aet(assoc: Association) -> str:
    """The calling AE title of a request (pynetdicom fills requestor.ae_title only once it has
    accepted the association, after EVT_REQUESTED)."""
    request = assoc.requestor.primitive
    return str(request.calling_ae_title).strip() if request is not None else assoc.requestor.ae_title


def _peer(assoc: Association) -> str:
    r = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    return f"{r.ae_title or '?'}@{r.address}:{r.port}"


class Admission:
    """The association limits of the settings, applied as requests arrive, counted over all of the
    node's receiving processes (tally.py)."""

    def __init__(self, settings: Settings, tally: Tally | None = None) -> None:
        self.settings = settings
        self.users = UserIdentity(settings)
        self.tally = tally or Tally()

    def on_conn_open(self, event: Event) -> None:
        """Close a connection beyond the host's allowance of connections that have not yet asked."""
        assoc = event.assoc
        host = assoc.requestor.address
        row = self.tally.take(assoc, host)
        if row is None:
            log.warning("connection from %s closed: this process holds %d connections", host, self.tally.rows)
        else:
            assoc.__dict__["_dn_row"] = row
            waiting = self.tally.count(WAITING, host).host
            if waiting <= self.settings.max_pending_per_host:
                return
            log.warning("connection from %s closed: %d connections from it have not sent a request "
                        "(max_pending_per_host)", host, waiting - 1)
            self.closed(event)
        if assoc.dul.socket is not None:
            assoc.dul.socket.close()

    def closed(self, event: Event) -> None:
        """The association ended (released, aborted, rejected, its connection closed): it no longer counts."""
        row = event.assoc.__dict__.pop("_dn_row", None)
        if row is not None:
            self.tally.drop(row, event.assoc)

    def on_requested(self, event: Event) -> None:
        """Reject a request beyond the limits (A-ASSOCIATE-RJ transient, local limit exceeded)."""
        assoc, s = event.assoc, self.settings
        host, aet = assoc.requestor.address, calling_aet(assoc)
        row = assoc.__dict__.get("_dn_row")
        if row is None:
            _reject(assoc, "no room for another connection", 0x02, 0x03, 0x02)
            return
        self.tally.ask(row, aet)
        asked = self.tally.count(ASKED, host, aet)
        why = None
        if asked.total > s.max_associations:
            why = f"{s.max_associations} associations already open (max_associations)"
        elif asked.host > s.max_associations_per_host:
            why = f"{s.max_associations_per_host} associations from {host} already open (max_associations_per_host)"
        elif asked.aet > s.max_associations_per_aet:
            why = f"{s.max_associations_per_aet} associations of {aet} already open (max_associations_per_aet)"
        if why is not None:
            self.closed(event)
            _reject(assoc, why, 0x02, 0x03, 0x02)
            return
        why = self._identity_problem(assoc)
        if why is not None:
            self.closed(event)
            _reject(assoc, why, 0x01, 0x01, 0x03)  # permanent, service user: calling AE title not recognised
            return
        why = self.users.missing(assoc)
        if why is not None:
            self.closed(event)
            _reject(assoc, why, 0x01, 0x01, 0x01)  # permanent, service user: no reason given

    def _identity_problem(self, assoc: Association) -> str | None:
        """Why a peer is not who its calling AE title says, when [remotes] ties that title to a
        certificate name: it must come over TLS with a certificate that names it."""
        aet = calling_aet(assoc)
        remote = self.settings.remote_by_aet(aet)
        if remote is None or not remote.certificate:
            return None
        names = tls.peer_names(assoc.dul.socket.socket if assoc.dul.socket else None)
        if names is None:
            return f"{aet} must call over TLS ([remotes.{remote.name}] certificate)"
        if remote.certificate not in names:
            shown = ", ".join(sorted(names)) or "no certificate"
            return f"{aet} presented {shown}, not {remote.certificate} ([remotes.{remote.name}] certificate)"
        return None
