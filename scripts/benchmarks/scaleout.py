"""Scale-out: one node against one node with two receiving processes ([network] receivers = 2)
and against two nodes sharing one PostgreSQL index and one archive, all behind HAProxy with
config/haproxy.cfg, on this machine; images/s over 8 concurrent associations.

Workload: 8 DCMTK storescu clients of 40 CT images 512x512 each (320 images, about 168 MB), all
through HAProxy (for one node both of HAProxy's servers are that node, so the path is the same).
Each run gets a fresh database and archive; one-node and two-node runs interleaved; medians.
After each run the archive must hold each image once, and every analysis job must have run once.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.support import postgres
from tests.support.datagen import write_ct_series
from tests.support.net import free_port, wait_port
from tests.support.node import Node
from tests.support.proc import ROOT, cli
from tests.support.wait import wait_for

CLIENTS, PER_CLIENT = 8, 40


def run(work: Path, reps: int = 3) -> dict[str, dict[str, float]]:
    folders = [work / "ct" / f"c{i}" for i in range(CLIENTS)]
    for i, folder in enumerate(folders):
        write_ct_series(folder, PER_CLIENT, patient_id=f"SO{i}", seed=i)
    server = postgres.server(work / "pg")
    setups = (("1 node", 1, 1), ("1 node, 2 receiving processes", 1, 2), ("2 nodes", 2, 1))
    rates: dict[str, list[float]] = {label: [] for label, _, _ in setups}
    try:
        for rep in range(reps):
            for label, count, receivers in setups:
                print(f"  rep {rep + 1}/{reps}: {label}", file=sys.stderr)
                with server.database() as url:
                    rates[label].append(_once(work / f"run-{rep}-{count}-{receivers}", url, count, receivers,
                                              folders))
    finally:
        server.stop()
    one = statistics.median(rates["1 node"])
    out = {f"{label}, images/s": round(statistics.median(r), 1) for label, r in rates.items()}
    out.update({f"{label} / 1 node": round(statistics.median(r) / one, 2) for label, r in rates.items()
                if label != "1 node"})
    return {"dicomnode": out}


def _once(work: Path, url: str, count: int, receivers: int, folders: list[Path]) -> float:
    storage = work / "archive"
    work.mkdir(parents=True, exist_ok=True)
    env = {"DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_LOG_LEVEL": "WARNING", "DICOMNODE_RECEIVERS": str(receivers)}
    nodes = [Node(storage, {**env, "DICOMNODE_NAME": f"node-{i}"}, ["--db", url]).start() for i in range(count)]
    port = free_port()
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "config" / "haproxy.cfg")],
                             env={**os.environ, "DICOM_BIND": f"127.0.0.1:{port}",
                                  "NODE_A": f"127.0.0.1:{nodes[0].port}", "NODE_B": f"127.0.0.1:{nodes[-1].port}"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 15)
        t0 = time.perf_counter()
        clients = [subprocess.Popen(["storescu", "-aec", "DICOMNODE", "+sd", "127.0.0.1", str(port), str(f)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for f in folders]
        for c in clients:
            _out, err = c.communicate()
            if c.returncode != 0:
                raise RuntimeError(f"storescu failed: {err[-300:]}")
        seconds = time.perf_counter() - t0
        total = CLIENTS * PER_CLIENT

        def jobs() -> list[dict[str, object]]:
            return json.loads(cli("jobs", "--storage", str(storage), "--db", url, "--limit", "5000",
                                  "--json").stdout)["jobs"]

        wait_for(lambda: sum(1 for j in jobs() if j["state"] == "done") == total, 300, 1.0, message="all analyses")
        held = json.loads(cli("stats", "--storage", str(storage), "--db", url, "--json").stdout)["instances"]
        once = all(j["attempts"] == 1 for j in jobs())
        if held != total or not once:
            raise RuntimeError(f"{held} instances held of {total}; every job run once: {once}")
        return total / seconds
    finally:
        proxy.terminate()
        proxy.wait(10)
        for n in nodes:
            n.stop()
        shutil.rmtree(work, ignore_errors=True)
