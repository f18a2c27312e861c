"""Group commit: the last, durable steps of stores that arrive together, done once for all of them.

A store ends with three waits on the disk: the file's fsync, its folder's
fsync after the rename, and the index transaction's commit. The first is the
store's own (each file is fsynced by the thread that wrote it, concurrently
with the others); the other two are shared here. Stores that reach the
committer while a commit is running queue up; when it ends, one of them (the
leader) renames all the queued files, fsyncs each of their folders once, and
writes all their index rows in one transaction. Nobody waits for a timer: a
lone store commits at once, exactly as before, and the batch grows only with
the load (several associations, STOW parts ingested side by side).

Every store still learns its own result only after its file and its rows
are durable, so Success is never sent early; the order of the steps (file,
rename, folder, rows) and so what a crash can leave behind are unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from dicomnode.storage.archive import durable
from dicomnode.storage.index.rows import Index, Put, PutResult

log = logging.getLogger("dicomnode.ingest")

MAX_BATCH = 64


@dataclass
class Unit:
    """One store's share of a commit: the sealed temp file, its final name and its rows."""

    tmp: Path
    final: Path
    put: Put
    was_there: bool = False  # the final name existed before (identical content of an archived object)
    placed: bool = False
    result: tuple[PutResult, str | None] | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class Committer:
    """Leader/follower group commit over one archive's index (one per process)."""

    def __init__(self, index: Index, max_batch: int = MAX_BATCH) -> None:
        self.index = index
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue: list[Unit] = []
        self._leading = False
        self.batches = 0  # commits done, and the units they held (for the benchmarks)
        self.units = 0

    def commit(self, unit: Unit) -> Unit:
        """Place the unit's file and write its rows, with whatever else is waiting; returns the unit
        with `result` set, or `error` (an OSError of the placement, or the index's exception)."""
        with self._cv:
            self._queue.append(unit)
            while not unit.done:
                if self._leading:
                    self._cv.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    self._leading = False
                    self._cv.notify_all()
        return unit

    def _run(self, batch: list[Unit]) -> None:
        try:
            self._place(batch)
            ready = [u for u in batch if u.error is None]
            if ready:
                try:
                    got = self.index.put_many([u.put for u in ready])
                except Exception as exc:  # the commit failed: nothing of the batch is indexed
                    got = [exc] * len(ready)
                for u, r in zip(ready, got):
                    if isinstance(r, Exception):
                        u.error = r
                    else:
                        u.result = r
            self.batches += 1
            self.units += len(batch)
        except BaseException as exc:  # never leave a follower waiting for ever
            for u in batch:
                if not u.done:
                    u.error = exc
            raise

    @staticmethod
    def _place(batch: list[Unit]) -> None:
        """Rename every file into place, then fsync each folder that gained one, once."""
        folders: dict[Path, list[Unit]] = {}
        for u in batch:
            try:
                u.was_there = u.final.exists()
                durable.make_dirs_durable(u.final.parent)
                os.replace(u.tmp, u.final)
                u.placed = True
                folders.setdefault(u.final.parent, []).append(u)
            except OSError as exc:
                u.error = exc
        for folder, units in folders.items():
            try:
                durable.fsync_dir(folder)
            except OSError as exc:
                for u in units:
                    u.error = exc
