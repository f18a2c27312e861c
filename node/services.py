"""What the front ends share, so that the CLI, the DIMSE handlers, the pipeline and the web
API to come do the same thing the same way: open the archive the settings name, make its
ingester, find the files behind a UID, delete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive, durable, open_archive
from dicomnode.storage.archive.ingest import DuplicatePolicy, Ingester, Plan
from dicomnode.storage.query.listing import find_any, list_level
from dicomnode.storage.query.sql import UNIQUE_KEYS


def archive(settings: Settings, create: bool = False) -> Archive:
    """The archive and index the settings name; made there only with `create` (see open_archive)."""
    return open_archive(settings.storage_path, settings.db_url, create=create)


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
class Inputs:
    """Files found under what an operator named, and what could not be read, with the reason."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def collect_files(paths: list[Path]) -> Inputs:
    """Files given, and files below folders given (sorted, hidden ones skipped), recursively.

    A folder that cannot be listed is not skipped in silence: it is reported
    in `unreadable` with the reason, so a command can count it as a failure.
    """
    found = Inputs()
    for p in paths:
        if not p.is_dir():
            found.files.append(p)
            continue

        def failed(exc: OSError) -> None:
            found.unreadable.append((Path(exc.filename or p), exc.strerror or str(exc)))

        for folder, dirs, names in os.walk(p, onerror=failed):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.files.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
    return found


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
