"""DICOM as a peer of ours speaks it, or misspeaks it: pynetdicom as the client, and raw bytes."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification


def send_raw(node, path: Path, calling: str = "RAWSCU") -> Dataset:  # type: ignore[no-untyped-def]
    """Send a file's data set bytes exactly as they are (pynetdicom chunked send, no re-encoding)."""
    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title=calling)
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return rsp


def echo_ok(port: int, aet: str = "DICOMNODE", calling: str = "PROBE", timeout: float = 10) -> bool:
    """A C-ECHO from a well-behaved client succeeds (association, echo, release) within `timeout`."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def associate_rq(called: str = "DICOMNODE", calling: str = "RAW") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification, encoded by pynetdicom."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = calling, called
    prim.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    prim.called_presentation_address = AddressInformation("127.0.0.1", 2)
    cx = build_context(Verification)
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    prim.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the other side closes the connection within `within` seconds (reading what it sends)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def acknowledged(storescu_log: str, files: list[Path]) -> list[Path]:
    """Files `storescu -v` saw acknowledged with Success (it sends them in the order given)."""
    acks: list[Path] = []
    sending: Path | None = None
    for line in storescu_log.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            sending = Path(m.group(1))
        elif "Received Store Response (Success)" in line and sending is not None:
            acks.append(sending)
            sending = None
    return acks
