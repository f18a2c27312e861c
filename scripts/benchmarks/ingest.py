"""Ingest benchmark: the node side by side with DCMTK storescp and Orthanc, in one run.

Workload: 500 CT images 512x512 16-bit (5 patients, 10 studies), sent by
DCMTK storescu over one association, four and sixteen at once; 20,000 small
(64x64) images over four; then one generated 1 GB, 1000-frame object, for
time and the receiver's peak RSS.
Figures are wall-clock seconds on this machine; compare the ratios.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scripts.benchmarks.servers import Server, start_node, start_orthanc, start_storescp
from tests.support.datagen import write_ct_series, write_multiframe
from tests.support.proc import peak_rss_mb
from tests.support.wait import wait_for


def storescu(server: Server, paths: list[Path]) -> subprocess.Popen:
    """DCMTK storescu with Nagle off (TCP_NODELAY=1, as the receivers): with it on, small objects
    waited on delayed ACKs and every receiver, storescp included, topped out at ~90 images/s."""
    return subprocess.Popen(["storescu", "-aec", server.aet, "+sd", "127.0.0.1", str(server.port),
                             *map(str, paths)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})


def timed_send(server: Server, groups: list[list[Path]]) -> float:
    t0 = time.perf_counter()
    procs = [storescu(server, g) for g in groups]
    for p in procs:
        _out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu into {server.name} failed: {err[-500:]}")
    return time.perf_counter() - t0


def make_workload(work: Path) -> list[Path]:
    """500 CT images over 5 patients and 10 studies, in 4 folders for the 4-association run."""
    folders = []
    for s in range(10):
        d = work / "ct" / f"study{s:02d}"
        write_ct_series(d, n=50, patient_id=f"BENCH{s // 2}", seed=s)
        folders.append(d)
    return folders


def queue_drained_after(srv: Server, since: float, timeout: float = 300) -> float | None:
    """Seconds from `since` until the node's job queue is empty (None for other servers)."""
    db = srv.folder / "index.sqlite"
    if srv.name != "dicomnode" or not db.exists():
        return None
    import sqlite3

    def drained() -> bool:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')").fetchone()[0] == 0

    try:
        wait_for(drained, timeout, 0.1, message="the job queue to drain")
    except AssertionError:
        return None
    return time.perf_counter() - since


def run_target(name: str, start: Callable[..., Server], work: Path, folders: list[Path],
               big: Path | None, small: list[Path] | None = None) -> dict[str, float]:
    res: dict[str, float] = {}
    slug = re.sub(r"[^a-z0-9]+", "-", name)
    files = sorted(f for d in folders for f in d.iterdir())
    runs: list[tuple[str, list[list[Path]]]] = [
        ("500 images, 1 association", [folders]),
        ("500 images, 4 associations", [folders[0:3], folders[3:5], folders[5:8], folders[8:10]]),
        ("500 images, 16 associations", [files[i::16] for i in range(16)])]
    for label, groups in runs:
        d = work / f"{slug}-{len(groups)}"
        srv = start(d)
        try:
            t0 = time.perf_counter()
            res[label] = timed_send(srv, groups)
            drained = queue_drained_after(srv, t0)
            if drained is not None and len(groups) == 1:
                res["500 images analysed, s after first byte"] = drained
        finally:
            srv.stop()
    if small:
        d = work / f"{slug}-small"
        srv = start(d)
        try:
            count = sum(1 for folder in small for _ in folder.iterdir())
            res[f"{count} small images (64x64), 4 associations, images/s"] = count / timed_send(srv, [[f] for f in small])
        finally:
            srv.stop()
        shutil.rmtree(d, ignore_errors=True)
    if big is not None:
        d = work / f"{slug}-big"
        srv = start(d, False)
        try:
            res["1 GB object, s"] = timed_send(srv, [[big]])
            res["1 GB object, peak RSS MB"] = peak_rss_mb(srv.proc.pid)
        finally:
            srv.stop()
    shutil.rmtree(work / f"{slug}-1", ignore_errors=True)
    return res


def pipeline_cost(work: Path, folders: list[Path], reps: int) -> dict[str, float]:
    """500 images over one association into the node with and without on-arrival jobs.

    Runs alternate and the medians are compared, because single runs on a
    small shared machine vary by more than the difference being measured.
    """
    runs: dict[str, list[float]] = {"analyze": [], "": []}
    for rep in range(reps):
        for actions in ("analyze", ""):
            d = work / f"cost-{rep}-{actions or 'none'}"
            srv = start_node(d, actions=actions)
            try:
                runs[actions].append(timed_send(srv, [folders]))
            finally:
                srv.stop()
            shutil.rmtree(d, ignore_errors=True)
    with_jobs, without = statistics.median(runs["analyze"]), statistics.median(runs[""])
    print(f"  with analysis {sorted(round(x, 2) for x in runs['analyze'])}, "
          f"without {sorted(round(x, 2) for x in runs[''])}: median cost {with_jobs / without - 1:+.1%}",
          file=sys.stderr)
    return {"500 images, 1 association (median)": without,
            "500 images, 1 association, with analysis (median)": with_jobs,
            "on-arrival analysis cost, %": 100 * (with_jobs / without - 1)}


def make_small(work: Path, count: int) -> list[Path]:
    """`count` 64x64 CT images in 4 folders (one per association), 4 patients."""
    folders = []
    for i in range(4):
        d = work / "small" / f"part{i}"
        write_ct_series(d, n=count // 4, patient_id=f"SMALL{i}", rows=64, cols=64, seed=100 + i)
        folders.append(d)
    return folders


def run(work: Path, no_big: bool, orthanc_big: bool, reps: int, small: int = 20_000) -> dict[str, dict[str, float]]:
    print("generating workload ...", file=sys.stderr)
    folders = make_workload(work)
    small_folders = make_small(work, small) if small else None
    big = None if no_big else write_multiframe(work / "big.dcm", random=False)
    targets: list[tuple[str, Callable[..., Server], bool]] = [
        ("dicomnode", start_node, True), ("storescp", start_storescp, True)]
    if shutil.which("Orthanc"):
        targets.append(("orthanc", start_orthanc, orthanc_big))
    results: dict[str, dict[str, float]] = {}
    for name, start, with_big in targets:
        print(f"measuring {name} ...", file=sys.stderr)
        results[name] = run_target(name, start, work, folders, big if with_big else None, small_folders)
    print("measuring what on-arrival analysis costs the sender ...", file=sys.stderr)
    results["dicomnode, no jobs"] = pipeline_cost(work, folders, reps)
    return results
