"""`scripts/bench`: the benchmarks, side by side in one run (run as `python -m scripts.benchmarks`).

C-FIND latency (the node and Orthanc on the same 10,000-study index),
conversion (MP4 against GIF), ingest (the node, DCMTK storescp, Orthanc),
DICOMweb (the node and Orthanc's DICOMweb plugin; whether the web side slows DIMSE),
the cost of DICOM TLS against plain TCP, the viewer in Chromium, one node against two behind HAProxy,
C-GET and C-MOVE (the node, Orthanc, DCMTK dcmqrscp); on request (--only soak) a ten-minute kill -9
soak, (--only scale) 10k against 1M instances in PostgreSQL. --quick: the everyday subset, < 5 min.
Prints tables and writes bench-results/bench.json and a chart of the ratios, bench-results/bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchmarks import chart, convert, dicomweb, find, ingest, retrieve, scale, scaleout, soak, tls, viewer
from tests.support.proc import ROOT


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    ap.add_argument("--no-big", action="store_true", help="skip the 1 GB object")
    ap.add_argument("--orthanc-big", action="store_true", help="also send the 1 GB object to Orthanc (slow)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved runs of the with/without-analysis comparison")
    ap.add_argument("--only", choices=["ingest", "find", "convert", "dicomweb", "tls", "soak", "viewer", "scaleout", "retrieve", "scale"], help="run one part (default: all)")
    ap.add_argument("--find-studies", type=int, default=10_000, help="studies (of 10 instances) in the C-FIND index")
    ap.add_argument("--find-reps", type=int, default=5, help="repetitions of each C-FIND, per server")
    ap.add_argument("--soak-minutes", type=float, default=10.0, help="length of the kill -9 soak (--only soak)")
    ap.add_argument("--small", type=int, default=20_000, help="small (64x64) images of the ingest run over 4 associations")
    ap.add_argument("--scale-instances", type=int, default=1_000_000, help="instances in the index for --only scale")
    ap.add_argument("--quick", action="store_true",
                    help="everyday mode, under 5 minutes: ingest (no 1 GB object, 2,000 small images), C-FIND on "
                         "200 studies, retrieve; the other parts only with --only")
    args = ap.parse_args()
    if args.quick:
        args.no_big, args.small, args.reps, args.find_reps = True, 2000, 1, 3
        args.find_studies = min(args.find_studies, 200)
    quick_skip = args.quick and args.only is None

    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-", dir=ROOT / "bench-results"
                                 if (ROOT / "bench-results").is_dir() else None))
    try:
        results: dict[str, dict[str, float]] = {}
        if args.only in (None, "find") and shutil.which("Orthanc"):
            found = find.run(work, args.find_studies, args.find_reps)
            report(found, title=f"C-FIND, {args.find_studies} studies / {args.find_studies * 10} instances "
                                "(median ms of one query over its own association; ratio = dicomnode / orthanc)")
            results.update({f"find: {k}": v for k, v in found.items()})
            shutil.rmtree(work / "find-data", ignore_errors=True)
        if args.only in (None, "retrieve") and shutil.which("Orthanc") and shutil.which("dcmqrscp"):
            got = retrieve.run(work / "retrieve", max(args.reps, 3))
            report(got, title=f"retrieve: C-GET (getscu) and C-MOVE (movescu into storescp) of one "
                              f"{retrieve.IMAGES}-image CT study 512x512 (median s; ratio = dicomnode / other)")
            results.update({f"retrieve: {k}": v for k, v in got.items()})
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(work / "retrieve", ignore_errors=True)
        if args.only in (None, "convert") and not quick_skip:
            print("measuring conversion (200-frame 512x512 cine) ...", file=sys.stderr)
            conv = convert.run(work)
            report(conv, title="convert: MP4 (H.264) against GIF, same 200-frame cine loop")
            results.update({f"convert: {k}": v for k, v in conv.items()})
        if args.only in (None, "dicomweb") and shutil.which("Orthanc") and not quick_skip:
            web = dicomweb.run(work / "dicomweb")
            report(web, title="DICOMweb (ratio = dicomnode / orthanc; for images/s and MB/s higher is better)")
            results.update({f"dicomweb: {k}": v for k, v in web.items()})
            beside = dicomweb.dimse_beside_web(work / "beside", args.reps)
            report(beside, title="DIMSE beside the web side: 200 images by storescu (seconds, medians)")
            results.update({f"dicomweb: {k} (dimse beside web)": v for k, v in beside.items()})
            shutil.rmtree(work / "dicomweb", ignore_errors=True)
        if args.only in (None, "tls") and not quick_skip:
            cost = tls.run(work / "tls", args.reps)
            report(cost, title="DICOM TLS: the node over TLS against plain TCP, 300 CT images 512x512 by "
                              "storescu (median s; ratio = TLS / plain)")
            results.update({f"tls: {k}": v for k, v in cost.items()})
            shutil.rmtree(work / "tls", ignore_errors=True)
        if args.only in (None, "viewer") and Path(viewer.CHROMIUM).exists() and not quick_skip:
            got = viewer.run(work / "viewer", args.find_studies, reps=args.reps)
            report({"dicomnode": got["viewer"]}, title="viewer in headless Chromium: a 500-image CT series 512x512")
            report({"page": got["page"], "QIDO-RS alone": got["qido"]},
                   title=f"study list, {args.find_studies} studies: a search as the page shows it and the same "
                         "QIDO-RS request from Python (median ms)")
            results.update({f"viewer: {k}": v for k, v in got.items()})
            shutil.rmtree(work / "viewer", ignore_errors=True)
        if args.only in (None, "scaleout") and shutil.which("haproxy") and not quick_skip:
            got = scaleout.run(work / "scaleout", args.reps)
            report(got, title=f"scale-out: {scaleout.CLIENTS} storescu clients x {scaleout.PER_CLIENT} CT 512x512 "
                              "through HAProxy, one node against two on one PostgreSQL and archive (medians)")
            results.update({f"scaleout: {k}": v for k, v in got.items()})
            shutil.rmtree(work / "scaleout", ignore_errors=True)
        if args.only == "scale":  # a million rows in PostgreSQL: only when asked for
            got = scale.run(work / "scale", args.scale_instances, reps=args.find_reps)
            for label, figures in got.items():
                report({"dicomnode": figures}, title=f"scale, PostgreSQL: {label}")
            report({"1M / 10k": scale.ratios(got)}, title="scale: the figures at 1M over those at 10k "
                                                         "(goals: ingest >= 0.9, each C-FIND <= 2)")
            results.update({f"scale: {k}": v for k, v in got.items()})
            results["scale: ratios 1M / 10k"] = scale.ratios(got)
        if args.only == "soak":  # ten minutes: only when asked for
            got = soak.run(work / "soak", args.soak_minutes)
            report(got, title="soak: kill -9 every 30 s, four storescu clients and a findscu loop")
            results.update({f"soak: {k}": v for k, v in got.items()})
        if args.only in (None, "ingest"):
            got = ingest.run(work, args.no_big, args.orthanc_big, args.reps, args.small)
            report(got)
            results.update(got)
        _write(args.out, results)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _write(out: Path, results: dict[str, dict[str, float]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    out.write_text(json.dumps({"when": when, "results": results}, indent=2))
    print(f"written {out}", file=sys.stderr)
    png = chart.chart(results, out.with_suffix(".png"), when)
    if png is not None:
        print(f"written {png}", file=sys.stderr)


def report(results: dict[str, dict[str, float]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = list(dict.fromkeys(k for r in results.values() for k in r))
    t = Table(title=title or "ingest (seconds unless stated; ratio = dicomnode / other); "
                             "dicomnode analyses every image on arrival, 'no jobs' does not")
    t.add_column("metric")
    for name in results:
        t.add_column(name, justify="right")
    for m in metrics:
        cells = []
        mine = results.get("dicomnode", {}).get(m)
        for name, r in results.items():
            v = r.get(m)
            if v is None:
                cells.append("-")
            elif name == "dicomnode" or mine is None or not v:
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.2f} ({mine / v:.2f}x)")
        t.add_row(m, *cells)
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
