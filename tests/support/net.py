"""Loopback ports for the servers that tests and benchmarks start."""

from __future__ import annotations

import socket

from tests.support.wait import wait_for


def free_port() -> int:
    """A TCP port free on loopback right now (the caller starts its server on it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on the port."""
    wait_for(lambda: accepts(port), timeout, message=f"a listener on port {port}")
