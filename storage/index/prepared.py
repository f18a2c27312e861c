"""The statements every stored object runs, compiled once and run on the driver's own cursor.

SQLAlchemy Core spends about 100 µs of Python building, caching and running
one statement; the driver (sqlite3, psycopg) runs the same statement in about
10 µs. A store runs seven or eight of them, so SQLAlchemy's share was most of
the index's time per C-STORE (1.6 ms a store on SQLite, of which 0.6 ms the
commit's fsync). These statements are still written with SQLAlchemy and
compiled by it for the engine's dialect, so the SQL is what SQLAlchemy would
send; each value is bound through its column type's own bind processor, so
what is stored is what SQLAlchemy would store (SQLite keeps a datetime as
text in SQLAlchemy's format, and readers compare those strings).

The driver's exceptions are raised as SQLAlchemy's (IntegrityError and the
rest), so callers handle one kind whichever way a statement ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ClauseElement, Connection, Dialect, Table, bindparam, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    """One Core statement compiled for a dialect, with its parameters' order and bind processors."""

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
        self.sql = str(compiled)
        self.positional = compiled.positional
        names = list(compiled.positiontup or []) if self.positional else list(compiled.binds)
        if not self.positional and any(compiled.escaped_bind_names.get(n, n) != n for n in names):
            raise ValueError(f"bind names that need escaping: {names}")  # none of ours do
        self.names = names
        # (name, processor) for the parameters whose type converts values (SQLite's DateTime)
        self.processors: list[tuple[str, Callable[[Any], Any]]] = []
        for name in dict.fromkeys(names):
            proc = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.processors.append((name, proc))

    def args(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        if self.processors:
            params = dict(params)
            for name, proc in self.processors:
                params[name] = proc(params[name])
        if self.positional:
            return tuple(params[n] for n in self.names)
        return dict(params) if not isinstance(params, dict) else params


class Cursor:
    """A driver cursor in a Connection's transaction, running Prepared statements."""

    def __init__(self, conn: Connection) -> None:
        self.connection = conn  # for the statements that are not prepared
        self._error = conn.dialect.loaded_dbapi.Error
        self._cursor = conn.connection.cursor()

    def run(self, stmt: Prepared, params: Mapping[str, Any] = {}) -> Any:
        """Execute; returns the driver cursor (fetchone/fetchall on it)."""
        args = stmt.args(params)
        try:
            self._cursor.execute(stmt.sql, args)
        except self._error as exc:
            raise DBAPIError.instance(stmt.sql, args, exc, self._error) from exc
        return self._cursor

    def run_many(self, stmt: Prepared, params: list[dict[str, Any]]) -> None:
        rows = [stmt.args(p) for p in params]
        try:
            self._cursor.executemany(stmt.sql, rows)  # type: ignore[arg-type]
        except self._error as exc:
            raise DBAPIError.instance(stmt.sql, rows, exc, self._error) from exc

    def scalar(self, stmt: Prepared, params: Mapping[str, Any] = {}) -> Any:
        row = self.run(stmt, params).fetchone()
        return None if row is None else row[0]

    def raw(self, sql: str) -> None:
        """A statement without parameters (SAVEPOINT and its kin)."""
        try:
            self._cursor.execute(sql)
        except self._error as exc:
            raise DBAPIError.instance(sql, (), exc, self._error) from exc

    def close(self) -> None:
        self._cursor.close()


class Inserts:
    """INSERTs of a table for each set of columns given, as SQLAlchemy's insert().values(**row)
    would run them: a column left out gets its scalar Python default, as SQLAlchemy gives it."""

    def __init__(self, table: Table, dialect: Dialect, returning: bool) -> None:
        self.table = table
        self.dialect = dialect
        self.returning = returning
        self.defaults = {c.key: c.default.arg for c in table.columns  # type: ignore[attr-defined]
                         if c.default is not None and c.default.is_scalar}
        self._by_columns: dict[tuple[str, ...], Prepared] = {}

    def row(self, values: Mapping[str, Any]) -> tuple[Prepared, dict[str, Any]]:
        row = {**self.defaults, **values}
        key = tuple(row)
        stmt = self._by_columns.get(key)
        if stmt is None:
            ins = insert(self.table).values({k: bindparam(k, type_=self.table.c[k].type) for k in key})
            stmt = Prepared(ins.returning(self.table.c.id) if self.returning else ins, self.dialect)
            self._by_columns[key] = stmt
        return stmt, row
