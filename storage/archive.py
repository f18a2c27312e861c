"""The archive on disk: its folders and where an object's file goes.

    <root>/objects/<ab>/<study>/<series>/<instance>-<content>.dcm
    <root>/tmp/                 temp files being received (same file system)
    <root>/index.sqlite         the default index

Every path component is a hash: of the Study, Series and SOP Instance UIDs
and of the content. Nothing a peer sends ever becomes part of a path, and two
versions of one instance (overwrite policy) have different names, so the old
file can stay until the index points at the new one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from storage.db import default_url, is_sqlite, open_index
from storage.durable import clean_stale_temp, make_dirs_durable
from storage.index import Index

OBJECTS = "objects"
TMP = "tmp"


def uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:20]


@dataclass
class Layout:
    root: Path

    @property
    def objects(self) -> Path:
        return self.root / OBJECTS

    @property
    def tmp(self) -> Path:
        return self.root / TMP

    def object_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> Path:
        study = uid_hash(study_uid)
        return (self.objects / study[:2] / study / uid_hash(series_uid)
                / f"{uid_hash(sop_uid)}-{sha256[:12]}.dcm")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def absolute(self, rel: str) -> Path:
        return self.root / rel


def open_archive(root: Path, db_url: str | None = None) -> tuple[Layout, Index]:
    """Create the folders if needed, clean temp files of dead processes, open and migrate the index."""
    root = root.resolve()
    layout = Layout(root)
    for d in (layout.objects, layout.tmp):
        make_dirs_durable(d)
    clean_stale_temp(layout.tmp)
    url = db_url or default_url(root)
    _engine, sessions = open_index(url)
    return layout, Index(sessions, serialize_writes=is_sqlite(url))
