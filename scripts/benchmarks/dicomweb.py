"""DICOMweb: the node's web side and Orthanc's DICOMweb plugin, side by side in one run.

Workload, generated here: 1,000 small studies (one instance each, loaded by
`dicomnode import` and storescu: loading is not measured) and two studies of
500 CT images 512x512 16-bit. Measured, alternating between the servers:

- STOW-RS of the first CT study by one client, of the second by four at once
  (requests of 50 instances, `multipart/related; type="application/dicom"`,
  bodies streamed from the files with a Content-Length), images/s;
- QIDO-RS study search with 1 match (AccessionNumber) and with 1,000 matches
  (`PatientID=PID*`), median ms of the whole answer;
- WADO-RS retrieve of the 500-image study (`transfer-syntax=*`: the stored
  bytes), MB/s of the multipart body read to the end;
- `/rendered` of one 512x512 CT frame as JPEG, median ms.

Then whether the web side slows the DIMSE side: 200 CT images by storescu into
a node without its web side, with it idle, and with it answering WADO-RS
retrieves in a loop, runs interleaved, medians compared.

One HTTP client for both servers (http.client, a connection per client), so
the client's own cost is the same on each side.
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread

from scripts.benchmarks import find
from scripts.benchmarks.ingest import timed_send
from scripts.benchmarks.servers import Server, start_node, start_orthanc
from tests.support.datagen import write_ct_series

BATCH = 50  # instances per STOW request
RETRIEVE = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _conn(srv: Server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=600)


def _get(conn: http.client.HTTPConnection, path: str, accept: str) -> tuple[int, int]:
    """GET and read the body to the end in chunks; (status, bytes)."""
    conn.request("GET", "/dicom-web" + path, headers={"Accept": accept})
    r = conn.getresponse()
    n = 0
    while chunk := r.read(1 << 20):
        n += len(chunk)
    return r.status, n


def _stow(conn: http.client.HTTPConnection, paths: list[Path]) -> None:
    boundary = uuid.uuid4().hex
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in paths]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, paths)) + len(tail)

    def body() -> Iterator[bytes]:
        for h, p in zip(heads, paths):
            yield h
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield tail

    conn.request("POST", "/dicom-web/studies", body=body(), headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length), "Accept": "application/dicom+json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"STOW answered {r.status}")


def stow(srv: Server, groups: list[list[Path]]) -> float:
    """Each group sent by its own client (thread), in requests of BATCH instances; seconds."""
    errors: list[BaseException] = []

    def client(paths: list[Path]) -> None:
        try:
            conn = _conn(srv)
            for i in range(0, len(paths), BATCH):
                _stow(conn, paths[i:i + BATCH])
            conn.close()
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(g,)) for g in groups]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"STOW into {srv.name}: {errors[0]}")
    return time.perf_counter() - t0


def _median_ms(srv: Server, path: str, accept: str, reps: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(reps):
        conn = _conn(srv)
        t0 = time.perf_counter()
        status, size = _get(conn, path, accept)
        times.append((time.perf_counter() - t0) * 1000)
        conn.close()
        if status != 200:
            raise RuntimeError(f"{srv.name} answered {status} to {path}")
    return statistics.median(times), size


def _count_json(srv: Server, path: str) -> int:
    import json

    conn = _conn(srv)
    conn.request("GET", "/dicom-web" + path, headers={"Accept": "application/dicom+json"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return len(json.loads(body)) if r.status == 200 and body else 0


def run(work: Path, reps: int = 5) -> dict[str, dict[str, float]]:
    print("generating 1,000 small studies and 2 x 500 CT images ...", file=sys.stderr)
    recs = find.generate(work / "small", 1000, series=1, per_series=1)
    ct = [write_ct_series(work / f"ct{i}", n=500, patient_id=f"WEB{i}", seed=i) for i in range(2)]
    study = str(dcmread(ct[0][0], stop_before_pixels=True).StudyInstanceUID)
    series = str(dcmread(ct[0][0], stop_before_pixels=True).SeriesInstanceUID)
    sop = str(dcmread(ct[0][250], stop_before_pixels=True).SOPInstanceUID)
    find.load_node(work / "small", work / "node" / "node")
    node = start_node(work / "node", actions="", web=True)
    node.name = "dicomnode"  # on-arrival jobs off, as Orthanc has none
    orthanc = start_orthanc(work / "orth", dicomweb=True)
    servers = [node, orthanc]
    results: dict[str, dict[str, float]] = {"dicomnode": {}, "orthanc": {}}
    try:
        find.load_orthanc(work / "small", orthanc.port)
        one_client, four = [ct[0]], [ct[1][i::4] for i in range(4)]
        for label, groups in (("STOW-RS 500 images, 1 client", one_client),
                              ("STOW-RS 500 images, 4 clients", four)):
            for srv in servers:
                s = stow(srv, groups)
                results[srv.name][f"{label}, images/s"] = 500 / s
                print(f"  {label}: {srv.name} {500 / s:.0f} images/s", file=sys.stderr)
        acc = recs[len(recs) // 2]["AccessionNumber"]
        for label, path in (("QIDO studies, 1 match", f"/studies?AccessionNumber={acc}"),
                            ("QIDO studies, 1,000 matches", "/studies?PatientID=PID*")):
            for srv in servers:
                _median_ms(srv, path, "application/dicom+json", 1)  # warm
            for srv in servers:
                ms, _size = _median_ms(srv, path, "application/dicom+json", reps)
                results[srv.name][f"{label}, ms"] = ms
                results[srv.name][f"{label}, matches"] = _count_json(srv, path)
            print(f"  {label}: " + ", ".join(f"{s.name} {results[s.name][label + ', ms']:.1f} ms "
                                             f"({results[s.name][label + ', matches']:.0f})" for s in servers),
                  file=sys.stderr)
        for srv in servers:
            ms, size = _median_ms(srv, f"/studies/{study}", RETRIEVE, max(2, reps // 2))
            results[srv.name]["WADO-RS study of 500 images, MB/s"] = size / 1e6 / (ms / 1000)
            results[srv.name]["WADO-RS study of 500 images, MB"] = size / 1e6
            print(f"  WADO-RS: {srv.name} {size / 1e6 / (ms / 1000):.0f} MB/s ({size / 1e6:.0f} MB)", file=sys.stderr)
        for srv in servers:
            _median_ms(srv, f"/studies/{study}/series/{series}/instances/{sop}/rendered", "image/jpeg", 1)
        for srv in servers:
            ms, _size = _median_ms(srv, f"/studies/{study}/series/{series}/instances/{sop}/rendered",
                                   "image/jpeg", reps * 4)
            results[srv.name]["/rendered 512x512 CT as JPEG, ms"] = ms
            print(f"  /rendered: {srv.name} {ms:.1f} ms", file=sys.stderr)
    finally:
        node.stop()
        orthanc.stop()
    shutil.rmtree(work / "small", ignore_errors=True)
    return results


def dimse_beside_web(work: Path, reps: int = 3) -> dict[str, dict[str, float]]:
    """200 CT images by storescu into a fresh node: without web, web idle, web busy (WADO-RS loop)."""
    print("measuring whether the web side slows DIMSE ...", file=sys.stderr)
    images = write_ct_series(work / "dimse", n=200, patient_id="DIMSE1", seed=9)
    load = write_ct_series(work / "webload", n=100, patient_id="LOAD1", seed=8)
    load_study = str(dcmread(load[0], stop_before_pixels=True).StudyInstanceUID)
    runs: dict[str, list[float]] = {"no web": [], "web idle": [], "web busy": []}
    served = []
    for rep in range(reps):
        for label in runs:
            d = work / f"beside-{rep}-{label.replace(' ', '-')}"
            srv = start_node(d, actions="", web=label != "no web")
            stop = threading.Event()
            loop = None
            try:
                if label == "web busy":
                    stow(srv, [load])
                    count = [0]

                    def hammer(srv: Server = srv, count: list[int] = count) -> None:
                        conn = _conn(srv)
                        while not stop.is_set():
                            _get(conn, f"/studies/{load_study}", RETRIEVE)
                            count[0] += 1
                        conn.close()

                    loop = threading.Thread(target=hammer)
                    loop.start()
                    time.sleep(0.5)
                runs[label].append(timed_send(srv, [images]))
                if loop is not None:
                    stop.set()
                    loop.join()
                    served.append(count[0])
            finally:
                stop.set()
                srv.stop()
            shutil.rmtree(d, ignore_errors=True)
    out = {label: statistics.median(v) for label, v in runs.items()}
    base = out["no web"]
    print("  " + ", ".join(f"{k} {v:.2f} s ({v / base:.2f}x)" for k, v in out.items())
          + f"; studies retrieved meanwhile {served}", file=sys.stderr)
    return {"dicomnode": {f"200 images by storescu, {k}, s": v for k, v in out.items()}
            | {"web idle / no web": out["web idle"] / base, "web busy / no web": out["web busy"] / base}}
