"""Taking objects out of the archive: by an operator (`dicomnode delete`, the anonymize action's
delete_original) or by recycling (quota.py), the same way.

Index rows go first, in one transaction, then the files and their analysis
reports. In that order a crash in between leaves orphan files (which `check
--repair` removes or indexes), never a row without its file.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode.storage.archive import durable
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.index.rows import Candidate, Index, Removed


@dataclass
class Deleted:
    instances: int
    files_removed: int
    bytes: int = 0  # the instances' file sizes, as indexed


def delete(layout: Layout, index: Index, uid: str) -> Deleted | None:
    """Remove a study, series or instance; None when the UID is not archived."""
    return _remove_files(layout, index.delete(uid))


def recycle(layout: Layout, index: Index, seen: Candidate) -> Deleted | None:
    """Remove a study recycling chose, unless it changed since (see Index.recycle); None then."""
    return _remove_files(layout, index.recycle(seen))


def _remove_files(layout: Layout, removed: Removed | None) -> Deleted | None:
    if removed is None or not removed.paths:
        return None
    gone = 0
    for rel in removed.paths:
        dcm = layout.absolute(rel)
        gone += durable.remove(dcm)
        durable.remove(layout.report_path(dcm))
    return Deleted(len(removed.paths), gone, removed.bytes)
