"""What the front ends share, so that the CLI, the DIMSE handlers, the pipeline and the web
API to come do the same thing the same way: open the archive the settings name, make its
ingester, find the files behind a UID, delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive, durable, open_archive
from dicomnode.storage.archive.ingest import DuplicatePolicy, Ingester, Plan
from dicomnode.storage.query.listing import find_any, list_level
from dicomnode.storage.query.sql import UNIQUE_KEYS


def archive(settings: Settings) -> Archive:
    """The archive and index the settings name (made on first use)."""
    return open_archive(settings.storage_path, settings.db_url)


def ingester(settings: Settings, arc: Archive, plan: Plan | None = None) -> Ingester:
    """The archive's ingest path with the settings' policies; on-arrival jobs by the settings' rules
    unless another plan is given."""
    return Ingester(arc.layout, arc.index, DuplicatePolicy(settings.duplicate_policy),
                    settings.min_free_mb * 1024 * 1024, plan=plan or settings.actions_for)


def instance_files(arc: Archive, uid: str) -> list[Path] | None:
    """The files of a study, series or instance UID, in arrival order; None when the UID is not archived."""
    level, _row = find_any(arc.db, uid)
    if level is None:
        return None
    return [arc.layout.absolute(r["path"]) for r in list_level(arc.db, "IMAGE", {UNIQUE_KEYS[level]: uid})]


@dataclass
class Deleted:
    instances: int
    files_removed: int


def delete(arc: Archive, uid: str) -> Deleted | None:
    """Remove a study, series or instance: index rows first, then its files and their reports.

    In that order a crash in between leaves orphan files (which `check
    --repair` removes or indexes), never a row without its file. None when
    the UID is not archived.
    """
    paths = arc.index.delete(uid)
    if not paths:
        return None
    removed = 0
    for rel in paths:
        dcm = arc.layout.absolute(rel)
        removed += durable.remove(dcm)
        durable.remove(arc.layout.report_path(dcm))
    return Deleted(len(paths), removed)
