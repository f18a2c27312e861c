"""The archive on disk: the one place that knows where anything lives.

    <root>/objects/<ab>/<study>/<series>/<instance>-<content>.dcm   the objects
    <root>/objects/.../<instance>-<content>.dcm.analysis.json       an object's analysis report
    <root>/derived/<ab>/<study>/<series>/...                        conversions (PNG, MP4, ...)
    <root>/tmp/                 temp files being received (same file system: renames are atomic);
                                tmp/<node>/ for a named node (several nodes sharing the archive)
    <root>/run/metrics/         the running node's Prometheus values (node/metrics.py; emptied at start);
                                run/metrics-<node>/ for a named node
    <root>/serve.run            the run marker of `serve` (storage/recovery.py); run/<node>.run for a named node
    <root>/secret/anonymize.key  the node's pseudonym key (made on first use, mode 0600)
    <root>/audit/audit.jsonl    the audit trail (storage/audit.py), rotated as audit.jsonl.1 ...
    <root>/index.sqlite         the default index

Every path component under objects/ and derived/ is a hash: of the Study,
Series and SOP Instance UIDs and of the content. Nothing a peer sends ever
becomes part of a path, and two versions of one instance (overwrite policy)
have different names, so the old file can stay until the index points at
the new one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

OBJECTS = "objects"
DERIVED = "derived"
TMP = "tmp"
METRICS = "metrics"
SECRET = "secret"
AUDIT = "audit"
INDEX_FILE = "index.sqlite"
RUN_MARKER = "serve.run"
REPORT_SUFFIX = ".analysis.json"


def safe_name(node: str) -> str:
    """A node's name as a file or folder name (run markers, temp and metrics folders)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", node)[:100]


def uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:20]


@dataclass(frozen=True)
class Layout:
    root: Path
    # a named node (one of several sharing the archive; safe_name'd): its own temp folder (its
    # start-up clean-up never touches another node's), run marker and metrics folder
    node: str = ""

    @property
    def objects(self) -> Path:
        return self.root / OBJECTS

    @property
    def tmp(self) -> Path:
        return self.root / TMP / self.node if self.node else self.root / TMP

    @property
    def metrics(self) -> Path:
        """The running node's metric values, one mmap file per process (prometheus-client's
        multiprocess mode), emptied when `serve` starts. Not under tmp/: that holds only objects
        being received (and is checked to be empty after failures). A named node has its own: nodes
        sharing an archive would otherwise reset each other's counts."""
        return self.root / "run" / (f"{METRICS}-{self.node}" if self.node else METRICS)

    @property
    def run_marker(self) -> Path:
        """Held by `serve` while it runs (storage/recovery.py); one per named node."""
        return self.root / "run" / f"{self.node}.run" if self.node else self.root / RUN_MARKER

    def named_markers(self) -> list[tuple[str, Path]]:
        """(node, run marker) of every named node that has run on this archive."""
        run = self.root / "run"
        return [(p.stem, p) for p in sorted(run.glob("*.run"))] if run.is_dir() else []

    @property
    def derived(self) -> Path:
        return self.root / DERIVED

    @property
    def audit(self) -> Path:
        return self.root / AUDIT

    @property
    def pseudonym_key(self) -> Path:
        """The node's secret key for de-identification pseudonyms (made on first use)."""
        return self.root / SECRET / "anonymize.key"

    @property
    def default_index_url(self) -> str:
        """SQLite in the archive folder, the index when no other database is configured."""
        return f"sqlite:///{(self.root / INDEX_FILE).resolve()}"

    def object_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> Path:
        study = uid_hash(study_uid)
        return (self.objects / study[:2] / study / uid_hash(series_uid)
                / f"{uid_hash(sop_uid)}-{sha256[:12]}.dcm")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def absolute(self, rel: str) -> Path:
        return self.root / rel

    def report_path(self, dcm: Path) -> Path:
        """The analysis report of an archived object lies beside it."""
        return dcm.with_name(dcm.name + REPORT_SUFFIX)

    def derived_folder(self, dcm: Path) -> Path:
        """Where conversions of an archived object go: its own folder's mirror under derived/."""
        return self.derived / Path(self.relative(dcm)).parent
