"""A PostgreSQL server for the tests, without one having to be started by hand.

In this order: the server named by DICOMNODE_TEST_PG (a URL whose user may
create databases; the value `new` asks for a throwaway cluster), else one already listening on 127.0.0.1:5432 (CI machines
have one), else a throwaway cluster made with the Debian packages' initdb and
pg_ctl in a temp folder on a free port, run as an unprivileged user when the
tests run as root (PostgreSQL refuses root), and removed afterwards. Each user
of a server gets a database of its own (`Server.database`).
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import accepts, free_port

ENV = "DICOMNODE_TEST_PG"


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str | None = None
    cluster: Path | None = None  # a throwaway cluster's folder: stopped and removed by stop()
    run_as: str | None = None

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(self.url(database, "postgresql"), autocommit=True, connect_timeout=10)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for the caller, dropped afterwards; yields its SQLAlchemy URL."""
        name = f"dicomnode_test_{uuid.uuid4().hex[:10]}"
        with self.connect() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with self.connect() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.cluster is None:
            return
        _as_user(self.run_as, [_bin("pg_ctl"), "-D", str(self.cluster / "data"), "-m", "immediate", "-w", "stop"],
                 check=False)
        shutil.rmtree(self.cluster, ignore_errors=True)
        self.cluster = None


def server(scratch: Path) -> Server:
    """The server the tests use (see the module's docstring)."""
    pytest.importorskip("psycopg")
    configured = os.environ.get(ENV)
    if configured == "new":
        return throwaway()
    if configured:
        from sqlalchemy.engine import make_url

        u = make_url(configured)
        s = Server(u.host or "127.0.0.1", u.port or 5432, u.username or getpass.getuser(), u.password)
        _usable(s, f"{ENV}={configured}")
        return s
    if accepts(5432):
        for user in dict.fromkeys((getpass.getuser(), "postgres")):
            s = Server("127.0.0.1", 5432, user)
            try:
                _usable(s, "127.0.0.1:5432")
                return s
            except pytest.fail.Exception:
                continue
    return throwaway()


def _usable(s: Server, where: str) -> None:
    import psycopg

    try:
        with s.connect():
            pass
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {where} is not usable as {s.user}: {exc}")


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"no PostgreSQL server running and no {tool} to start one; "
                    "scripts/setup installs it (apt-get install postgresql)")
    return path


def _as_user(user: str | None, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *cmd] if user else cmd
    p = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def throwaway() -> Server:
    """initdb + pg_ctl in a new temp folder, on a free loopback port, trust authentication."""
    user = None
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.fail("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))  # /tmp: reachable by that user
    if user:
        shutil.chown(folder, user)
    data, port = folder / "data", free_port()
    _as_user(user, [_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
    _as_user(user, [_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    s = Server("127.0.0.1", port, "postgres", cluster=folder, run_as=user)
    _usable(s, f"the throwaway cluster in {folder}")
    return s


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
