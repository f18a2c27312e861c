"""The archive: its folders (layout.py), durable writes (durable.py), header parsing
(header.py) and the one ingest path (ingest.py); `open_archive` ties the folders to
their index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.storage.archive.durable import clean_stale_temp, make_dirs_durable
from dicomnode.storage.archive.layout import Layout
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


def open_archive(root: Path, db_url: str | None = None) -> Archive:
    """Create the folders if needed, clean temp files of dead processes, open and migrate the index."""
    layout = Layout(root.resolve())
    for d in (layout.objects, layout.tmp):
        make_dirs_durable(d)
    clean_stale_temp(layout.tmp)
    db = Database(db_url or layout.default_index_url)
    return Archive(layout, db, Index(db), JobQueue(db))
