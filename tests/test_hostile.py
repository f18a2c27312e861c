"""Peers that try to break the node (issue 18's findings), each next to a well-behaved client.

For each case: what the peer sends, what the node answers, that a normal
client is served meanwhile, the node's peak memory, and an archive that
`check` finds clean afterwards. Attackers connect from 127.0.0.2, the normal
client from 127.0.0.1: two hosts, as on a hospital network.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.support.datagen import write_ct_series
from tests.support.dimse import associate_rq, closed_by_peer, echo_ok, pdu_header, send_raw
from tests.support.node import Node
from tests.support.proc import peak_rss_mb

ATTACKER = "127.0.0.2"


@pytest.fixture
def strict(make_node) -> Node:  # type: ignore[no-untyped-def]
    """A node with short timeouts, so that what they cut off is seen in seconds."""
    return make_node(env={"DICOMNODE_ACSE_TIMEOUT": "3", "DICOMNODE_NETWORK_TIMEOUT": "5"})


def attacker(node: Node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.port), source_address=(ATTACKER, 0))
    return s


def assert_clean(node: Node) -> None:
    assert node.cli("check", check=False).returncode == 0, node.log()[-2000:]


def test_idle_and_dropped_connections_do_not_lock_others_out(strict: Node) -> None:
    # 16 opened and closed at once, sending nothing; then 200 held open, sending nothing
    for _ in range(16):
        attacker(strict).close()
    idle = [attacker(strict) for _ in range(200)]
    try:
        t0 = time.monotonic()
        assert echo_ok(strict.port)
        assert time.monotonic() - t0 < 5  # a normal client is served at once, not after acse_timeout
        # beyond max_pending_per_host they are closed at once, the others when acse_timeout (3 s) passes
        assert all(closed_by_peer(s, 8) for s in idle)
    finally:
        for s in idle:
            s.close()
    assert "have not sent a request (max_pending_per_host)" in strict.log()
    print(f"\n200 idle connections: normal echo served; node peak RSS {peak_rss_mb(strict.proc.pid):.0f} MB")


def test_request_headers_without_bodies_are_cut_off(strict: Node) -> None:
    socks = []
    for _ in range(16):  # the 6-byte header of an A-ASSOCIATE-RQ, then nothing
        s = attacker(strict)
        s.sendall(pdu_header(0x01, 205))
        socks.append(s)
    try:
        assert echo_ok(strict.port)
        assert all(closed_by_peer(s, 8) for s in socks)  # within acse_timeout of their first byte
    finally:
        for s in socks:
            s.close()


def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for b in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([b]))
        except OSError:
            return
        time.sleep(every)


@contextmanager
def trickling(sock: socket.socket, data: bytes, every: float = 0.25):  # type: ignore[no-untyped-def]
    stop = threading.Event()
    t = threading.Thread(target=_trickle, args=(sock, data, every, stop), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def test_a_request_sent_a_byte_at_a_time_is_cut_off(strict: Node) -> None:
    s = attacker(strict)
    t0 = time.monotonic()
    with trickling(s, associate_rq()):  # 233 bytes at 4 bytes/s: would take a minute
        assert echo_ok(strict.port)
        assert closed_by_peer(s, 10)
    assert time.monotonic() - t0 < 8  # acse_timeout (3 s) after its first byte, not when the last arrives
    s.close()
    assert "did not arrive whole in time" in strict.log()


def _associated(node: Node) -> socket.socket:
    s = attacker(node)
    s.sendall(associate_rq(node.aet))
    head = s.recv(6)
    assert head[:1] == b"\x02", head  # A-ASSOCIATE-AC
    length = struct.unpack(">L", head[2:6])[0]
    while length:
        length -= len(s.recv(length))
    return s


def test_a_pdu_trickled_after_association_is_cut_off(strict: Node) -> None:
    s = _associated(strict)
    t0 = time.monotonic()
    with trickling(s, pdu_header(0x04, 1000) + b"\0" * 1000):
        assert echo_ok(strict.port)
        assert closed_by_peer(s, 12)
    assert time.monotonic() - t0 < 10  # network_timeout (5 s)
    s.close()


@pytest.mark.parametrize("body", [
    struct.pack(">L", 100) + b"\x01\x02" + b"\0" * 4,  # an item longer than the PDU
    struct.pack(">L", 1) + b"\x01",  # an item too short for its context ID and control header
    struct.pack(">L", 4) + b"\x01\x03\0\0" + b"\0\0",  # bytes left over that are no item
])
def test_p_data_whose_items_do_not_add_up_is_aborted(strict: Node, body: bytes) -> None:
    """The node's own P-DATA reader (patches.quick_pdata) leaves these to pynetdicom, which aborts."""
    s = _associated(strict)
    s.sendall(pdu_header(0x04, len(body)) + body)
    s.settimeout(5)
    try:
        answer = s.recv(1)
    except OSError:
        answer = b""
    assert answer in (b"\x07", b""), answer  # A-ABORT, or closed
    s.close()
    assert echo_ok(strict.port)


def test_huge_declared_pdus_are_refused_before_they_are_read(strict: Node) -> None:
    before = peak_rss_mb(strict.proc.pid)
    # an A-ASSOCIATE-RQ, then (associated) a P-DATA-TF, each declaring 4 GB
    for connect, pdu_type in ((lambda: attacker(strict), 0x01), (lambda: _associated(strict), 0x04)):
        s = connect()
        s.sendall(pdu_header(pdu_type, 0xFFFFFFF0))
        sent = 0
        try:
            for _ in range(256):  # up to 256 MB of it, if the node kept reading
                s.sendall(b"\0" * (1 << 20))
                sent += 1
        except OSError:
            pass
        assert closed_by_peer(s, 5)
        assert sent < 64, f"{sent} MB were accepted"
        s.close()
    assert echo_ok(strict.port)
    after = peak_rss_mb(strict.proc.pid)
    assert after - before < 50, f"peak RSS grew from {before:.0f} to {after:.0f} MB"
    assert "over the limit" in strict.log()
    print(f"\n4 GB PDUs declared: closed; node peak RSS {before:.0f} -> {after:.0f} MB")


def test_a_backtracking_wildcard_does_not_freeze_the_node(strict: Node, tmp_path: Path) -> None:
    f = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0]
    ds = dcmread(f)
    ds.InstitutionalDepartmentName = "a" * 60  # a key the index does not hold: matched on the header
    ds.save_as(f)
    assert send_raw(strict, f).Status == 0
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.InstitutionalDepartmentName = "*a*a*a*a*a*a*a*aQ"
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", strict.port, ae_title=strict.aet)
    t0 = time.monotonic()
    answers = [rsp.Status for rsp, _ds in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert answers == [0x0000] and time.monotonic() - t0 < 5  # no match, answered at once (was 38 s)
    assert echo_ok(strict.port)


def _object_with(tmp_path: Path, name: str, element: bytes) -> Path:
    """A CT object with raw element bytes inserted just before Pixel Data (explicit VR little endian)."""
    f = write_ct_series(tmp_path / name, n=1, rows=8, cols=8)[0]
    data = f.read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    f.write_bytes(data[:at] + element + data[at:])
    return f


def test_an_element_declaring_more_than_the_object_holds_is_refused(strict: Node, tmp_path: Path) -> None:
    # (0040,A160) Text Value, UT, declaring 2 GB; four bytes follow, then Pixel Data
    f = _object_with(tmp_path, "long", struct.pack("<HH2sHI", 0x0040, 0xA160, b"UT", 0, 0x80000000) + b"abcd")
    rsp = send_raw(strict, f)
    assert rsp.Status == 0xC000 and "declares 2147483648 bytes" in str(rsp.ErrorComment)
    assert_clean(strict)
    assert echo_ok(strict.port)


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH2sHI", 0x0028, 0x3010, b"SQ", 0, len(item)) + item
    return inner


def test_objects_nested_too_deep_are_refused(strict: Node, tmp_path: Path) -> None:
    rsp = send_raw(strict, _object_with(tmp_path, "deep", _nested(600)))
    assert rsp.Status == 0xC000 and "nested more than 32 levels" in str(rsp.ErrorComment)
    assert_clean(strict)
    ok = send_raw(strict, _object_with(tmp_path, "fine", _nested(8)))
    assert ok.Status == 0x0000


def _find(node: Node, ident: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    try:
        return [(int(rsp.Status), rsp) for rsp, _ds in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


def _code(value: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    return item


def test_nested_sequence_keys_are_matched_and_too_deep_ones_refused(strict: Node, tmp_path: Path) -> None:
    f = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0]
    ds = dcmread(f)
    request = Dataset()
    request.ScheduledProtocolCodeSequence = Sequence([_code("X")])
    ds.RequestAttributesSequence = Sequence([request])
    ds.save_as(f)
    assert send_raw(strict, f).Status == 0

    def query(code: str) -> list[int]:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ""
        wanted = Dataset()
        wanted.ScheduledProtocolCodeSequence = Sequence([_code(code)])
        ident.RequestAttributesSequence = Sequence([wanted])
        return [s for s, _r in _find(strict, ident)]

    assert query("X") == [0xFF00, 0x0000]
    assert query("Y") == [0x0000]  # the constraint two levels down counts (it was ignored)
    deep = Dataset()
    inner = deep
    for _ in range(300):
        item = Dataset()
        inner.RequestAttributesSequence = Sequence([item])
        inner = item
    deep.QueryRetrieveLevel = "STUDY"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # our client has to encode it
    try:
        answers = _find(strict, deep)
    finally:
        sys.setrecursionlimit(limit)
    assert [s for s, _r in answers] == [0xA900]
    assert "nested more than 8 levels" in str(answers[0][1].ErrorComment)
    assert "Traceback" not in strict.log()
    assert echo_ok(strict.port)


@pytest.mark.parametrize("value", ["20201301-", "2020010", "20240230", "-20241399"])
def test_impossible_dates_are_refused(strict: Node, value: str) -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.StudyDate = value
    answers = _find(strict, ident)
    assert [s for s, _r in answers] == [0xA900], value
    assert "is not a DA" in str(answers[0][1].ErrorComment)


def test_association_limits_per_calling_ae_title(make_node) -> None:  # type: ignore[no-untyped-def]
    """max_associations_per_aet counts a request by its calling AE title (which pynetdicom fills in only
    after acceptance: the limit once compared every request with an empty title and never held)."""
    node = make_node(env={"DICOMNODE_MAX_ASSOCIATIONS_PER_AET": "2"})
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="GREEDY")
            ae.add_requested_context("1.2.840.10008.1.1")
            held.append(ae.associate("127.0.0.1", node.port, ae_title=node.aet))
            assert held[-1].is_established
        third = AE(ae_title="GREEDY")
        third.add_requested_context("1.2.840.10008.1.1")
        refused = third.associate("127.0.0.1", node.port, ae_title=node.aet)
        assert refused.is_rejected  # A-ASSOCIATE-RJ with its reason, not an abort
        assert echo_ok(node.port, calling="OTHER")  # another AE title from the same host is served
    finally:
        for a in held:
            a.release()
    assert "association from GREEDY@127.0.0.1" in node.log()
    assert "2 associations of GREEDY already open (max_associations_per_aet)" in node.log()


# -- the HTTP side ------------------------------------------------------------------------------

def _http_status(port: int, timeout: float = 10) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/dicom-web/studies")
        return conn.getresponse().status
    finally:
        conn.close()


def test_half_sent_http_requests_do_not_lock_others_out(make_node) -> None:  # type: ignore[no-untyped-def]
    """300 connections that send half a request head and then nothing (slowloris) once took every
    slot of the web side: every other client got 503."""
    node = make_node(web=True, env={"DICOMNODE_HTTP_HEAD_TIMEOUT": "5", "DICOMNODE_HTTP_MAX_PER_HOST": "64"})
    held = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", node.http_port), source_address=(ATTACKER, 0))
        s.sendall(b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    try:
        t0 = time.monotonic()
        assert _http_status(node.http_port) in (200, 204)
        assert time.monotonic() - t0 < 5
        # beyond 64 per address they are closed at once; the others once their head is overdue (5 s)
        assert sum(closed_by_peer(s, 1) for s in held[64:]) >= 230
        assert all(closed_by_peer(s, 12) for s in held[:64])
    finally:
        for s in held:
            s.close()
    log = node.log()
    assert "connections from it already open" in log and "no whole request head in 5 s" in log


def test_a_stalled_upload_is_cut_off_with_408(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(web=True, env={"DICOMNODE_NETWORK_TIMEOUT": "3"})
    s = socket.create_connection(("127.0.0.1", node.http_port))
    try:
        s.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; "
                  b"type=\"application/dicom\"; boundary=b\r\nContent-Length: 100000000\r\n\r\n--b\r\n")
        s.settimeout(20)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert closed_by_peer(s, 10)
    finally:
        s.close()
    assert _http_status(node.http_port) in (200, 204)
    assert "cut off: no body data for 3 s" in node.log() and "Traceback" not in node.log()
    assert node.cli("check", check=False).returncode == 0
