"""The receivers the benchmarks compare, started the same way for every benchmark: the node,
DCMTK storescp and Orthanc (both with TCP_NODELAY=1), on free loopback ports, stopped by PID."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.support.net import free_port, wait_port
from tests.support.peers import ORTHANC_DICOMWEB, Peer
from tests.support.proc import DICOMNODE, ROOT

Server = Peer  # a started receiver: name, process, port, AE title, storage folder; stop()


def start_node(work: Path, concurrent: bool = True, actions: str = "analyze", web: bool = False,
               config: Path | None = None, tls: bool = False) -> Server:
    """The node; with `web`, its DICOMweb side too (on a free port: Server.http_port); with `tls`
    (a `config` with [tls]), Server.port is its TLS port."""
    storage = work / "node"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_LOG_LEVEL": "WARNING",
           "DICOMNODE_DEFAULT_ACTIONS": actions}
    proc = subprocess.Popen([*DICOMNODE, "serve", "--storage", str(storage), "--host",
                             "127.0.0.1", "--port", "0", "--aet", "DICOMNODE",
                             *(["--http-port", "0"] if web else ["--no-web"]),
                             *(["--config", str(config)] if config else [])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=(work / "node.log").open("ab"), text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if tls:
        line = proc.stdout.readline()  # type: ignore[union-attr]  # "dicomnode listening with TLS on ..."
    m = re.search(r":(\d+) as", line)
    if not m:
        raise RuntimeError(f"node did not start: {line!r}")
    http = 0
    if web:
        w = re.search(r"dicomnode web on https?://\S+:(\d+)/", proc.stdout.readline())  # type: ignore[union-attr]
        if not w:
            raise RuntimeError("the node's web side did not start")
        http = int(w.group(1))
    return Server("dicomnode" if actions else "dicomnode, no jobs", proc, int(m.group(1)), "DICOMNODE", storage,
                  http)


def start_storescp(work: Path, concurrent: bool = True) -> Server:
    """+B writes data sets straight to disk (bit-preserving, as the node does); --fork serves
    associations at once, and without it the one process we measure RSS of does the work."""
    out = work / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "+B", *(["--fork"] if concurrent else []), "-aet", "STORESCP", "-od", str(out), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return Server("dcmtk storescp", proc, port, "STORESCP", out)


def start_orthanc(work: Path, concurrent: bool = True, dicomweb: bool = False,
                  extra: dict | None = None) -> Server:
    """Orthanc; with `dicomweb`, its DICOMweb plugin at http://127.0.0.1:HTTP/dicom-web/; `extra`:
    more configuration (DicomModalities ...)."""
    storage = work / "orthanc"
    storage.mkdir(parents=True)
    port, http = free_port(), free_port()
    conf: dict = {"Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
                  "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
                  "StorageCompression": False, "ConcurrentJobs": 2, "DicomThreadsCount": 4,
                  "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
                  "DicomAlwaysAllowMove": True}
    conf.update(extra or {})
    if dicomweb:
        if not Path(ORTHANC_DICOMWEB).exists():
            raise RuntimeError("Orthanc's DICOMweb plugin is missing (scripts/setup --with-orthanc installs it)")
        conf["Plugins"] = [ORTHANC_DICOMWEB]
        conf["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    (work / "orthanc.json").write_text(json.dumps(conf))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    wait_port(http)
    return Server("orthanc", proc, port, "ORTHANC", storage, http)
