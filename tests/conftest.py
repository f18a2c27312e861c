"""Fixtures of the test suite (the helpers they use are in tests/support/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.node import Node

NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes (archives under tmp_path); each is stopped by PID at the end of the test."""
    nodes: list[Node] = []

    def factory(name: str = "archive", env: dict[str, str] | None = None, extra: list[str] | None = None,
                start: bool = True, web: bool = False) -> Node:
        n = Node(tmp_path / name, {"DICOMNODE_MIN_FREE_MB": "0", **(env or {})}, extra or [], web=web)
        nodes.append(n)
        return n.start() if start else n

    yield factory
    for n in nodes:
        n.stop()


@pytest.fixture
def node(make_node: NodeFactory) -> Node:
    return make_node()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[postgres.Server]:
    """A PostgreSQL server for the session: DICOMNODE_TEST_PG, else one on 127.0.0.1:5432, else a
    throwaway cluster in a temp folder (stopped and removed at the end)."""
    server = postgres.server(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: postgres.Server) -> Iterator[str]:
    """A database of its own for one test, dropped afterwards; its SQLAlchemy URL."""
    with pg_server.database() as url:
        yield url
