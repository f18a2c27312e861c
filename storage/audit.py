"""The audit trail: who did what to which objects, one JSON object per line.

In the spirit of the IHE ATNA / DICOM audit messages (PS3.15 A.5): each record
has its time (UTC), an `event` (association, query, stored, retrieve,
export, delete, anonymize), an `outcome` (success | failure), who (calling
AE title, address, user) and what (study, series and SOP instance UIDs,
counts, a reason). Every process of a node (the DIMSE listener, the web side,
the worker, the CLI) appends to the same file: each record is one write() of
a whole line to a file kept open with O_APPEND, under an flock that also serialises
rotation (at `max_bytes`, kept as audit.jsonl.1 ... .N, the oldest dropped).
Writing never fails the work it records: a problem is logged once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("dicomnode")

EVENTS = ("association", "query", "stored", "retrieve", "export", "delete", "anonymize")
MAX_BYTES = 16 << 20
KEEP = 10


class AuditLog:
    """The trail of one archive, for this process. The file and the lock stay open between
    records (a store costs one record: opening both each time was most of its cost); a
    rotation by another process is noticed by the file's inode, under the lock."""

    def __init__(self, folder: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.folder = folder
        self.path = folder / "audit.jsonl"
        self.max_bytes = max_bytes
        self.keep = keep
        self._warned = False
        self._threads = threading.Lock()  # flock excludes processes, not the threads sharing its fd
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._inode = 0

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        """Append one record; None values are left out."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
                 "outcome": outcome, **{k: v for k, v in fields.items() if v is not None and v != ""}}
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        try:
            with self._threads:
                self._append(line)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("audit log %s cannot be written: %s (further failures not logged)", self.path,
                            exc.strerror or exc)

    def _append(self, line: bytes) -> None:
        if self._lock_fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            try:
                st: os.stat_result | None = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_size >= self.max_bytes:
                self._rotate()
                st = None
            if self._fd is not None and (st is None or st.st_ino != self._inode):  # rotated (here or elsewhere)
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._inode = os.fstat(self._fd).st_ino
            os.write(self._fd, line)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.folder / f"audit.jsonl.{i}"
            if older.exists():
                os.replace(older, self.folder / f"audit.jsonl.{i + 1}")
        os.replace(self.path, self.folder / "audit.jsonl.1")
        (self.folder / f"audit.jsonl.{self.keep + 1}").unlink(missing_ok=True)

    def read(self, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every record, oldest first (rotated files included), from `since` on."""
        files = sorted(self.folder.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]) if
                       p.suffix[1:].isdigit() else 0)
        for path in [*files, self.path]:
            try:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # a line cut by a crash
                        if since is None or datetime.fromisoformat(entry["time"]) >= since:
                            yield entry
            except FileNotFoundError:
                continue
