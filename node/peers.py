"""Naming a remote DICOM node the way dcm4che's tools do: AET@host:port."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Peer:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """Parse AET@host:port (IPv6 hosts in brackets); ValueError with the expected form otherwise."""
    m = _PEER.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"{text!r} is not AET@host:port (e.g. ORTHANC@127.0.0.1:4242)")
    return Peer(m["aet"], m["host"].strip("[]"), int(m["port"]))
