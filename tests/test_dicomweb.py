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
from tests.support.node import Node, storescu

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


def test_orderby_pages_in_sql_and_the_sending_ae(web: Node, loaded: dict, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """QIDO extensions of the viewer's study list: `orderby` (dcm4chee's), pages cut in SQL, and
    SourceApplicationEntityTitle as a study key (the calling AE titles of its instances)."""
    c: DICOMwebClient = loaded["client"]

    def names(**filters: str) -> list[str]:
        found = c.search_for_studies(search_filters=filters)
        return [(s["00100010"].get("Value") or [{}])[0].get("Alphabetic", "") for s in found]

    up, down = names(orderby="PatientName"), names(orderby="-PatientName")
    filled = [n for n in up if n]
    assert filled == sorted(filled) and up[len(filled):] == [""] * (len(up) - len(filled))  # empty names last
    assert [n for n in down if n] == sorted(filled, reverse=True)
    paged = [n for off in range(0, len(up), 2) for n in names(orderby="PatientName", limit="2", offset=str(off))]
    assert paged == up
    counts = [s["00201208"]["Value"][0] for s in c.search_for_studies(search_filters={"orderby": "-NumberOfStudyRelatedInstances"})]
    assert counts == sorted(counts, reverse=True)
    status, _, body = _request(web, "GET", "/studies?orderby=StudyComments")
    assert status == 400 and b"orderby" in body
    # the sending AE title (on a node of its own: the shared one's holdings are the other tests')
    other = make_node("sender", web=True)
    one = write_ct_series(tmp_path / "sent", n=1, rows=8, cols=8, patient_id="SENT1")
    two = write_ct_series(tmp_path / "sent2", n=1, rows=8, cols=8, patient_id="SENT2")
    assert storescu(other, *one, calling="SENDERX").returncode == 0
    assert storescu(other, *two, calling="OTHERAE").returncode == 0
    c = DICOMwebClient(url=other.dicomweb)
    found = c.search_for_studies(search_filters={"SourceApplicationEntityTitle": "SENDERX"})
    assert [s["00100020"]["Value"][0] for s in found] == ["SENT1"]
    assert found[0]["00020016"]["Value"] == ["SENDERX"]
    assert c.search_for_studies(search_filters={"SourceApplicationEntityTitle": "NOBODY"}) == []


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


# -- frames, rendered, thumbnails, WADO-URI -------------------------------------------------------


@pytest.fixture(scope="module")
def multiframe(loaded: dict, tmp_path_factory) -> dict:  # type: ignore[no-untyped-def]
    """A native multi-frame object and the same frames compressed as JPEG 2000 (lossless), stored."""
    from pydicom.uid import JPEG2000Lossless, generate_uid

    from tests.support.datagen import write_multiframe

    tmp = tmp_path_factory.mktemp("mf")
    native = write_multiframe(tmp / "native.dcm", frames=4, rows=32, cols=48, random=True)
    ds = dcmread(native)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(tmp / "j2k.dcm")
    c: DICOMwebClient = loaded["client"]
    c.store_instances([dcmread(native), dcmread(tmp / "j2k.dcm")])
    return {"native": native, "j2k": tmp / "j2k.dcm"}


def _uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_frames_uncompressed_and_as_stored(loaded: dict, multiframe: dict) -> None:
    import numpy as np

    c: DICOMwebClient = loaded["client"]
    for name in ("native", "j2k"):
        path = multiframe[name]
        pixels = dcmread(path).pixel_array
        got = c.retrieve_instance_frames(*_uids(path), frame_numbers=[2, 4],
                                         media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
        for frame, index in zip(got, (1, 3)):
            assert np.array_equal(np.frombuffer(frame, "<u2").reshape(pixels[index].shape), pixels[index]), name
    stored = c.retrieve_instance_frames(*_uids(multiframe["j2k"]), frame_numbers=[1], media_types=(("image/jp2",),))
    assert stored[0][:4] == b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream, sent as stored


def test_rendered_matches_convert(web: Node, loaded: dict, tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from tests.support.proc import cli

    ct = loaded["files"][0]
    c: DICOMwebClient = loaded["client"]
    png = c.retrieve_instance_rendered(*_uids(ct), media_types=("image/png",), params={"window": "40,400"})
    cli("convert", str(ct), "-o", str(tmp_path), "--format", "png", "--8bit", "--window", "40,400")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(tmp_path / f"{ct.stem}.png")))
    small = c.retrieve_instance_rendered(*_uids(ct), media_types=("image/jpeg",), params={"viewport": "8,8"})
    assert Image.open(io.BytesIO(small)).size == (8, 8)
    status, headers, body = _request(web, "GET", "/studies/{}/thumbnail".format(_uids(ct)[0]))
    assert status == 200 and headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(body)).size) <= 128
    status, _h, _b = _request(web, "GET", "/studies/{}/series/{}/instances/{}/rendered?window=wide".format(*_uids(ct)))
    assert status == 400


def test_wado_uri(web: Node, loaded: dict) -> None:
    st, se, sop = _uids(loaded["files"][0])
    query = f"/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={sop}"
    status, headers, body = _request(web, "GET", query + "&contentType=application/dicom")
    assert status == 200 and body == _stored_file(web, sop).read_bytes()
    status, headers, body = _request(web, "GET", query + "&contentType=image/jpeg&windowCenter=40&windowWidth=400")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert _request(web, "GET", query.replace("WADO", "WADX"))[0] == 400


# -- interoperability: Accept headers, gzip, CORS -------------------------------------------------


def test_accept_headers_as_viewers_write_them(web: Node, loaded: dict) -> None:
    st, se, sop = _uids(loaded["files"][0])
    path = f"/studies/{st}/series/{se}/instances/{sop}"
    for accept in ('multipart/related; type="application/dicom"', "multipart/related; type=application/dicom",
                   'image/jpeg;q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*',
                   "*/*", ""):
        status, headers, _b = _request(web, "GET", path, headers={"Accept": accept} if accept else {})
        assert status == 200 and headers["content-type"].startswith("multipart/related"), accept
    assert _request(web, "GET", path, headers={"Accept": "text/html"})[0] == 406


def test_json_is_gzipped_when_asked(web: Node, loaded: dict) -> None:
    import gzip

    plain = _request(web, "GET", "/studies")[2]
    status, headers, body = _request(web, "GET", "/studies", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(body)) == json.loads(plain)


def test_cors_only_for_configured_origins(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(web=True, env={"DICOMNODE_CORS_ORIGINS": "http://viewer.example"})
    allowed = _request(node, "OPTIONS", "/studies", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert allowed[0] == 204 and allowed[1]["access-control-allow-origin"] == "http://viewer.example"
    assert "Authorization" in allowed[1]["access-control-allow-headers"]
    assert _request(node, "OPTIONS", "/studies", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "GET"})[0] == 403
    got = _request(node, "GET", "/studies", headers={"Origin": "http://viewer.example"})
    assert got[0] == 200 and got[1]["access-control-allow-origin"] == "http://viewer.example"
    assert "access-control-allow-origin" not in _request(node, "GET", "/studies", headers={
        "Origin": "http://evil.example"})[1]


# -- access -----------------------------------------------------------------------------------------


def test_basic_and_bearer_authentication(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import base64
    import time

    import jwt

    from dicomnode.node.identity import hash_password
    from tests.support.toml import write_toml

    conf = write_toml(tmp_path / "basic.toml", {"web": {"auth": "basic", "users": [f"alice:{hash_password('pw')}"]}})
    node = make_node("basic", web=True, extra=["--config", str(conf)])
    status, headers, body = _request(node, "GET", "/studies")
    assert status == 401 and headers["www-authenticate"].startswith("Basic") and b"authentication required" in body
    wrong = base64.b64encode(b"alice:nope").decode()
    assert _request(node, "GET", "/studies", headers={"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(b"alice:pw").decode()
    assert _request(node, "GET", "/studies", headers={"Authorization": f"Basic {right}"})[0] == 200
    conf = write_toml(tmp_path / "bearer.toml", {"web": {"auth": "bearer", "jwt_secret": "s" * 32}})
    node = make_node("bearer", web=True, extra=["--config", str(conf)])
    token = jwt.encode({"sub": "viewer", "exp": int(time.time()) + 60}, "s" * 32, algorithm="HS256")
    assert _request(node, "GET", "/studies", headers={"Authorization": f"Bearer {token}"})[0] == 200
    expired = jwt.encode({"sub": "viewer", "exp": int(time.time()) - 60}, "s" * 32, algorithm="HS256")
    status, _h, body = _request(node, "GET", "/studies", headers={"Authorization": f"Bearer {expired}"})
    assert status == 401 and b"expired" in body


def test_beyond_loopback_needs_auth_or_a_decision(tmp_path: Path) -> None:
    from tests.support.proc import cli

    p = cli("serve", "--storage", str(tmp_path / "a"), "--port", "0", "--http-port", "0", "--http-host", "0.0.0.0",
            check=False, timeout=60)
    assert p.returncode == 2 and "needs [web] auth" in p.stderr


# -- side by side with Orthanc's DICOMweb plugin; DICOMweb remotes of the CLI -------------------------

# (level, our filters, Orthanc's filters where they must differ to mean the same)
QUERIES = [
    ("studies", {}, None),
    # names: Orthanc 1.10.1 with its DICOMweb plugin 1.7 matches no PatientName filter at all on these
    # (UTF-8, ISO_IR 192) objects, not even the exact name or "*": only the node's answer is checked
    ("studies", {"PatientName": "doe*"}, "differs"),
    ("studies", {"PatientID": "WEB1"}, None),
    ("studies", {"ModalitiesInStudy": "CT"}, None),
    ("studies", {"StudyDate": "20000101-20301231"}, None),
    ("series", {"Modality": "CT"}, None),
    ("instances", {}, None),
]


def test_qido_agrees_with_orthanc(loaded: dict, tmp_path: Path) -> None:
    """The same searches give the same sets of UIDs and the same counts; where Orthanc differs, the case says so."""
    from tests.support.peers import start_orthanc

    orthanc = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        theirs = DICOMwebClient(url=f"http://127.0.0.1:{orthanc.http_port}/dicom-web")
        theirs.store_instances([dcmread(f) for f in loaded["files"]])
        ours: DICOMwebClient = loaded["client"]
        unique = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}
        for level, filters, orthanc_filters in QUERIES:
            search = {"studies": "search_for_studies", "series": "search_for_series",
                      "instances": "search_for_instances"}[level]
            a = getattr(ours, search)(search_filters=filters)
            ours_uids = {x[unique[level]]["Value"][0] for x in a}
            if orthanc_filters == "differs":
                assert ours_uids == _stored_by(loaded, level, loaded["files"][:5]), (level, filters)
                continue
            b = getattr(theirs, search)(search_filters=orthanc_filters or filters)
            mine_from_orthanc = {x[unique[level]]["Value"][0] for x in b}
            # the node also holds what other tests of this module stored: compare on Orthanc's files only
            assert mine_from_orthanc <= ours_uids, (level, filters)
            assert {u for u in ours_uids if u in _stored_by(loaded, level)} == mine_from_orthanc, (level, filters)
            if level == "studies":
                counts_a = {x["0020000D"]["Value"][0]: x["00201208"]["Value"][0] for x in a}
                counts_b = {x["0020000D"]["Value"][0]: x["00201208"]["Value"][0] for x in b}
                assert {k: counts_a[k] for k in counts_b} == counts_b
    finally:
        orthanc.stop()


def _stored_by(loaded: dict, level: str, files: list[Path] | None = None) -> set[str]:
    attr = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID", "instances": "SOPInstanceUID"}[level]
    return {str(getattr(dcmread(f, stop_before_pixels=True), attr)) for f in (files or loaded["files"])}


def test_cli_find_and_send_through_a_dicomweb_remote(web: Node, loaded: dict, tmp_path: Path) -> None:
    from tests.support.proc import cli
    from tests.support.toml import write_toml

    conf = write_toml(tmp_path / "node.toml", {"remotes": {"WEBPACS": {"url": web.dicomweb}}})
    found = json.loads(cli("find", "WEBPACS", "-k", "PatientName=doe*", "--config", str(conf), "--json").stdout)
    assert [r["PatientID"] for r in found] == ["WEB1"]
    new = write_ct_series(tmp_path / "s", n=2, rows=8, cols=8, patient_id="WEB2")
    sent = json.loads(cli("send", "WEBPACS", *map(str, new), "--config", str(conf), "--json").stdout)
    assert sent["summary"] == {"success": 2, "warning": 0, "failed": 0}
    assert len(loaded["client"].search_for_studies(search_filters={"PatientID": "WEB2"})) == 1
    echo = cli("echo", "WEBPACS", "--config", str(conf), check=False)
    assert echo.returncode == 2 and "DICOMweb endpoint" in echo.stderr


@pytest.mark.slow
def test_a_gigabyte_goes_in_and_out_in_bounded_memory(make_node, tmp_path: Path) -> None:
    """STOW-RS of a 1 GB object (chunked), then WADO-RS of it: the node's processes stay small."""
    from tests.support.datagen import write_multiframe
    from tests.support.proc import peak_rss_mb

    node = make_node(web=True)
    big = write_multiframe(tmp_path / "big.dcm", random=False)
    size = big.stat().st_size
    boundary = uuid.uuid4().hex

    def body():  # type: ignore[no-untyped-def]
        yield b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
        with open(big, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield b"\r\n--" + boundary.encode() + b"--\r\n"

    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=600)
    conn.request("POST", "/dicom-web/studies", body=body(), encode_chunked=True, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    r = conn.getresponse()
    assert r.status == 200, r.read()[:500]
    r.read()
    uid = dcmread(big, stop_before_pixels=True)
    conn.request("GET", f"/dicom-web/studies/{uid.StudyInstanceUID}/series/{uid.SeriesInstanceUID}/instances/"
                 f"{uid.SOPInstanceUID}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    r = conn.getresponse()
    received = 0
    while chunk := r.read(1 << 20):
        received += len(chunk)
    conn.close()
    assert received > size
    rss = peak_rss_mb(node.proc.pid)
    assert rss < 200, f"peak RSS {rss:.0f} MB for a {size >> 20} MB object"
    print(f"\n1 GB STOW-RS + WADO-RS: peak RSS of the node's processes {rss:.0f} MB")


def test_multiframe_rendered_as_a_film(web: Node, multiframe: dict) -> None:
    path = "/studies/{}/series/{}/instances/{}/rendered".format(*_uids(multiframe["native"]))
    status, headers, body = _request(web, "GET", path, headers={"Accept": "video/mp4"})
    assert status == 200 and headers["content-type"] == "video/mp4" and body[4:8] == b"ftyp"
    status, headers, body = _request(web, "GET", path, headers={"Accept": "image/gif"})
    assert status == 200 and headers["content-type"] == "image/gif" and body[:6] == b"GIF89a"
    status, headers, body = _request(web, "GET", path, headers={"Accept": "image/png"})  # one picture: frame 1
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"


def test_https_when_configured(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ssl

    from tests.support.certs import Authority
    from tests.support.toml import write_toml

    ca = Authority(tmp_path / "pki")
    pair = ca.issue("web")
    conf = write_toml(tmp_path / "tls.toml", {"web": {"tls_cert": str(pair.cert), "tls_key": str(pair.key)}})
    node = make_node(web=True, extra=["--config", str(conf)])
    assert node.dicomweb.startswith("https://")
    trusted = ssl.create_default_context(cafile=str(ca.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", node.http_port, timeout=30, context=trusted)
    conn.request("GET", "/dicom-web/studies")
    assert conn.getresponse().status in (200, 204)
    conn.close()
    with pytest.raises(ssl.SSLError):  # a client that does not trust the CA does not get through
        strict = http.client.HTTPSConnection("127.0.0.1", node.http_port, timeout=30,
                                             context=ssl.create_default_context())
        strict.request("GET", "/dicom-web/studies")
    plain = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)  # plain HTTP is not served
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/dicom-web/studies")
        plain.getresponse()


def test_qido_fast_path_writes_what_the_general_one_writes(tmp_path: Path) -> None:
    """Matches from index rows alone are written straight to DICOM JSON; over every file pydicom ships
    and at every level, that JSON equals what the general path (a pydicom data set per match, as
    C-FIND builds it, then to_json) makes of the same rows."""
    from starlette.requests import Request

    from dicomnode.node.settings import Settings
    from dicomnode.node.web import dicomjson, qido
    from dicomnode.storage.archive import open_archive
    from dicomnode.storage.query.identifier import HeaderReader, build_response, iter_matches, parse_identifier
    from dicomnode.storage.query.sql import run
    from tests.support.datagen import pydicom_test_files
    from tests.support.proc import cli

    cli("import", *map(str, pydicom_test_files()), "--storage", str(tmp_path / "a"), check=False)
    arc = open_archive(tmp_path / "a", None)
    base = "http://node/dicom-web"
    compared = 0
    for level, query in (("STUDY", b"includefield=all"), ("SERIES", b"includefield=all"),
                         ("IMAGE", b"includefield=all"), ("STUDY", b"")):
        scope = {"type": "http", "query_string": query, "path_params": {}, "headers": []}
        ident = qido._identifier(level, Request(scope))["identifier"]
        req = parse_identifier(ident, "STUDY", Settings().pn_case_insensitive, hierarchical=False)
        plan = qido._plan(req)
        assert plan is not None, level
        with arc.db.engine.connect() as conn:
            for row, header in iter_matches(req, run(conn, req.query, arc.db.dialect), HeaderReader(arc.layout.root)):
                ds = build_response(req, row, header, "DICOMNODE")
                del ds.QueryRetrieveLevel, ds.RetrieveAETitle
                ds.RetrieveURL = qido._retrieve_url(base, req.query.level, row, ds)
                assert qido._row_json(plan, req, row, base) == dicomjson.to_json(ds), (level, row)
                compared += 1
    assert compared > 150
