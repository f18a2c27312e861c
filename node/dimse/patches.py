"""Every place dicomnode reaches into pynetdicom's internals, behind one version check.

pynetdicom's public API has no hook for thirteen things the node needs:
  - received data sets written into a sink of ours (the archive's temp folder,
    hashed while written) rather than a NamedTemporaryFile, behind a File Meta
    encoded without pydicom's writer: `receive_into`;
  - C-MOVE/C-GET sub-operations sent from an archived file without loading
    it: `intercept_send_c_store`;
  - C-FIND/C-MOVE/C-GET refused (not authorized, bad retrieve identifier)
    before pynetdicom's service loop starts: `wrap_qr_services`;
  - reading a PDU with a size limit and a deadline (pynetdicom buffers any
    declared length and blocks in recv for as long as a peer trickles bytes):
    `wrap_socket_recv`;
  - the TLS handshake of an accepted connection done in its own thread
    (pynetdicom does it in the accept loop, blocking every other client while
    one stays silent), and a plain connection's association and DUL threads
    started from the accept loop side by side: `handshake_in_thread`;
  - sending a request (the storage commitment report) on an association the
    peer opened, from another thread, without the association's own reactor
    taking the response off the queue: `reactor_paused`;
  - a listening socket several receiving processes accept on: `inherit_listeners`;
  - command sets and C-FIND identifiers encoded by a faster encoder than
    pydicom's general writer where it can: `encode_with`;
  - DIMSE-C command sets encoded without pydicom's writer, a small message
    sent as one PDU, and a C-STORE from a file written to the socket by the
    reactor in large writes: `quick_send`;
  - DIMSE-C responses' and requests' command sets decoded without pydicom:
    `quick_receive`;
  - a P-DATA-TF PDU handed to the DIMSE layer without pynetdicom's PDU
    objects and state machine turn: `quick_pdata`;
  - UIDs and AE titles that passed pynetdicom's checks once not checked again:
    `remember_valid_uids`;
  - reactors woken by what they wait for (data on the socket, a message
    queued) rather than polling with 1 ms naps: `wake_reactors`.
Each reaches into names of pynetdicom 3.0.x; `check_version` refuses to run
on another minor version rather than misbehave (pyproject.toml pins it).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pynetdicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, _handlers, dimse_messages, evt, fsm, service_class
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler, ThreadedAssociationServer

VERIFIED_WITH = "3.0."
QR_SERVICE_METHODS = {"find": "_c_find_scp", "move": "_move_scp", "get": "_get_scp"}
_applied: set[str] = set()
log = logging.getLogger("dicomnode.dimse")

SendHook = Callable[..., Dataset]


def check_version() -> None:
    if not pynetdicom.__version__.startswith(VERIFIED_WITH) or not hasattr(dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError(f"dicomnode needs pynetdicom {VERIFIED_WITH}x (found {pynetdicom.__version__}): "
                           "node/dimse/patches.py reaches into its internals")


def receive_into(factory: Callable[..., Any],
                 file_meta: Callable[[str, str, str, str, str], bytes | None] | None = None) -> None:
    """pynetdicom's chunked C-STORE receive writes each data set into what `factory()` returns.

    The object must behave like the NamedTemporaryFile pynetdicom creates
    (write, file.flush, name, close). Called again, the new factory replaces
    the old one (one archive per process). With `file_meta(SOP Class, SOP
    Instance, Transfer Syntax, Implementation Class UID, Implementation
    Version Name)`, the File Meta pynetdicom writes before each data set comes
    from it (bytes, or None to leave it to pydicom): pydicom built and wrote a
    FileMetaDataset per object, 0.5 ms of a C-STORE's receive.
    """
    check_version()
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = factory
    if file_meta is None or "file_meta" in _applied:
        return
    create, write = dimse_messages.create_file_meta, dimse_messages.write_file_meta_info

    class Meta:
        """create_file_meta's arguments, encoded when written."""

        def __init__(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     implementation_uid: str = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID,
                     implementation_version: str = pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION) -> None:
            self.values = (sop_class_uid, sop_instance_uid, transfer_syntax, implementation_uid,
                           implementation_version)

    def create_file_meta(**kwargs: Any) -> Meta:
        return Meta(**kwargs)

    def write_file_meta_info(fp: Any, meta: Any, enforce_standard: bool = True) -> None:
        if isinstance(meta, Meta):
            data = file_meta(*(str(v) for v in meta.values))
            if data is not None:
                fp.write(data)
                return
            names = ("sop_class_uid", "sop_instance_uid", "transfer_syntax", "implementation_uid",
                     "implementation_version")
            meta = create(**dict(zip(names, meta.values)))  # type: ignore[arg-type]
        write(fp, meta, enforce_standard)

    dimse_messages.create_file_meta = create_file_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = write_file_meta_info  # type: ignore[assignment]
    _applied.add("file_meta")


def intercept_send_c_store(kind: type, send: SendHook) -> None:
    """Association.send_c_store hands data sets of type `kind` to `send(assoc, item, original, **kwargs)`."""
    check_version()
    if "send_c_store" in _applied:
        return
    original = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if isinstance(dataset, kind):
            if args:  # the positional parameters of send_c_store after the data set
                kwargs = {**dict(zip(("msg_id", "priority", "originator_aet", "originator_id"), args)), **kwargs}
            return send(self, dataset, original, **kwargs)
        return original(self, dataset, *args, **kwargs)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]
    _config.STORE_SEND_CHUNKED_DATASET = True  # files stream from disk, memory stays flat
    _applied.add("send_c_store")


def wrap_qr_services(wrap: Callable[[Callable[..., None], str], Callable[..., None]]) -> None:
    """Replace the C-FIND/C-MOVE/C-GET SCP methods by `wrap(original, service)` (service: find|move|get)."""
    check_version()
    if "qr_services" in _applied:
        return
    for service, name in QR_SERVICE_METHODS.items():
        setattr(QueryRetrieveServiceClass, name, wrap(getattr(QueryRetrieveServiceClass, name), service))
    _applied.add("qr_services")


def encode_with(encoder: Callable[[Any, bool, bool], bytes | Dataset | None]) -> None:
    """pynetdicom's DIMSE messages and service classes encode data sets with `encoder(ds, implicit
    VR, little endian)` first: it gives the bytes, or a data set (or None: the same one) for
    pydicom's writer to encode."""
    check_version()
    if "encode" in _applied:
        return
    original = dimse_messages.encode

    def encode(ds: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        fast = encoder(ds, is_implicit_vr, is_little_endian and not deflated)
        if isinstance(fast, bytes) and not deflated:
            return fast
        return original(ds if fast is None or isinstance(fast, bytes) else fast, is_implicit_vr,
                        is_little_endian, deflated)

    dimse_messages.encode = encode
    service_class.encode = encode
    # pynetdicom formats every C-FIND response identifier for its debug log, logged or not
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _applied.add("encode")


def quick_send(command_set: Callable[[str, Any, tuple[str, ...], bool], bytes | None]) -> None:
    """DIMSE-C messages go out faster than pynetdicom sends them.

    Their command set is encoded by `command_set(message, primitive, keywords, has data set)`
    (node/dimse/wire.py) where pynetdicom built a pydicom data set per message and encoded it
    twice (to learn its group length), a third of a 1,000-study C-FIND answer and of a C-GET.

    A message with a small data set (a C-FIND response) goes out as one P-DATA-TF PDU holding
    two PDVs, command set and data set (PS3.8 9.3.5 allows several PDVs per PDU), where
    pynetdicom sent two PDUs, each a turn of the association's reactor.

    A C-STORE request whose data set comes from a file (C-MOVE and C-GET sub-operations) is
    one StreamedData, its PDUs written straight to the socket, up to a megabyte per write,
    reading the file as it goes: by the calling thread where it can (_write_now), else queued
    for the reactor. pynetdicom queued one primitive per PDU (32 for a 512x512 CT at DCMTK's
    16 kB PDU), each a turn of the reactor, which naps a millisecond whenever it finds the queue
    empty.

    The event pynetdicom triggers for a sent message only feeds its debug log, so it is skipped
    unless that log is on or a handler of ours is bound; anything else is sent by pynetdicom.
    """
    check_version()
    if "quick_send" in _applied:
        return
    original = DIMSEServiceProvider.send_msg
    debug = logging.getLogger("pynetdicom")
    kinds = (C_ECHO, C_STORE, C_FIND, C_GET, C_MOVE)

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        kind = type(primitive)
        if (kind not in kinds or debug.isEnabledFor(logging.DEBUG)
                or any(h[0] is not _handlers.standard_dimse_sent_handler
                       for h in cast(list, self.assoc.get_handlers(evt.EVT_DIMSE_SENT)))):
            return original(self, primitive, context_id)
        response = primitive.MessageIDBeingRespondedTo is not None
        if response and kind in (C_GET, C_MOVE) and primitive.Status == 0xFF00 and _pending_too_soon(self.assoc):
            return None
        message = (_RSP_TO_MESSAGE if response else _RQ_TO_MESSAGE)[kind].__name__
        data_keyword = dimse_messages._DATASET_KEYWORDS.get(message)
        message = message.replace("_", "-")
        path = getattr(primitive, "_dataset_path", None)
        data: Any = getattr(primitive, data_keyword, None) if data_keyword else None
        data = data.getvalue() if data is not None else b""
        command = command_set(message, primitive, dimse_messages._COMMAND_SET_KEYWORDS[message],
                              bool(data) or path is not None)
        if command is None:
            return original(self, primitive, context_id)
        max_pdu = self.maximum_pdu_size
        if path is not None:
            stream = StreamedData.open(context_id, command, path[0], path[1], max_pdu)
            if stream is None:
                return original(self, primitive, context_id)
            # from this thread, which then waits for the response: handing it to the reactor
            # cost each C-GET sub-operation a wake of that thread and its turn
            if not _write_now(self.dul, lambda: _stream(self.dul, stream)):
                self.dul.send_pdu(stream)
            return None
        if max_pdu and 12 + len(command) + len(data) > max_pdu:
            return original(self, primitive, context_id)
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        if data:
            pdata.presentation_data_value_list.append((context_id, b"\x02" + data))
        # from this thread: handing each response to the reactor and waking it cost a C-STORE
        # ~0.2 ms between the handler's return and the response on the wire
        if not _write_now(self.dul, lambda: self.dul._send(P_DATA_TF(pdata))):
            self.dul.send_pdu(pdata)
        return None

    send_pdata = fsm.ACTIONS["DT-1"]

    def dt_1(dul: Any) -> str:
        """Send P-DATA-TF PDU: a StreamedData as a run of PDUs written by the reactor itself."""
        with _sending(dul):
            queued = dul.to_provider_queue.queue
            if queued and isinstance(queued[0], StreamedData):
                _stream(dul, dul.to_provider_queue.get(False))
                return "Sta6"
            return send_pdata[1](dul)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    fsm.ACTIONS["DT-1"] = (send_pdata[0], dt_1, send_pdata[2])
    _applied.add("quick_send")


def quick_receive(decode_command: Callable[[bytes], dict[str, Any] | None]) -> None:
    """DIMSE-C responses without a data set, and DIMSE-C requests' command sets, are decoded faster
    than pynetdicom decodes them.

    pynetdicom decodes every command set into a pydicom data set and copies it element by element
    into the primitive: a third of the node's time in a C-GET, whose every sub-operation ends
    with a C-STORE response (py-spy). A response that comes whole in one PDV (as every SCP
    sends one: it is a hundred bytes) has its command set decoded by `decode_command`
    (node/dimse/wire.py) straight into the primitive, through the same setters; so has a
    C-STORE request's, whose data set pynetdicom then receives as ever (_store_request makes
    the file and message its decode_msg would have made), and the other requests' (C-ECHO, and
    C-FIND, C-GET and C-MOVE, whose identifier pynetdicom then receives into a _Request): 0.27
    of the 0.78 ms a node took to answer an echo was pynetdicom's decode. Anything else,
    or a command set that decoder leaves alone, goes to pynetdicom, as do all messages when its
    debug log is on or a handler of ours wants the received message (EVT_DIMSE_RECV).
    """
    check_version()
    if "quick_receive" in _applied:
        return
    from pynetdicom.dimse_messages import _MESSAGE_TYPES, _MSG_TO_PRIMITVE

    original = DIMSEServiceProvider.receive_primitive
    debug = logging.getLogger("pynetdicom")
    responses: dict[int, Any] = {field: _MSG_TO_PRIMITVE[name[:-4].replace("-", "_")]
                 for field, (name, _cls) in _MESSAGE_TYPES.items()
                 if name in ("C-STORE-RSP", "C-FIND-RSP", "C-GET-RSP", "C-MOVE-RSP", "C-ECHO-RSP")}
    # requests other than C-STORE's: C-ECHO without a data set, the Q/R ones with their identifier
    requests: dict[int, tuple[Any, str | None]] = {
        field: (_MSG_TO_PRIMITVE[name[:-3].replace("-", "_")],
                dimse_messages._DATASET_KEYWORDS.get(name.replace("-", "_")))
        for field, (name, _cls) in _MESSAGE_TYPES.items() if name in ("C-ECHO-RQ", "C-FIND-RQ", "C-GET-RQ", "C-MOVE-RQ")}

    def receive_primitive(self: DIMSEServiceProvider, primitive: P_DATA) -> None:
        pdvs = primitive.presentation_data_value_list
        if (self.message is None and len(pdvs) == 1 and pdvs[0][1][0] & 3 == 3
                and not debug.isEnabledFor(logging.DEBUG)
                and all(h[0] is _handlers.standard_dimse_recv_handler
                        for h in cast(list, self.assoc.get_handlers(evt.EVT_DIMSE_RECV)))):
            context_id, data = pdvs[0]
            fields = decode_command(bytes(data[1:]))
            kind = responses.get(fields.get("CommandField", -1)) if fields else None
            rsp = _filled(kind, fields) if fields and kind is not None \
                and fields.get("CommandDataSetType") == 0x0101 else None
            if rsp is not None:
                rsp._context_id = context_id
                self.msg_queue.put((context_id, rsp))
                return
            request = requests.get(fields.get("CommandField", -1)) if fields else None
            if request is not None and fields is not None:
                kind, data_keyword = request
                has_data = fields.get("CommandDataSetType") != 0x0101
                rq = _filled(kind, fields) if has_data == (data_keyword is not None) else None
                if rq is not None:
                    if data_keyword is None:  # C-ECHO: complete
                        rq._context_id = context_id
                        self.msg_queue.put((context_id, rq))
                    else:  # the identifier follows (this P-DATA held the command set only)
                        self.message = _Request(context_id, rq, data_keyword)
                    return
            rq = _filled(C_STORE, fields) if (
                fields and fields.get("CommandField") == 0x0001 and fields.get("CommandDataSetType") != 0x0101
                and _config.STORE_RECV_CHUNKED_DATASET and context_id in self.assoc._accepted_cx) else None
            if rq is not None:  # the data set follows (this P-DATA held the command set only)
                self.message = _store_request(self.assoc, context_id, rq)
                return
        original(self, primitive)

    DIMSEServiceProvider.receive_primitive = receive_primitive  # type: ignore[method-assign]
    _applied.add("quick_receive")


_PDUS_PER_TURN = 64  # P-DATA-TF PDUs read in one turn of the DUL's reactor at most (quick_pdata)


def quick_pdata() -> None:
    """A P-DATA-TF PDU that arrives on an established association goes straight to the DIMSE layer.

    pynetdicom reads a PDU, decodes it into a PDU object and its items, queues it and an event
    for its state machine, runs the state machine's action (DT-2: the PDU to a primitive, the
    primitive to the DIMSE layer) and wakes the association's reactor: per PDU of a C-STORE,
    a third of the receiving process's time in Python (py-spy, 500 CT images over one
    association). Here its PDVs are read off the body in place (views, no copies) and handed to
    the DIMSE layer as DT-2 would, the state (Sta6) staying as DT-2 leaves it. The read goes
    through the same bounded recv (the guard's limits and deadlines); anything else, a PDU
    whose items do not add up (which pynetdicom then decodes and refuses), TLS (which cannot
    peek), a queued event that must go first, or a handler of PDU or state-machine events
    (pynetdicom's debug log among them) takes pynetdicom's way.
    """
    check_version()
    if "quick_pdata" in _applied:
        return
    from pynetdicom.dul import DULServiceProvider

    original = DULServiceProvider._read_pdu_data
    watched = (evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION, evt.EVT_DATA_RECV)

    def read_pdu_data(self: DULServiceProvider) -> None:
        sock = self.socket
        raw = getattr(sock, "socket", None)
        if (sock is None or raw is None or isinstance(raw, ssl.SSLSocket)
                or self.state_machine.current_state != "Sta6" or not self.event_queue.empty()
                or any(self.assoc.get_handlers(e) for e in watched)):
            return original(self)
        try:
            head = raw.recv(6, socket.MSG_PEEK)
        except (OSError, ValueError):
            return original(self)
        if len(head) < 6 or head[0] != 0x04:
            return original(self)
        queued = self.assoc.dimse.msg_queue
        for _ in range(_PDUS_PER_TURN):
            if not one_pdata(self, sock):
                return
            # More of the same message already waiting: read it now, not after another turn of
            # the reactor (two selects, a queue look-up and timers per PDU). Whatever the reactor
            # must see first ends the run: a primitive to send, a queued event, a message done.
            if (queued.qsize() or self.to_provider_queue.qsize() or self.event_queue.qsize()
                    or self._kill_thread or self.state_machine.current_state != "Sta6"):
                return
            try:
                # select first: the socket has a timeout, and Python then waits for data before
                # any recv, MSG_DONTWAIT or not
                if not select.select([raw], [], [], 0)[0]:
                    return
                head = raw.recv(6, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (OSError, ValueError):  # closed meanwhile: the reactor finds out
                return
            if len(head) < 6 or head[0] != 0x04:
                return

    def one_pdata(self: DULServiceProvider, sock: Any) -> bool:
        """Read one P-DATA-TF (its header peeked) and hand it on; False when it went elsewhere."""
        header = sock.recv(6)
        length = int.from_bytes(header[2:6], "big") if len(header) == 6 else -1
        body = sock.recv(length) if length >= 0 else bytearray()
        if length < 0 or len(body) != length:
            log.error("the connection closed before the whole PDU was received")
            self.event_queue.put("Evt17")
            return False
        pdvs = _pdvs(body)
        if pdvs is None:  # pynetdicom's decoding says what is wrong and aborts (Evt19)
            try:
                pdu, event = self._decode_pdu(bytearray(header) + body)
            except Exception as exc:  # as pynetdicom's own read: whatever its decoder raises
                log.error("unable to decode the received PDU: %s", exc)
                self.event_queue.put("Evt19")
                return False
            self.event_queue.put(event)
            self._recv_pdu.put(pdu)
            return False
        primitive = P_DATA()
        primitive._presentation_data_value_list = pdvs  # type: ignore[assignment]  # its setter wants lists of bytes
        self.assoc.dimse.receive_primitive(primitive)
        if self.assoc.dimse.msg_queue.qsize():  # a message is complete: the association's reactor acts
            _wake_association(self.assoc)
        return True

    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]
    _applied.add("quick_pdata")


def _pdvs(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The presentation data values of a P-DATA-TF PDU's body (PS3.8 9.3.5: items of a 4-byte
    length, a context ID, then the message control header and the fragment), each as (context
    ID, a view of its control header and fragment), or None when the items do not fill the body
    exactly or one is too short to hold its header. The views are read-only: the body is never
    reused, so a receive sink may hold on to them without copying (durable._Writer)."""
    view = memoryview(body).toreadonly()
    out = []
    at, end = 0, len(body)
    while at < end:
        if end - at < 6:
            return None
        n = int.from_bytes(view[at:at + 4], "big")
        if n < 2 or at + 4 + n > end:
            return None
        out.append((body[at + 4], view[at + 5:at + 4 + n]))
        at += 4 + n
    return out or None


class _Request(DIMSEMessage):
    """A request whose command set quick_receive decoded, its primitive made already: pynetdicom's
    decode_msg receives its data set (a C-FIND/C-GET/C-MOVE identifier; _StoreRequest's)."""

    def __init__(self, context_id: int, primitive: Any, data_keyword: str) -> None:
        # not DIMSEMessage's: it builds a command set data set, which this message has no use for
        self.context_id = context_id
        self.primitive = primitive
        self.data_keyword = data_keyword
        self.encoded_command_set = BytesIO()
        self.data_set = BytesIO()
        self.command_set = None  # type: ignore[assignment]
        self._data_set_path = None
        self._data_set_file = None

    def message_to_primitive(self) -> Any:
        p = self.primitive
        setattr(p, self.data_keyword, self.data_set)
        p._context_id = self.context_id
        return p


class _StoreRequest(_Request, C_STORE_RQ):
    """A C-STORE-RQ whose command set quick_receive decoded: its data set is received by
    pynetdicom's decode_msg into the file receive_into made."""

    def __init__(self, context_id: int, primitive: C_STORE) -> None:
        super().__init__(context_id, primitive, "DataSet")

    def message_to_primitive(self) -> Any:
        p = super().message_to_primitive()
        p._dataset_path = self._data_set_path
        p._dataset_file = self._data_set_file
        return p


def _filled(kind: Any, fields: dict[str, Any]) -> Any:
    """A primitive of `kind` with the decoded command elements it has a parameter for, set through
    its setters (which check them), or None when one is refused: pynetdicom then decodes the
    message again and refuses it its own way (an invalid message aborts the association)."""
    p = kind()
    try:
        for kw, value in fields.items():
            if hasattr(p, kw):
                setattr(p, kw, value)
    except (ValueError, TypeError):
        return None
    return p


def _store_request(assoc: Association, context_id: int, p: C_STORE) -> _StoreRequest:
    """The DIMSE message of a C-STORE-RQ whose command set has arrived, as pynetdicom's decode_msg
    leaves it at that point: its data set's file created, with preamble and File Meta."""
    msg = _StoreRequest(context_id, p)
    f: Any = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    msg._data_set_file = f
    msg._data_set_path = Path(f.name)
    f.write(b"\x00" * 128 + b"DICM")
    dimse_messages.write_file_meta_info(f, dimse_messages.create_file_meta(
        sop_class_uid=cast(UID, p.AffectedSOPClassUID), sop_instance_uid=cast(UID, p.AffectedSOPInstanceUID),
        transfer_syntax=assoc._accepted_cx[context_id].transfer_syntax[0]))
    return msg


def remember_valid_uids(size: int = 4096) -> None:
    """pynetdicom checks every UID set on a primitive, a PDU item or a presentation context with
    two regular expressions, and every AE title character by character: a C-GET sub-operation
    sets four UIDs (class and instance, request and response), a tenth of the node's CPU in a
    C-GET (py-spy), and an association's negotiation some forty UIDs and AE titles. A value that
    passed cleanly (valid, so nothing to warn about) is remembered, up to `size` of each, and
    passes again without the check; any other value (new, non-conformant, invalid) gets
    pynetdicom's own check, its warning or its error.
    """
    check_version()
    if "uid_memo" in _applied:
        return
    from pynetdicom import association, dimse_primitives, pdu, pdu_items, pdu_primitives, presentation, utils

    check_uid = utils.set_uid
    check_ae = utils.set_ae
    uids: dict[str, UID] = {}
    titles: set[str] = set()

    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> UID | None:
        if type(value) is str or type(value) is UID:
            seen = uids.get(value)
            if seen is not None:
                return seen
        result = check_uid(value, name, allow_empty, allow_none, validate)
        if result and validate and isinstance(value, str) and result.is_valid:
            if len(uids) >= size:
                uids.clear()
            uids[value] = result
        return result

    def set_ae(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True) -> str | None:
        if type(value) is str and value in titles:
            return value
        result = check_ae(value, name, allow_empty, allow_none)
        if type(value) is str and value.strip():  # valid (or it raised), and valid whatever the flags
            if len(titles) >= size:
                titles.clear()
            titles.add(value)
        return result

    for module in (dimse_primitives, pdu_items, pdu_primitives, presentation):
        module.set_uid = set_uid  # type: ignore[attr-defined]
    for module in (association, dimse_primitives, pdu, pdu_items, pdu_primitives):
        module.set_ae = set_ae  # type: ignore[attr-defined]
    _applied.add("uid_memo")


PENDING_INTERVAL = 0.05


def _pending_too_soon(assoc: Association) -> bool:
    """Whether a C-GET or C-MOVE Pending response is to be left out: one within PENDING_INTERVAL
    seconds of the last one sent on the association.

    Pending responses during the sub-operations are optional (PS3.4 C.4.2.3.1 and C.4.3.3.1:
    the SCP "may optionally generate" them); pynetdicom sends one after every sub-operation,
    which cost a 500-image C-GET a tenth of its time, ours and the peer's. Sent at most every
    50 ms they still show progress and keep an SCU's DIMSE timeout from running out (dcm4chee's
    archive has the same setting); the final response carries the counts.
    """
    now = time.monotonic()
    last = assoc.__dict__.get("_dn_pending_at")
    if last is not None and now - last < PENDING_INTERVAL:
        return True
    assoc.__dict__["_dn_pending_at"] = now
    return False


def _sending(dul: Any) -> threading.Lock:
    """The lock of an association's P-DATA writes (the reactor's DT-1 and _write_now)."""
    lock = dul.__dict__.get("_dn_sending")
    if lock is None:
        lock = dul.__dict__.setdefault("_dn_sending", threading.Lock())
    return cast(threading.Lock, lock)


def _write_now(dul: Any, write: Callable[[], None]) -> bool:
    """Run `write` (a P-DATA write to dul's socket) in the calling thread, unless something queued
    for the reactor is to go first (False: the caller queues its message instead).

    The reactor's own P-DATA writes hold the same lock, so the stream is never interleaved,
    and it takes a queued message only under it, so an empty queue means nothing is in flight.
    Not over TLS: an SSL socket must not be read (by the reactor) and written (here) by two
    threads at once.
    """
    sock = dul.socket
    if sock is None or isinstance(sock.socket, ssl.SSLSocket):
        return False
    with _sending(dul):
        if dul.to_provider_queue.queue or dul.state_machine.current_state != "Sta6":
            return False
        write()
        return True


class StreamedData(P_DATA):
    """A C-STORE request's command set and its data set, read from an open file as it is written."""

    WRITE = 1 << 20  # bytes of the file read, and of PDUs written, at a time

    def __init__(self, context_id: int, command: bytes, file: Any, length: int, max_pdu: int) -> None:
        super().__init__()
        self.context_id, self.command, self.file, self.length = context_id, command, file, length
        self.fragment = (max_pdu or self.WRITE) - 6  # a PDV's data: the PDU less its item header

    @classmethod
    def open(cls, context_id: int, command: bytes, path: Any, where: int | Callable[[Any], int],
             max_pdu: int) -> StreamedData | None:
        """The file opened at its data set, which starts at `where`: an offset (as pynetdicom's
        send_c_store of a file gives it) or a function of the file opened at its start (an
        OSError if it cannot be: the sub-operation fails), or None for what pynetdicom should
        send itself (an empty data set, a command set over a PDU)."""
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by write_to())
        try:
            offset = where if isinstance(where, int) else where(f)
            length = f.seek(0, 2) - offset
        except BaseException:
            f.close()
            raise
        if length <= 0 or (max_pdu and len(command) + 6 > max_pdu):
            f.close()
            return None
        f.seek(offset)
        return cls(context_id, command, f, length, max_pdu)

    def _header(self, control: int, length: int) -> bytes:
        return struct.pack(">BBIIBB", 0x04, 0, length + 6, length + 2, self.context_id, control)

    def write_to(self, sock: socket.socket) -> None:
        """Write the PDUs: the command set's, then the data set's, read a megabyte at a time into
        one buffer and written by sendmsg as a list of PDU headers and views of that buffer (no
        copy of the pixel data in Python). An OSError if the file or the socket fails."""
        try:
            _send_all(sock, [self._header(0x03, len(self.command)), self.command])
            step = max(self.fragment, self.WRITE - self.WRITE % self.fragment)
            buf = memoryview(bytearray(min(step, self.length)))
            left = self.length
            while left > 0:
                got = self.file.readinto(buf[:min(step, left)])
                if not got:
                    raise OSError(f"{self.file.name}: shorter than when the C-STORE began")
                left -= got
                parts: list[bytes | memoryview] = []
                for at in range(0, got, self.fragment):
                    data = buf[at:at + self.fragment if at + self.fragment < got else got]
                    last = left == 0 and at + len(data) == got
                    parts += (self._header(0x02 if last else 0x00, len(data)), data)
                _send_all(sock, parts)
        finally:
            self.file.close()


def _send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """sendmsg until every part is written (a blocking socket may take a part of them per call);
    an SSL socket, which has no sendmsg, gets them joined."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(p) for p in parts]
    while views:
        sent = sock.sendmsg(views[:512])  # below any IOV_MAX (1,024 on Linux)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


def _stream(dul: Any, stream: StreamedData) -> None:
    """Write a StreamedData to dul's socket; a failed write is the transport closing (Evt17), as
    when pynetdicom's own write fails."""
    try:
        stream.write_to(dul.socket.socket)
    except OSError as e:
        log.warning("sending %s failed: %s", stream.file.name, e)
        dul.socket.event_queue.put("Evt17")


def wake_reactors() -> None:
    """pynetdicom's two reactors per association poll with 1 ms naps: the DUL (socket in, queue
    out) and the association's (decoded messages, release and abort). A C-STORE, a C-FIND or an
    A-RELEASE waits through several naps on each side: ~7.5 ms per association against
    Orthanc's, and the bound on one association's rate of small objects (py-spy: 43 % of the
    receiving process's samples were those naps).

    Their naps become waits that end early: the DUL's when its socket turns readable or a
    primitive is queued for it (an eventfd written by send_pdu), the association reactor's when
    the DUL's state machine has acted (a message decoded, a release or abort indicated). A nap
    still ends after its millisecond at the latest, so whatever else the loops check (timers,
    kill flags) is seen as before.
    """
    check_version()
    if "wake" in _applied:
        return
    import select
    import threading
    import weakref

    from pynetdicom import association
    from pynetdicom import dul as dul_module
    from pynetdicom.dul import DULServiceProvider

    lock = threading.Lock()

    def wake_fd(d: DULServiceProvider) -> int:
        fd: int | None = d.__dict__.get("_dicomnode_wake")
        if fd is None:
            with lock:
                fd = d.__dict__.get("_dicomnode_wake")
                if fd is None:
                    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    weakref.finalize(d, os.close, fd)
                    d.__dict__["_dicomnode_wake"] = fd
        return fd

    def dul_nap(d: DULServiceProvider, seconds: float) -> None:
        fd = wake_fd(d)
        sock = getattr(d.socket, "socket", None)
        watch = [fd]
        try:
            if sock is not None and sock.fileno() >= 0:
                pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
                if pending is not None and pending():
                    return
                watch.append(sock.fileno())
            d.__dict__["_dicomnode_napping"] = True
            if d.to_provider_queue.qsize():  # queued between its look and the flag: no nap
                return
            select.select(watch, [], [], seconds)
        except (OSError, ValueError):
            pass
        finally:
            d.__dict__["_dicomnode_napping"] = False
        try:
            os.eventfd_read(fd)
        except OSError:  # BlockingIOError: nobody woke it
            pass

    def assoc_nap(a: Association, seconds: float) -> None:
        ev = a.__dict__.get("_dicomnode_wake")
        if ev is None:
            ev = a.__dict__.setdefault("_dicomnode_wake", threading.Event())
        a.__dict__["_dicomnode_napping"] = True
        if not (a.dimse.msg_queue.qsize() or a.dul.to_user_queue.qsize()):  # else no nap: work came
            ev.wait(seconds)
        a.__dict__["_dicomnode_napping"] = False
        ev.clear()  # before the loop looks: a wake after this is seen then or next time

    class _Time:
        """pynetdicom's modules' `time`, its sleep aware of whose nap it is."""

        def __init__(self, reactor_nap: float | None) -> None:
            self.reactor_nap = reactor_nap

        def sleep(self, seconds: float) -> None:
            t = threading.current_thread()
            if isinstance(t, DULServiceProvider):
                dul_nap(t, seconds)
            elif isinstance(t, Association) and seconds == self.reactor_nap:
                assoc_nap(t, seconds)
            else:
                time.sleep(seconds)

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

    original_send_pdu = DULServiceProvider.send_pdu

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        original_send_pdu(self, primitive)
        # only a napping reactor is woken: a busy one finds the primitive on its next turn (a
        # wake per PDU cost a 1,000-response C-FIND 7 %); one that starts its nap just now
        # sleeps it out, 1 ms at most, as before
        if self.__dict__.get("_dicomnode_napping"):
            try:
                os.eventfd_write(wake_fd(self), 1)
            except OSError:
                pass

    original_do_action = fsm.StateMachine.do_action

    def do_action(self: Any, event: str) -> None:
        original_do_action(self, event)
        _wake_association(self.dul.assoc)

    dul_module.time = _Time(None)  # type: ignore[assignment]
    association.time = _Time(0.001)  # type: ignore[assignment]  # the reactor's nap (Association._run_reactor)
    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
    fsm.StateMachine.do_action = do_action  # type: ignore[method-assign]
    _applied.add("wake")


def _wake_association(assoc: Any) -> None:
    """Wake an association's reactor from its nap (wake_reactors): the DUL has acted."""
    state = getattr(assoc, "__dict__", {})
    if state.get("_dicomnode_napping"):
        state["_dicomnode_wake"].set()


def wrap_socket_recv(wrap: Callable[[Callable[..., bytearray]], Callable[..., bytearray]]) -> None:
    """Replace AssociationSocket.recv (which the DUL calls for a PDU's 6-byte header, then its body)."""
    check_version()
    if "recv" in _applied:
        return
    AssociationSocket.recv = wrap(AssociationSocket.recv)  # type: ignore[method-assign]
    _applied.add("recv")


def inherit_listeners(sockets: dict[int, socket.socket]) -> None:
    """Listeners started from now on, on one of these ports, accept on the given listening socket
    (the main process's, passed to a receiving process) instead of binding one of their own.

    Every receiving process of a node accepts on the one socket the main process bound (the
    kernel hands each new connection to one of the processes waiting in accept). A port shared
    with SO_REUSEPORT instead would let any other program of the same user bind it too, a second
    node started on the port by mistake among them, and take half the associations unseen.
    """
    check_version()
    _inherited.update(sockets)
    if "inherit_listeners" in _applied:
        return
    original = AssociationServer.server_bind

    def server_bind(self: AssociationServer) -> None:
        listener = _inherited.get(self.server_address[1])
        if listener is None:
            return original(self)
        assert self.socket is not None
        self.socket.close()
        self.socket = listener  # non-blocking (serve.receiver_main; handshake_in_thread's get_request)
        self.server_address = listener.getsockname()
        return None

    AssociationServer.server_bind = server_bind  # type: ignore[method-assign]
    _applied.add("inherit_listeners")


_inherited: dict[int, socket.socket] = {}


def handshake_in_thread(handshake: Callable[[Any, Any], bool]) -> None:
    """A TLS listener wraps accepted sockets without handshaking; the connection's thread then calls
    `handshake(socket, address)` first and drops the connection when it returns False. A plain
    connection gets no thread of its own before its association's, and an association's DUL
    starts beside the association's thread rather than from it (A-ASSOCIATE-RQ -> AC, raw-socket
    echo associations, medians of 150 in two interleaved pairs: 2.43/2.52 -> 2.20/2.30 ms)."""
    check_version()
    if "tls" in _applied:
        return

    def get_request(self: AssociationServer) -> tuple[Any, Any]:
        listener = cast(socket.socket, self.socket)
        if listener.gettimeout() != 0.0:
            # receiving processes accept on one socket (inherit_listeners): the one that loses the
            # race for a connection must get EAGAIN, not wait in accept for the next one
            listener.setblocking(False)
        client, address = listener.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    original = ThreadedAssociationServer.process_request_thread

    def process_request_thread(self: ThreadedAssociationServer, request: Any, client_address: Any) -> None:
        if self.ssl_context and not handshake(request, client_address):
            self.shutdown_request(request)
            return
        original(self, request, client_address)

    threaded = ThreadedAssociationServer.process_request

    def process_request(self: ThreadedAssociationServer, request: Any, client_address: Any) -> None:
        # A plain connection's request handler only makes the Association, reports the connection
        # and starts the association's thread: done here, in the accept loop, it spares every
        # connection a thread of its own and a hand-over (a TLS handshake waits on the peer, so
        # that one keeps its thread)
        if self.ssl_context:
            threaded(self, request, client_address)
        else:
            process_request_thread(self, request, client_address)

    def handle(self: RequestHandler) -> None:
        # pynetdicom's handler starts the association's thread, which starts the DUL's and waits
        # until it runs; started here, side by side, the DUL reads the A-ASSOCIATE-RQ while the
        # association's thread is still starting (the reactor then skips its own start and wait)
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.dul.start()
        assoc._started_dul = True
        try:
            assoc.start()
        except BaseException:  # no thread to be had: nothing would ever stop the DUL's
            assoc.dul.kill_dul()
            raise

    AssociationServer.get_request = get_request  # type: ignore[method-assign]
    RequestHandler.handle = handle  # type: ignore[method-assign]
    ThreadedAssociationServer.process_request_thread = process_request_thread  # type: ignore[method-assign]
    ThreadedAssociationServer.process_request = process_request  # type: ignore[method-assign, assignment]
    _applied.add("tls")


@contextmanager
def reactor_paused(assoc: Association, timeout: float = 30.0) -> Iterator[bool]:
    """Hold an acceptor's reactor (pynetdicom's own checkpoint, meant for an acceptor's send_*()) so
    another thread may send a request and read its response; yields whether the association is
    still established once the reactor rests. Resumed on leaving."""
    check_version()
    assoc._reactor_checkpoint.clear()
    try:
        time.sleep(0.01)  # past the iteration that may have passed the checkpoint just before it closed
        deadline = time.monotonic() + timeout
        while assoc.is_established and not assoc._is_paused and time.monotonic() < deadline:
            time.sleep(0.005)
        yield assoc.is_established and assoc._is_paused
    finally:
        assoc._reactor_checkpoint.set()
