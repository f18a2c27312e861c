"""Opening the index database: engine settings per backend and schema migration.

SQLite is the embedded default. It runs in WAL mode with synchronous=FULL, so
a committed row survives a power cut (NORMAL would only survive a crash of
the process). Write transactions (connections with the WRITE option, see
writer()) start with BEGIN IMMEDIATE, so that concurrent writers queue on the
busy timeout instead of failing with "database is locked" when a read
transaction tries to become a write one; read transactions start with a
plain BEGIN and, in WAL mode, never hold up a writer.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import ArchiveError
from dicomnode.storage.query.matching import fold

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 60_000
WRITE = "dicomnode_write"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_index_engine(url: str) -> Engine:
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=16)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        pool_size=16,
        max_overflow=16,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()
        # SQLite's lower() folds ASCII only; case-insensitive name matching must fold "Müller" too
        dbapi_conn.create_function("dn_fold", 1, _fold, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # on the driver's connection: through exec_driver_sql this one statement cost a store
        # 4% of the receiving process's time (py-spy)
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
        try:
            conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as exc:  # raised as SQLAlchemy's, as exec_driver_sql raised it
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

    return engine


def _fold(value: str | None) -> str | None:
    return None if value is None else fold(value)


def writer(engine: Engine) -> Engine:
    """The same engine and pool, for transactions that will write."""
    return engine.execution_options(**{WRITE: True})


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is there)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with writer(engine).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _first_opening(url: str) -> Iterator[None]:
    """Processes opening one SQLite file take turns (a lock file beside it) until it is migrated.

    Two `dicomnode import`s started at once on a new archive failed one time in five with
    "database is locked": switching a new file to WAL takes a lock SQLite does not wait for.
    PostgreSQL serialises Alembic's DDL itself.
    """
    path = make_url(url).database if is_sqlite(url) else None
    if not path or path == ":memory:":
        yield
        return
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Database:
    """The index database: its engine, read sessions, and write transactions.

    SQLite has one writer at a time and makes the others wait in a sleeping
    busy handler (1, 2, 5, 10 ... ms naps). Queueing our own threads on a
    lock, and our processes (receivers, worker, web side, CLI) on an flock of
    the lock file beside the index (polled every 0.2 ms, up to the busy
    timeout), hands the write lock over at once instead: two receiving
    processes storing side by side had each commit wait out naps. The kernel
    drops a dead process's flock. PostgreSQL needs no lock.
    """

    def __init__(self, url: str, must_exist: bool = False) -> None:
        self.url = url
        self.engine = create_index_engine(url)
        with _first_opening(url):
            if must_exist:
                with self.engine.connect() as conn:
                    if not inspect(conn).has_table("alembic_version"):
                        shown = make_url(url).render_as_string(hide_password=True)
                        raise ArchiveError(f"no archive index in {shown}")
            migrate(self.engine)
        self.dialect = self.engine.dialect.name
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)  # reads
        self.write_engine = writer(self.engine)
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if is_sqlite(url) else nullcontext())
        path = make_url(url).database if is_sqlite(url) else None
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644) \
            if path and path != ":memory:" else None
        if self._lock_fd is not None:
            weakref.finalize(self, os.close, self._lock_fd)
        self._kept: Connection | None = None  # writing_connection's, on SQLite

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """An ORM session in a write transaction, committed on a clean exit."""
        with self._write_lock, self._writer(), self._write_sessions.begin() as s:
            yield s

    @contextmanager
    def writing_connection(self) -> Iterator[Connection]:
        """A Core connection in a write transaction, committed on a clean exit.

        SQLite's writes in a process take turns on _write_lock anyway, so they share one
        connection kept open: checking one out of the pool and back in (with its reset) for each
        transaction was a tenth of the receiving process's time in a C-STORE (py-spy). A
        transaction that fails leaves that connection closed; the next one opens another.
        """
        if self._lock_fd is None:
            with self._write_lock, self.write_engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self._writer():
            if self._kept is None:
                self._kept = self.write_engine.connect()
            conn = self._kept
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                self._kept = None
                conn.close()
                raise

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """This process's turn to write a SQLite index (the class docstring)."""
        if self._lock_fd is None:
            yield
            return
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:  # short naps, never a blocking flock: a stuck writer must not hang stores for ever
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OperationalError("flock", None, TimeoutError(
                        f"the index is being written by another process for over {BUSY_TIMEOUT_MS // 1000} s")
                    ) from None
                time.sleep(0.0002)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
