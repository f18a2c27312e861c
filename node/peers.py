"""Naming a remote DICOM node the way dcm4che's tools do: AET@host:port, and how to reach it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomnode.node.settings import Remote, Settings

_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class TlsClient:
    """What this node needs to call a peer over DICOM TLS: the CAs it trusts for the peer's
    certificate (empty = the system's), its own certificate for mutual TLS (may be empty)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    min_version: str = "1.2"

    @classmethod
    def of(cls, s: Settings) -> TlsClient:
        return cls(s.tls_ca, s.tls_cert, s.tls_key, s.tls_min_version)


@dataclass(frozen=True)
class Peer:
    aet: str
    host: str
    port: int
    tls: TlsClient | None = None  # None: plain TCP

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


def parse_peer(text: str) -> Peer:
    """Parse AET@host:port (IPv6 hosts in brackets); ValueError with the expected form otherwise."""
    m = _PEER.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"{text!r} is not AET@host:port (e.g. ORTHANC@127.0.0.1:4242)")
    return Peer(m["aet"], m["host"].strip("[]"), int(m["port"]))


def remote_peer(remote: Remote, s: Settings) -> Peer:
    """A configured DIMSE remote as a peer, over TLS when it says tls = true."""
    return Peer(remote.aet, remote.host, remote.port, TlsClient.of(s) if remote.tls else None)
