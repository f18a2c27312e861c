"""What the front ends share, so that the CLI, the DIMSE handlers, the pipeline and the web
API to come do the same thing the same way: open the archive the settings name, make its
ingester (with the settings' quotas), find the files behind a UID, delete, protect from recycling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive, open_archive, removal
from dicomnode.storage.archive.ingest import DuplicatePolicy, Ingester, Plan
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.archive.quota import Limits, QuotaPolicy
from dicomnode.storage.archive.removal import Deleted
from dicomnode.storage.audit import AuditLog
from dicomnode.storage.query.listing import find_any, list_level
from dicomnode.storage.query.sql import UNIQUE_KEYS


def archive(settings: Settings, create: bool = False) -> Archive:
    """The archive and index the settings name; made there only with `create` (see open_archive).
    Its job queue takes leases in this node's name."""
    arc = open_archive(settings.storage_path, settings.db_url, create=create, node=settings.name)
    arc.jobs.owner, arc.jobs.lease = settings.node_name, settings.job_lease_seconds
    return arc


def ingester(settings: Settings, arc: Archive, plan: Plan | None = None) -> Ingester:
    """The archive's ingest path with the settings' policies; on-arrival jobs by the settings' rules
    unless another plan is given."""
    return Ingester(arc.layout, arc.index, DuplicatePolicy(settings.duplicate_policy),
                    settings.min_free_mb * 1024 * 1024, plan=plan or settings.actions_for, limits=limits(settings),
                    audit=arc.audit)


def limits(settings: Settings) -> Limits:
    """The storage quotas the settings set (storage/archive/quota.py)."""
    return Limits(settings.max_size_gb, settings.max_studies, settings.max_patients,
                  QuotaPolicy(settings.quota_policy))


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


def delete(arc: Archive, uid: str, by: str = "operator") -> Deleted | None:
    """Remove a study, series or instance: index rows first, then its files and their reports
    (storage/archive/removal.py, shared with recycling). None when the UID is not archived."""
    gone = removal.delete(arc.layout, arc.index, uid)
    if gone is not None:
        arc.audit.record("delete", uid=uid, by=by, instances=gone.instances, bytes=gone.bytes)
    return gone


def protect(arc: Archive, uid: str, protected: bool = True) -> str | None:
    """Keep a study from recycling (or no longer): a study UID, or a series or instance UID naming its
    study. Its Study Instance UID; None when the UID is not archived."""
    return arc.index.protect(uid, protected)


def audit_log(settings: Settings) -> AuditLog | None:
    """The audit trail of the settings' archive, for commands that may run without opening it; None
    where there is no archive (recording must not make one)."""
    layout = Layout(settings.storage_path.resolve())
    return AuditLog(layout.audit) if layout.objects.is_dir() else None
