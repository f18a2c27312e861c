"""What DICOM TLS costs: the same images stored by DCMTK storescu over plain TCP and over TLS.

Workload: 300 CT images 512x512 16-bit (about 157 MB), one association and
four at once, into a fresh node each run (so no run finds duplicates), plain
and TLS runs interleaved; the TLS runs use what DCMTK negotiates with a P-256 certificate,
made here. Figures are medians of wall-clock seconds; the cost is TLS / plain.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts.benchmarks.servers import Server, start_node
from tests.support.certs import Authority
from tests.support.datagen import write_ct_series
from tests.support.toml import write_toml


def _send(server: Server, groups: list[list[Path]], tls: list[str]) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", *tls, "-aec", server.aet, "+sd", "127.0.0.1", str(server.port),
                               *map(str, g)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for g in groups]
    for p in procs:
        _out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-500:]}")
    return time.perf_counter() - t0


def run(work: Path, reps: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds per workload: {"dicomnode" (over TLS): ..., "plain TCP": ...}."""
    ca = Authority(work / "pki")
    pair = ca.issue("node")
    conf = write_toml(work / "tls.toml", {"tls": {"cert": str(pair.cert), "key": str(pair.key), "port": 0}})
    folders = []
    for i in range(4):
        write_ct_series(work / "ct" / f"s{i}", 75, patient_id=f"TLS{i}", seed=i)
        folders.append(work / "ct" / f"s{i}")
    client = ["+tla", "+cf", str(ca.ca)]
    times: dict[str, dict[str, list[float]]] = {"dicomnode": {}, "plain TCP": {}}
    for rep in range(reps):
        for label, groups in (("300 images, 1 association", [folders]),
                              ("300 images, 4 associations", [[f] for f in folders])):
            for name, tls in (("plain TCP", False), ("dicomnode", True)):
                print(f"  rep {rep + 1}/{reps}: {label}, {'TLS' if tls else 'plain'}", file=sys.stderr)
                d = work / f"run-{rep}-{len(groups)}-{int(tls)}"
                srv = start_node(d, actions="", config=conf, tls=tls)
                try:
                    times[name].setdefault(label, []).append(_send(srv, groups, client if tls else []))
                finally:
                    srv.stop()
                    shutil.rmtree(d, ignore_errors=True)
    return {name: {label: statistics.median(v) for label, v in by.items()} for name, by in times.items()}
