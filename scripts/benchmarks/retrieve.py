"""Retrieve: C-GET and C-MOVE of one 500-image CT study (512x512), the node beside Orthanc and DCMTK
dcmqrscp holding the same files.

getscu and movescu (DCMTK) ask each server for the study by StudyInstanceUID; a C-MOVE goes to
a DCMTK storescp (+B: written as received). Time is from the request to the final response,
alternating between the servers; the medians are compared. Every run checks that all 500
instances arrived.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts.benchmarks.servers import Server, start_node, start_orthanc
from tests.support.datagen import write_ct_series
from tests.support.net import free_port, wait_port
from tests.support.proc import DICOMNODE, ROOT

IMAGES = 500


def start_dcmqrscp(work: Path, files: list[Path], dest_port: int) -> Server:
    """dcmqrscp over its own storage area, the files indexed in place by dcmqridx."""
    db = work / "dcmqrscp"
    db.mkdir(parents=True)
    port = free_port()
    (work / "dcmqrscp.cfg").write_text(f"""NetworkTCPPort = {port}
MaxPDUSize = 16384
MaxAssociations = 16
HostTable BEGIN
dest = (DEST, 127.0.0.1, {dest_port})
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
DCMQRSCP {db} RW (2000, 4096mb) ANY
AETable END
""")
    for i in range(0, len(files), 200):
        subprocess.run(["dcmqridx", str(db), *map(str, files[i:i + 200])], check=True)
    proc = subprocess.Popen(["dcmqrscp", "-c", str(work / "dcmqrscp.cfg")],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return Server("dcmtk dcmqrscp", proc, port, "DCMQRSCP", db)


def start_dest(work: Path) -> tuple[subprocess.Popen, int, Path]:
    out = work / "dest"
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "+B", "--fork", "-aet", "DEST", "-od", str(out), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, out


def _clear(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()


def retrieve_s(srv: Server, tool: list[str], study: str, received: Path) -> float:
    """Seconds of one retrieve by a DCMTK tool (getscu into `received`, or movescu to DEST, which
    writes into `received`), checked to have delivered every image."""
    received.mkdir(parents=True, exist_ok=True)
    _clear(received)
    t0 = time.perf_counter()
    p = subprocess.run([*tool, "-S", "-aec", srv.aet, "127.0.0.1", str(srv.port), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study}"],
                       env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True)
    s = time.perf_counter() - t0
    got = len(list(received.iterdir()))
    if got != IMAGES:
        raise RuntimeError(f"{tool[0]} from {srv.name}: {got} of {IMAGES} images\n{p.stderr[-1000:]}")
    return s


def run(work: Path, reps: int) -> dict[str, dict[str, float]]:
    print(f"retrieve: generating a {IMAGES}-image CT study ...", file=sys.stderr)
    files = write_ct_series(work / "study", n=IMAGES, patient_id="RETRIEVE", seed=7)
    from pydicom import dcmread
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    dest_proc, dest_port, dest = start_dest(work)
    conf = work / "node.toml"
    conf.write_text(f'[remotes.DEST]\naet = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n'
                    'services = ["store"]\n')
    env = {**os.environ, "DICOMNODE_DEFAULT_ACTIONS": "", "DICOMNODE_MIN_FREE_MB": "0"}
    subprocess.run([*DICOMNODE, "import", str(work / "study"), "--storage", str(work / "node" / "node")],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    servers = [start_node(work / "node", actions="", config=conf)]
    try:
        servers.append(start_orthanc(work / "orthanc-run",
                                     extra={"DicomModalities": {"DEST": ["DEST", "127.0.0.1", dest_port]},
                                            "DicomAssociationCloseDelay": 0}))
        orthanc = servers[-1]
        subprocess.run(["storescu", "-aec", "ORTHANC", "+sd", "127.0.0.1", str(orthanc.port), str(work / "study")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(start_dcmqrscp(work, files, dest_port))
        times: dict[str, dict[str, list[float]]] = {s.name: {"C-GET, s": [], "C-MOVE, s": []} for s in servers}
        for _ in range(reps):
            for srv in servers:
                got = work / "got"
                times[srv.name]["C-GET, s"].append(retrieve_s(srv, ["getscu", "+B", "-od", str(got)], study, got))
                times[srv.name]["C-MOVE, s"].append(retrieve_s(srv, ["movescu", "-aem", "DEST"], study, dest))
        out = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
        return {"dicomnode": out.pop(servers[0].name), **out}
    finally:
        for srv in servers:
            srv.stop()
        dest_proc.terminate()
        dest_proc.wait()
        shutil.rmtree(work / "got", ignore_errors=True)
