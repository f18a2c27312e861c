"""DICOMweb on the running node, with the dicomweb-client package as the client and curl-like raw
HTTP for what clients should not send."""

from __future__ import annotations

import http.client
import json
import shutil
import uuid
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.datagen import write_ct_series
from tests.support.node import Node

REAL = ("JPEG2000.dcm", "MR_small_bigendian.dcm", "CT_small.dcm", "SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm")


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Node:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("web")
    node = Node(tmp / "archive", {"DICOMNODE_MIN_FREE_MB": "0"}, web=True)
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def loaded(web: Node, tmp_path_factory) -> dict:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("files")
    files = write_ct_series(tmp / "ct", n=5, rows=16, cols=16, patient_name="Doe^Jane", patient_id="WEB1")
    for name in REAL:
        shutil.copy(get_testdata_file(name), tmp / name)
        files.append(tmp / name)
    client = DICOMwebClient(url=web.dicomweb)
    result = client.store_instances([dcmread(f) for f in files])
    assert len(result.ReferencedSOPSequence) == len(files) and "FailedSOPSequence" not in result, result
    return {"files": files, "client": client, "datasets": {str(dcmread(f).SOPInstanceUID): f for f in files}}


def test_search_at_every_level_with_filters(loaded: dict) -> None:
    c: DICOMwebClient = loaded["client"]
    ct = dcmread(loaded["files"][0])
    studies = c.search_for_studies(search_filters={"PatientName": "doe*"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [str(ct.StudyInstanceUID)]
    assert studies[0]["00201208"]["Value"] == [5] and studies[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert "00081190" in studies[0]  # RetrieveURL
    by_tag = c.search_for_studies(search_filters={"00100020": "WEB1"})
    assert len(by_tag) == 1
    series = c.search_for_series(str(ct.StudyInstanceUID), search_filters={"Modality": "CT"})
    assert [s["0020000E"]["Value"][0] for s in series] == [str(ct.SeriesInstanceUID)]
    instances = c.search_for_instances(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID))
    assert len(instances) == 5
    everything = c.search_for_instances()
    assert {i["00080018"]["Value"][0] for i in everything} == set(loaded["datasets"])
    uids = list(loaded["datasets"])[:2]
    listed = c.search_for_instances(search_filters={"SOPInstanceUID": ",".join(uids)})
    assert {i["00080018"]["Value"][0] for i in listed} == set(uids)
    with_field = c.search_for_studies(search_filters={"PatientID": "WEB1"}, fields=["StudyComments", "00081030"])
    assert "00081030" in with_field[0]


def test_paging_to_the_end(loaded: dict) -> None:
    c: DICOMwebClient = loaded["client"]
    seen: list[str] = []
    offset = 0
    while True:
        page = c.search_for_instances(limit=3, offset=offset)
        if not page:
            break
        seen += [i["00080018"]["Value"][0] for i in page]
        offset += 3
    assert sorted(seen) == sorted(loaded["datasets"]) and len(seen) == len(set(seen))


def test_retrieve_sends_the_stored_bytes(web: Node, loaded: dict) -> None:
    c: DICOMwebClient = loaded["client"]
    for uid, path in loaded["datasets"].items():
        ds = dcmread(path, stop_before_pixels=True)
        got = c.retrieve_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid,
                                  media_types=(("application/dicom", "*"),))
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        stored = _stored_file(web, uid)
        raw = _raw_retrieve(web, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid}")
        assert raw == stored.read_bytes()
    ct = dcmread(loaded["files"][0], stop_before_pixels=True)
    assert len(c.retrieve_study(str(ct.StudyInstanceUID))) == 5
    assert len(c.retrieve_series(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID))) == 5


def test_retrieve_in_another_transfer_syntax(loaded: dict) -> None:
    c: DICOMwebClient = loaded["client"]
    path = next(p for p in loaded["files"] if p.name == "JPEG2000.dcm")
    ds = dcmread(path)
    got = c.retrieve_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                              media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (got.pixel_array == ds.pixel_array).all()


def test_metadata_has_bulk_data_uris(web: Node, loaded: dict) -> None:
    c: DICOMwebClient = loaded["client"]
    ct = dcmread(loaded["files"][0], stop_before_pixels=True)
    meta = c.retrieve_series_metadata(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID))
    assert len(meta) == 5
    assert all(m["7FE00010"]["BulkDataURI"].startswith(web.dicomweb + "/studies/") for m in meta)
    assert "00020010" not in meta[0]  # File Meta is not part of the metadata


def _stored_file(web: Node, uid: str) -> Path:
    rows = json.loads(web.cli("ls", "instances", "-k", f"SOPInstanceUID={uid}", "--json").stdout)
    return Path(rows[0]["path"])


def _request(web: Node, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", web.http_port, timeout=60)
    conn.request(method, "/dicom-web" + path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def _raw_retrieve(web: Node, path: str) -> bytes:
    status, headers, body = _request(web, "GET", path, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200
    boundary = headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")  # PS3.18: CRLF throughout
    part = body.split(b"--" + boundary.encode())[1]
    return part.split(b"\r\n\r\n", 1)[1][:-2]


def _multipart(parts: list[tuple[str, bytes]], boundary: str, close: bool = True) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + t.encode() + b"\r\n\r\n" + d + b"\r\n"
                   for t, d in parts)
    return out + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def test_stow_with_a_bad_part_lists_it(web: Node, tmp_path: Path) -> None:
    good = write_ct_series(tmp_path / "g", n=1, rows=8, cols=8)[0]
    boundary = uuid.uuid4().hex
    body = _multipart([("application/dicom", good.read_bytes()), ("application/dicom", b"not dicom at all" * 10)],
                      boundary)
    status, headers, data = _request(web, "POST", "/studies", body, {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert status == 202 and headers["content-type"] == "application/dicom+json"
    answer = json.loads(data)
    assert len(answer["00081199"]["Value"]) == 1  # ReferencedSOPSequence
    failed = answer["00081198"]["Value"]  # FailedSOPSequence
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0xC000]  # FailureReason


def test_stow_into_another_study_is_refused(web: Node, tmp_path: Path) -> None:
    f = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0]
    boundary = uuid.uuid4().hex
    status, _h, data = _request(web, "POST", "/studies/1.2.3.4", _multipart([("application/dicom", f.read_bytes())],
                                                                             boundary),
                                {"Content-Type": f"multipart/related; type=application/dicom; boundary={boundary}"})
    assert status == 409
    assert json.loads(data)["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_hostile_requests_get_clear_refusals(web: Node, tmp_path: Path) -> None:
    f = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0]
    boundary = uuid.uuid4().hex
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    status, _h, data = _request(web, "POST", "/studies", f.read_bytes(), {"Content-Type": "application/dicom"})
    assert status == 415 and b"multipart/related" in data
    status, _h, data = _request(web, "POST", "/studies", b"--nope\r\ngarbage", {"Content-Type": ctype})
    assert status == 400, data
    unterminated = _multipart([("application/dicom", f.read_bytes())], boundary, close=False)
    status, _h, data = _request(web, "POST", "/studies", unterminated[:-200], {"Content-Type": ctype})
    assert status == 400 and b"closing boundary" in data
    many = "&".join(f"PatientID={i}" for i in range(10_000))
    status, _h, data = _request(web, "GET", f"/studies?{many}")
    assert status == 400 and b"query parameters" in data
    for bad in ("/studies/..%2F..%2Fetc%2Fpasswd", "/studies/1.2.3/series/../../../etc/passwd/instances/1",
                "/studies/%2e%2e/metadata"):
        status, _h, _d = _request(web, "GET", bad)
        assert status in (404, 400), (bad, status)
    status, _h, data = _request(web, "GET", "/studies?StudyDate=20201301")
    assert status == 400 and b"is not a DA value" in data
