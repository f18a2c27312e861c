"""The node's open DIMSE connections, counted across all its receiving processes.

The association limits (`max_associations`, `..._per_host`, `..._per_aet`,
`max_pending_per_host`; guard.Admission) are the node's, however many
processes share its port ([network] receivers): a peer the kernel spreads
over two processes must not get twice its allowance. So each connection is a
row in a table in shared memory (multiprocessing.RawArray) that the main
process creates before it starts the others: the owner's PID, the
association, its state (waiting for its request, or asked), and keys of the
peer's address and calling AE title.

No lock: each process writes only its own region of rows, and a process
killed with kill -9 cannot leave the others waiting on one; its rows are
ignored from then on (its PID is gone). A connection takes its row first
and counts after, so two arriving at once in two processes at the limit
both see each other: both may be refused (the peer retries a transient
rejection), never both admitted over it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomnode.storage.archive.durable import pid_alive

COLS = 5  # pid, association, state, host key, AE key
PID, ASSOC, STATE, HOST, AET = range(COLS)
WAITING, ASKED = 1, 2
ROWS_PER_PROCESS = 1024  # connections one process holds at once, waiting ones included; beyond, refused


def key(text: str) -> int:
    """A stable 63-bit key of an address or AE title (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class Counts:
    total: int = 0
    host: int = 0
    aet: int = 0


class Tally:
    """One process's view of the shared table: it writes its own region, it reads them all."""

    def __init__(self, processes: int = 1, rows_per_process: int = ROWS_PER_PROCESS) -> None:
        self.processes = processes
        self.rows = rows_per_process
        self.table: Any = multiprocessing.get_context("spawn").RawArray("q", processes * rows_per_process * COLS)
        self.region = 0
        self._lock = threading.Lock()  # this process's threads take rows of its region one at a time
        self._owners: dict[int, weakref.ref[threading.Thread]] = {}  # this process's rows: who holds each

    def for_process(self, region: int) -> Tally:
        """The view of receiving process `region` (1, 2 ...; the main process is 0), to pass to it."""
        view = Tally.__new__(Tally)
        view.processes, view.rows, view.table, view.region = self.processes, self.rows, self.table, region
        view._lock = threading.Lock()
        view._owners = {}
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_owners")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._owners = {}

    def take(self, owner: threading.Thread, host: str) -> int | None:
        """A row for a new connection (waiting for its request), held by `owner` (its association),
        or None when the region is full. Rows whose owner has run and ended are taken back first: a
        connection whose close event never came cannot hold a row for ever. An owner not yet
        started holds its row (pynetdicom reports a connection before it starts its thread)."""
        t, pid = self.table, os.getpid()
        start = self.region * self.rows
        with self._lock:
            for row, ref in list(self._owners.items()):
                o = ref()
                if o is None or (o.ident is not None and not o.is_alive()):
                    self._release(row)
            # a free row, or one a dead process of this region (a restart) left
            free_rows = np.flatnonzero(self._rows()[start:start + self.rows, PID] != pid)
            if not len(free_rows):
                return None
            free = (start + int(free_rows[0])) * COLS
            t[free + ASSOC], t[free + STATE], t[free + HOST], t[free + AET] = id(owner), WAITING, key(host), 0
            t[free + PID] = pid  # last: a reader counts the row only once it is whole
            self._owners[free] = weakref.ref(owner)
            return free

    def ask(self, row: int, aet: str) -> None:
        """The connection's A-ASSOCIATE-RQ arrived, from `aet`."""
        self.table[row + AET] = key(aet)
        self.table[row + STATE] = ASKED

    def drop(self, row: int, owner: threading.Thread) -> None:
        """The connection ended: its row is free (unless taken back and given to another already)."""
        with self._lock:
            ref = self._owners.get(row)
            if ref is not None and ref() is owner:
                self._release(row)

    def _release(self, row: int) -> None:
        del self._owners[row]
        if self.table[row + PID] == os.getpid():
            self.table[row + PID] = 0

    def count(self, state: int, host: str, aet: str = "") -> Counts:
        """Connections in `state` across every live process: in all, from `host`, of `aet`."""
        table = self._rows()
        rows = table[np.flatnonzero(table[:, PID])]  # a copy of the rows in use: each writer fills a row before its PID
        rows = rows[(rows[:, PID] != 0) & (rows[:, STATE] == state)]
        dead = [p for p in set(rows[:, PID].tolist()) if not _alive(p)]
        if dead:
            rows = rows[~np.isin(rows[:, PID], dead)]
        host_key, aet_key = key(host), key(aet) if aet else -1
        return Counts(len(rows), int((rows[:, HOST] == host_key).sum()), int((rows[:, AET] == aet_key).sum()))

    def _rows(self) -> np.ndarray:
        """The shared table as an array of rows (a view: no copy)."""
        return np.frombuffer(self.table, dtype=np.int64).reshape(-1, COLS)


def _alive(pid: int) -> bool:
    """Whether a process runs: a receiving process killed with kill -9 stays a zombie until the main
    process reaps it, and its connections are gone from that moment."""
    if pid == os.getpid():
        return True
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): as the signal said
