"""Soak: kill -9 the node every 30 s for ten minutes while four storescu clients send and findscu queries.

What issue 18 asks to be shown: objects acknowledged against objects indexed
(every acknowledged one must be there), restarts, `check` after each restart
(clean without --repair), and the errors the clients saw. New objects every
round, so each kill can catch some between their rename and their commit.
Run as `python -m scripts.benchmarks --only soak` (`--soak-minutes` to shorten).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydicom import dcmread

from tests.support.datagen import write_ct_series
from tests.support.dimse import acknowledged
from tests.support.node import Node
from tests.support.proc import need

KILL_EVERY = 30.0


def _sender(node: Node, work: Path, client: int, stop: threading.Event, acked: set[Path], errors: list[str]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        files = write_ct_series(work / f"c{client}-{n}", n=60, rows=128, cols=128, patient_id=f"SOAK{client}",
                                seed=client * 100_000 + n)
        p = subprocess.run([need("storescu"), "-v", "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)],
                           capture_output=True, text=True, timeout=300)
        acked.update(acknowledged(p.stdout + p.stderr, files))
        if p.returncode != 0:
            errors.append(f"storescu {client}: exit {p.returncode}")
        if p.returncode != 0 and "Association Request Failed" in p.stdout + p.stderr:
            time.sleep(0.5)  # the node is restarting


def _finder(node: Node, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        p = subprocess.run([need("findscu"), "-aec", node.aet, "-S", "-k", "QueryRetrieveLevel=STUDY",
                            "-k", "PatientID=SOAK*", "-k", "StudyInstanceUID", "127.0.0.1", str(node.port)],
                           capture_output=True, text=True, timeout=120)
        counts["ok" if p.returncode == 0 else "failed"] += 1
        time.sleep(0.2)


def run(work: Path, minutes: float = 10.0) -> dict[str, dict[str, float]]:
    work.mkdir(parents=True, exist_ok=True)
    node = Node(work / "archive", {"DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_LOG_LEVEL": "WARNING"}, port=0)
    node.start()
    stop = threading.Event()
    acked: set[Path] = set()
    errors: list[str] = []
    queries = {"ok": 0, "failed": 0}
    threads = [threading.Thread(target=_sender, args=(node, work / "data", i, stop, acked, errors)) for i in range(4)]
    threads.append(threading.Thread(target=_finder, args=(node, stop, queries)))
    port = node.port
    restarts = unclean_checks = 0
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY)
            node.kill9()
            node.port = port  # the clients keep calling the same port
            node.start()
            restarts += 1
            chk = node.cli("check", "--json", "--quick", check=False)
            if chk.returncode != 0:
                unclean_checks += 1
                print(f"  check after restart {restarts}: {chk.stdout[-500:]}", file=sys.stderr)
            print(f"  restart {restarts}: {len(acked)} acknowledged so far", file=sys.stderr)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=600)
    indexed = {r["SOPInstanceUID"] for r in json.loads(node.cli("ls", "instances", "--json").stdout)}
    lost = [f for f in acked if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) not in indexed]
    full = node.cli("check", "--json", check=False)
    node.stop()
    return {"dicomnode": {
        "minutes": minutes, "restarts (kill -9)": restarts, "acknowledged": len(acked), "indexed": len(indexed),
        "acknowledged but lost": len(lost), "checks not clean after restart": unclean_checks,
        "final check with hashes (exit)": full.returncode, "storescu runs that failed": len(errors),
        "C-FIND ok": queries["ok"], "C-FIND failed (node down)": queries["failed"]}}
