"""Other DICOM nodes for the tests, started on free loopback ports and stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port, wait_port
from tests.support.proc import need, run


@dataclass
class Peer:
    name: str
    proc: subprocess.Popen
    port: int
    aet: str
    folder: Path
    http_port: int = 0

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(folder: Path, aet: str = "ORTHANC", modalities: dict[str, list] | None = None,
                  port: int | None = None, dicomweb: bool = False) -> Peer:
    """Orthanc with a generated configuration; `modalities` registers peers (name -> [AET, host, port])."""
    need("Orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    port, http = port or free_port(), free_port()
    conf = {"Name": "test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "DicomAet": aet, "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            "StorageCompression": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomModalities": modalities or {}, "StableAge": 1}
    if dicomweb:  # its DICOMweb plugin at http://127.0.0.1:HTTP/dicom-web/
        if not Path(ORTHANC_DICOMWEB).exists():
            pytest.fail("Orthanc's DICOMweb plugin is missing; scripts/setup installs it (apt-get install orthanc-dicomweb)")
        conf["Plugins"] = [ORTHANC_DICOMWEB]
        conf["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                            "SeriesMetadata": "Full"}
    (folder / "orthanc.json").write_text(json.dumps(conf))
    log = open(folder / "orthanc.log", "w")
    proc = subprocess.Popen(["Orthanc", "--verbose", str(folder / "orthanc.json")], stdout=log, stderr=log)
    wait_port(port)
    wait_port(http)
    return Peer("orthanc", proc, port, aet, folder, http)


def start_storescp(folder: Path, aet: str = "STORESCP", extra: list[str] | None = None) -> Peer:
    """DCMTK storescp writing what it receives bit for bit (+B) into folder."""
    need("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder.parent / f"{folder.name}-storescp.log", "w")
    proc = subprocess.Popen(["storescp", "-aet", aet, "+B", "-od", str(folder), *(extra or []), str(port)],
                            stdout=log, stderr=log, env={**os.environ})
    wait_port(port)
    return Peer("storescp", proc, port, aet, folder)


def store_into(peer: Peer, files: list[Path]) -> None:
    need("storescu")
    run(["storescu", "-aec", peer.aet, "127.0.0.1", str(peer.port), *map(str, files)], check=True, timeout=300)


def start_dcmqrscp(folder: Path, aet: str = "DCMQR", hosts: dict[str, tuple[str, int]] | None = None) -> Peer:
    """DCMTK dcmqrscp serving (and accepting C-STORE into) one storage area.

    hosts: move destinations it knows, symbolic name -> (AE title, port) on 127.0.0.1.
    """
    need("dcmqrscp")
    area = folder / "db"
    area.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_lines = "\n".join(f"{name} = ({title}, 127.0.0.1, {p})" for name, (title, p) in (hosts or {}).items())
    (folder / "dcmqrscp.cfg").write_text(f"""NetworkTCPPort = {port}
MaxPDUSize = 16384
MaxAssociations = 16
HostTable BEGIN
{host_lines}
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{aet} {area} RW (200, 1024mb) ANY
AETable END
""")
    log = open(folder / "dcmqrscp.log", "w")
    proc = subprocess.Popen(["dcmqrscp", "-c", str(folder / "dcmqrscp.cfg"), "--disable-host-lookup"],
                            stdout=log, stderr=log, cwd=folder)
    wait_port(port)
    return Peer("dcmqrscp", proc, port, aet, area)
