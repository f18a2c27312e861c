"""The archive: its folders (layout.py), durable writes (durable.py), header parsing
(header.py) and the one ingest path (ingest.py); `open_archive` ties the folders to
their index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from dicomnode.errors import ArchiveError
from dicomnode.storage.archive.durable import clean_stale_temp, make_dirs_durable
from dicomnode.storage.archive.layout import INDEX_FILE, Layout, safe_name
from dicomnode.storage.audit import AuditLog
from dicomnode.storage.index.db import Database
from dicomnode.storage.index.rows import Index
from dicomnode.storage.jobs import JobQueue


@dataclass
class Archive:
    """An open archive: where its files are, its index, and its job queue."""

    layout: Layout
    db: Database
    index: Index
    jobs: JobQueue
    audit: AuditLog


def open_archive(root: Path, db_url: str | None = None, create: bool = True, node: str = "") -> Archive:
    """Open the archive at `root` and its index (migrated to the current schema).

    With `create` (the commands that store: serve, import, get) the folders
    are made if needed and temp files of dead processes are removed. Without
    it (everything that only reads or edits what is there) an archive must
    already be there: a mistyped --storage never leaves an empty archive behind.
    Any problem is an ArchiveError naming the folder or database. A named `node` (one of several
    sharing the archive) has temp files of its own (Layout.tmp), and cleans only those.
    """
    layout = Layout(root.expanduser().resolve(), safe_name(node))
    url = db_url or layout.default_index_url
    missing = ArchiveError(f"no archive at {layout.root} (`dicomnode serve` or `dicomnode import` makes one)")
    if not create and db_url is None and not (layout.objects.is_dir() and (layout.root / INDEX_FILE).is_file()):
        raise missing
    try:
        if create:
            for d in (layout.objects, layout.tmp):
                make_dirs_durable(d)
            clean_stale_temp(layout.tmp)
        db = Database(url, must_exist=not create)  # a named database is checked first: its error says more
        if not layout.objects.is_dir():
            raise missing
    except OSError as exc:
        raise ArchiveError(f"cannot open the archive at {layout.root}: {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if exc.filename else ''}") from exc
    except SQLAlchemyError as exc:
        raise ArchiveError(f"cannot open the index of {layout.root}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0]}") from exc
    return Archive(layout, db, Index(db), JobQueue(db), AuditLog(layout.audit))
