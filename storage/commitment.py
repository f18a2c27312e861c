"""Storage commitment (PS3.4 Annex J): may the archive take responsibility for these instances?

Only what is in the archive now, as what the requestor says it is, and
intact: an instance is committed when the index holds its SOP Instance UID
with the same SOP Class UID and its stored file still hashes to the SHA-256
recorded when it was received. Anything else is a failure with the reason
code of PS3.4 Table J.3-2 (0x0112 no such object instance, 0x0119 class-
instance conflict, 0x0110 processing failure: a file missing or changed).
Protocol-free: node/dimse/commitment.py speaks N-ACTION/N-EVENT-REPORT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.check import file_sha256
from dicomnode.storage.index.rows import Index

PROCESSING_FAILURE, NO_SUCH_OBJECT, CLASS_INSTANCE_CONFLICT = 0x0110, 0x0112, 0x0119


@dataclass
class Verdict:
    committed: list[tuple[str, str]] = field(default_factory=list)  # (SOP Class UID, SOP Instance UID)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # ... reason code, words


def verify(layout: Layout, index: Index, references: list[tuple[str, str]]) -> Verdict:
    """Judge each (SOP Class UID, SOP Instance UID) the requestor names."""
    verdict = Verdict()
    stored = index.stored_files([uid for _cls, uid in references])
    for sop_class, uid in references:
        row = stored.get(uid)
        if row is None:
            verdict.failed.append((sop_class, uid, NO_SUCH_OBJECT, "not in the archive"))
            continue
        archived_class, rel, sha = row
        if archived_class != sop_class:
            verdict.failed.append((sop_class, uid, CLASS_INSTANCE_CONFLICT, f"archived as {archived_class}"))
            continue
        try:
            intact = file_sha256(layout.absolute(rel)) == sha
        except OSError as exc:
            verdict.failed.append((sop_class, uid, PROCESSING_FAILURE, f"stored file unreadable: {exc.strerror}"))
            continue
        if intact:
            verdict.committed.append((sop_class, uid))
        else:
            verdict.failed.append((sop_class, uid, PROCESSING_FAILURE, "stored file changed since it was received"))
    return verdict
