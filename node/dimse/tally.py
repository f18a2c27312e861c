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
from dataclasses import dataclass
from typing import Any

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

    def for_process(self, region: int) -> Tally:
        """The view of receiving process `region` (1, 2 ...; the main process is 0), to pass to it."""
        view = Tally.__new__(Tally)
        view.processes, view.rows, view.table, view.region = self.processes, self.rows, self.table, region
        view._lock = threading.Lock()
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def take(self, assoc: int, host: str, live: set[int]) -> int | None:
        """A row for a new connection (waiting for its request), or None when the region is full.
        Rows of this process's connections that are gone (`live`: the ids of those still open) are
        taken back first: a connection whose close event never came cannot hold a row for ever."""
        t, pid = self.table, os.getpid()
        start = self.region * self.rows
        with self._lock:
            free = None
            for row in range(start, start + self.rows):
                at = row * COLS
                if t[at + PID] == pid and t[at + ASSOC] not in live:
                    t[at + PID] = 0
                if t[at + PID] != pid and free is None:
                    free = at  # a free row, or one a dead process of this region (a restart) left
            if free is None:
                return None
            t[free + ASSOC], t[free + STATE], t[free + HOST], t[free + AET] = assoc, WAITING, key(host), 0
            t[free + PID] = pid  # last: a reader counts the row only once it is whole
            return free

    def ask(self, row: int, aet: str) -> None:
        """The connection's A-ASSOCIATE-RQ arrived, from `aet`."""
        self.table[row + AET] = key(aet)
        self.table[row + STATE] = ASKED

    def drop(self, row: int) -> None:
        if self.table[row + PID] == os.getpid():
            self.table[row + PID] = 0

    def count(self, state: int, host: str, aet: str = "") -> Counts:
        """Connections in `state` across every live process: in all, from `host`, of `aet`."""
        rows = memoryview(self.table).cast("B").cast("q").tolist()  # one copy, then plain ints
        host_key, aet_key = key(host), key(aet) if aet else -1
        alive: dict[int, bool] = {}
        out = Counts()
        for at in range(0, len(rows), COLS):
            pid = rows[at + PID]
            if not pid or rows[at + STATE] != state:
                continue
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                continue
            out.total += 1
            out.host += rows[at + HOST] == host_key
            out.aet += rows[at + AET] == aet_key
        return out


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
