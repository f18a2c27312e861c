"""The audit trail: who did what to which objects, one JSON object per line.

In the spirit of the IHE ATNA / DICOM audit messages (PS3.15 A.5): each record
has its time (UTC), an `event` (association, query, stored, retrieve,
export, delete, anonymize), an `outcome` (success | failure), who (calling
AE title, address, user) and what (study, series and SOP instance UIDs,
counts, a reason). Every process of a node (the DIMSE listener, the web side,
the worker, the CLI) appends to the same file: each record is one write() of
a whole line to a file opened O_APPEND, under an flock that also serialises
rotation (at `max_bytes`, kept as audit.jsonl.1 ... .N, the oldest dropped).
Writing never fails the work it records: a problem is logged once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("dicomnode")

EVENTS = ("association", "query", "stored", "retrieve", "export", "delete", "anonymize")
MAX_BYTES = 16 << 20
KEEP = 10


class AuditLog:
    def __init__(self, folder: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.folder = folder
        self.path = folder / "audit.jsonl"
        self.max_bytes = max_bytes
        self.keep = keep
        self._warned = False

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        """Append one record; None values are left out."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
                 "outcome": outcome, **{k: v for k, v in fields.items() if v is not None and v != ""}}
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._rotate_if_full()
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    try:
                        os.write(fd, line)
                    finally:
                        os.close(fd)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("audit log %s cannot be written: %s (further failures not logged)", self.path,
                            exc.strerror or exc)

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
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
