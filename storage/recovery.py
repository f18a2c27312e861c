"""Start-up recovery: what a crash (kill -9, a power cut) can leave behind, put right before the
node listens, so that `dicomnode check` is clean after any crash without `--repair`.

What a crash can leave, by construction (storage/archive/ingest.py, commit.py):
  - temp files of objects being received, in tmp/ (open_archive removes those of dead processes);
  - objects renamed into place whose index commit never happened (orphans): complete, fsynced,
    and checked like every object before the rename. The sender was never told Success;
    they are indexed now, as the lost commit would have done, with their on-arrival jobs
    (a sender that retries finds them stored: the duplicate rule answers it);
  - the old file of an object replaced under `duplicates = overwrite`, removed only after the
    commit: it is an orphan whose instance is indexed with the new file, and goes;
  - temp files of derived files and reports (atomic_file) beside the objects and under derived/;
  - jobs left running (serve queues them again).

Where to look without reading the whole archive: `serve` holds a run marker (Layout.run_marker, locked,
holding its PID) while it runs and empties it when it stops cleanly. A marker found not empty
means the last run crashed; only the series folders changed since that run started (folder
mtime: a rename into a folder changes it) can hold its leftovers. The lock also keeps a second
`serve` off the same archive.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.storage.archive import durable
from dicomnode.storage.archive.ingest import Plan
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.check import adopt
from dicomnode.storage.index.rows import Index

log = logging.getLogger("dicomnode.recovery")

SLACK_SECONDS = 5.0  # file system timestamps are coarse and clocks step: look a little further back
BATCH = 500
YOUNG_SECONDS = 60.0  # an unindexed object this new may be another live node's, just before its commit


@dataclass
class Recovery:
    crashed: bool = False
    folders: int = 0
    indexed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    temp_removed: int = 0
    unrepairable: list[str] = field(default_factory=list)
    left_young: int = 0  # unindexed objects too new to judge while other nodes run

    def summary(self) -> str:
        return (f"{len(self.indexed)} object(s) stored but not indexed when it stopped are indexed now, "
                f"{len(self.removed)} replaced file(s) and {self.temp_removed} temp file(s) removed "
                f"({self.folders} folder(s) looked at)"
                + (f"; {self.left_young} new unindexed object(s) left to the other nodes running"
                   if self.left_young else ""))


class RunMarker:
    """The archive's run marker (Layout.run_marker: the node's own when it has a name), held (an
    exclusive lock) for as long as this serve runs."""

    def __init__(self, layout: Layout) -> None:
        self.path = layout.run_marker
        self._fd: int | None = None

    @staticmethod
    def running(layout: Layout) -> list[tuple[str, int]]:
        """Every serve running on this archive: (node name, or "" for the unnamed one; PID)."""
        found = [("", RunMarker(Layout(layout.root)).running_pid())]
        found += [(name, RunMarker(Layout(layout.root, name)).running_pid()) for name, _ in layout.named_markers()]
        return [(name, pid) for name, pid in found if pid is not None]

    def acquire(self) -> float | None:
        """Lock the marker; the start time of a last run that crashed, else None. Raises
        RuntimeError when another serve holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            held_by = self.path.read_text().strip() or "?"
            raise RuntimeError(f"another `dicomnode serve` (PID {held_by}) is running on this archive"
                               f"{' as node ' + self.path.stem if self.path.parent.name == 'run' else ''}; "
                               "several nodes on one archive need a [node] name each") from None
        self._fd = fd
        st = os.fstat(fd)
        crashed = st.st_mtime if st.st_size else None  # a clean stop leaves it empty
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)  # from now on a crash is recognised (and this run's start time known)
        durable.fsync_dir(self.path.parent)
        return crashed

    def running_pid(self) -> int | None:
        """The PID of the serve running on this archive, read without taking the lock (a status
        query must never make a starting serve fail to get it): the marker's PID if that process
        lives. A marker a crash left full names a dead process, or, rarely, a reused PID."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return None
        return int(pid) if pid.isdigit() and durable.pid_alive(int(pid)) else None

    def release(self) -> None:
        """A clean stop: nothing of this run is left to recover."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        os.close(self._fd)  # closing drops the lock
        self._fd = None


def begin_run(layout: Layout, index: Index, plan: Plan | None = None) -> tuple[RunMarker, Recovery]:
    """At serve's start, before listening: recover from a crashed last run, and mark this one."""
    marker = RunMarker(layout)
    since = marker.acquire()
    rec = Recovery()
    if since is not None:
        rec.crashed = True
        others = [name for name, _ in RunMarker.running(layout) if name != layout.node]
        recover(layout, index, since - SLACK_SECONDS, plan, rec, others_live=bool(others))
    return marker, rec


def recover(layout: Layout, index: Index, since: float, plan: Plan | None = None,
            rec: Recovery | None = None, others_live: bool = False) -> Recovery:
    """Index the orphans and remove the stale temp files in the folders changed since `since`.

    With `others_live` (other nodes share the archive and are running) an unindexed object younger
    than YOUNG_SECONDS may be another node's, placed a moment before its commit: it is left alone
    (counted; `dicomnode check --repair` indexes it later if it stays unindexed)."""
    rec = rec or Recovery()
    t0 = time.monotonic()
    candidates: list[str] = []
    for folder in _changed_folders(layout.objects, since):
        rec.folders += 1
        for entry in os.scandir(folder):
            if entry.name.endswith(durable.TMP_SUFFIX):
                rec.temp_removed += _remove_stale(Path(entry.path))
            elif entry.name.endswith(".dcm") and entry.is_file():
                candidates.append(layout.relative(Path(entry.path)))
    for folder in _changed_folders(layout.derived, since):
        rec.folders += 1
        for entry in os.scandir(folder):
            if entry.name.endswith(durable.TMP_SUFFIX):
                rec.temp_removed += _remove_stale(Path(entry.path))
    for i in range(0, len(candidates), BATCH):
        chunk = candidates[i:i + BATCH]
        known = index.known_paths(chunk)
        for rel in chunk:
            if rel in known:
                continue
            if others_live and _young(layout, rel):
                rec.left_young += 1
                continue
            done = adopt(layout, index, rel, "recovered at start-up", plan)
            if done == "indexed":
                rec.indexed.append(rel)
            elif done == "removed":
                rec.removed.append(rel)
            else:
                rec.unrepairable.append(f"{rel}: {done}")
                log.warning("cannot index %s left by the crash: %s (`dicomnode check` lists it)", rel, done)
    log.info("recovery looked at %d folder(s) in %.2f s", rec.folders, time.monotonic() - t0)
    return rec


def _young(layout: Layout, rel: str) -> bool:
    try:
        return time.time() - layout.absolute(rel).stat().st_mtime < YOUNG_SECONDS
    except FileNotFoundError:
        return True  # gone already: not ours to judge


def _changed_folders(top: Path, since: float) -> Iterator[str]:
    """Series folders (<top>/<ab>/<study>/<series>) whose mtime is `since` or later."""
    for level1 in _subfolders(str(top)):
        for study in _subfolders(level1):
            for series in _subfolders(study):
                try:
                    if os.stat(series).st_mtime >= since:
                        yield series
                except FileNotFoundError:
                    continue


def _subfolders(path: str) -> Iterator[str]:
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    yield e.path
    except FileNotFoundError:
        return


def _remove_stale(path: Path) -> int:
    """A temp file of atomic_file (`.<name>.<pid>-<random>.part`) whose process is gone."""
    stem = path.name[: -len(durable.TMP_SUFFIX)]
    pid = stem.rsplit("-", 1)[0].rsplit(".", 1)[-1]
    if pid.isdigit() and durable.pid_alive(int(pid)):
        return 0
    path.unlink(missing_ok=True)
    return 1
