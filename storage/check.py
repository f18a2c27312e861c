"""The index against the files: what a crash or a hand in the archive can leave behind.

By construction a crash leaves at most an *orphan* (a complete file renamed
into place whose index commit never happened, so it was never acknowledged)
or a stale temp file. Missing files and hash mismatches mean something
outside the node touched the archive, or the disk failed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.storage.archive import durable
from dicomnode.storage.archive.header import HeaderError, index_values, read_header
from dicomnode.storage.archive.ingest import Plan, identity_problem
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.index.rows import FileFacts, Index, PutResult


@dataclass
class CheckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    unrepairable: list[str] = field(default_factory=list)
    size_counter: tuple[int, int] | None = None  # (counter, sum of file sizes) when they differ

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.orphans or self.mismatched or self.size_counter)

    def as_dict(self) -> dict[str, object]:
        return {"consistent": self.consistent, "checked": self.checked, "missing_files": self.missing,
                "orphan_files": self.orphans, "hash_mismatches": self.mismatched,
                "size_counter": list(self.size_counter) if self.size_counter else None,
                "repaired": self.repaired, "unrepairable": self.unrepairable}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check(layout: Layout, index: Index, verify_hashes: bool = True,
          progress: Callable[[], None] | None = None, live: bool = False) -> CheckReport:
    """The index against the files. `live`: a node is running on the archive and stores while this
    runs, so the listing of files and the rows are not one snapshot: a row whose file came after
    the listing is looked for again, and a file without a row is an orphan only if the index still
    does not know it afterwards and, when live, it is older than IN_FLIGHT_SECONDS (a file is
    renamed into place a moment before its row commits)."""
    report = CheckReport()
    on_disk = {layout.relative(p) for p in layout.objects.rglob("*.dcm")}
    for rel, sha, _uid in index.all_files():
        report.checked += 1
        if rel not in on_disk and not layout.absolute(rel).exists():
            report.missing.append(rel)
        else:
            on_disk.discard(rel)
            if verify_hashes and file_sha256(layout.absolute(rel)) != sha:
                report.mismatched.append(rel)
        if progress:
            progress()
    unknown = on_disk - index.known_paths(sorted(on_disk)) if on_disk else set()
    report.orphans = sorted(rel for rel in unknown if not live or _settled(layout.absolute(rel)))
    counter, total = index.bytes_counted()  # the size quota's running total (rows.py)
    if counter != total:
        report.size_counter = (counter, total)
    return report


IN_FLIGHT_SECONDS = 30.0


def _settled(path: Path) -> bool:
    """Older than a store in flight (or gone since the listing: then not an orphan either)."""
    try:
        return time.time() - path.stat().st_mtime > IN_FLIGHT_SECONDS
    except FileNotFoundError:
        return False


def repair(layout: Layout, index: Index, report: CheckReport) -> None:
    """Drop rows without files; index orphans (or remove those whose instance is indexed elsewhere)."""
    report.repaired["rows_dropped"] = index.drop_instances(report.missing)
    adopted = removed = 0
    for rel in report.orphans:
        done = adopt(layout, index, rel, "check --repair")
        if done == "indexed":
            adopted += 1
        elif done == "removed":
            removed += 1
        else:
            report.unrepairable.append(f"{rel}: {done}")
    report.repaired["orphans_indexed"] = adopted
    report.repaired["orphans_removed_as_duplicates"] = removed
    if report.size_counter:
        index.count_bytes_again()
        report.repaired["size_counter"] = 1


def adopt(layout: Layout, index: Index, rel: str, peer: str, plan: Plan | None = None) -> str:
    """An orphan (a complete object file the index does not list) indexed, as its lost commit would
    have done, with the on-arrival jobs `plan` gives it (none without one); or removed when its
    instance is indexed with another file.
    Returns "indexed", "removed", or why it can be neither."""
    path = layout.absolute(rel)
    try:
        header = read_header(path)
    except HeaderError as exc:
        return str(exc)
    problem = identity_problem(header)  # the same checks as at ingest
    if problem is not None:
        return problem.comment
    values = index_values(header)
    facts = FileFacts(rel, path.stat().st_size, file_sha256(path), None, peer)
    actions = plan(None, values["SERIES"].get("Modality"), values["IMAGE"]["SOPClassUID"]) if plan else []
    result, other = index.put_instance(values, facts, actions=actions)
    if result is PutResult.EXISTS:
        if other == rel:
            return "indexed"  # indexed meanwhile (another process committed it): nothing to do
        durable.remove(path)
        return "removed"
    return "indexed"
