"""The node's state for an operator: running or not, ready or not, what it holds and what its
run counted. One report for `dicomnode status` (node/cli/status.py) and the console's status
page (node/web/console.py), so both say the same.

It reads the archive directly (storage/health.py) and the run's counters (node/metrics.py), so
it works with `--no-web` too, and never takes the run marker's lock (a starting `serve` must get it).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from dicomnode.errors import ArchiveError
from dicomnode.node import metrics, services
from dicomnode.node.settings import Settings
from dicomnode.storage import health
from dicomnode.storage.archive import Archive
from dicomnode.storage.archive.layout import Layout, safe_name
from dicomnode.storage.index.models import now
from dicomnode.storage.recovery import RunMarker


def report(s: Settings, arc: Archive | None = None, today: bool = False) -> dict[str, Any]:
    """The report (of `arc` when the caller has the archive open); with `today`, also what arrived
    since midnight (UTC) and the analysis findings."""
    layout = Layout(s.storage_path.expanduser().resolve(), safe_name(s.name))
    running = dict(RunMarker.running(layout))
    pid = running.get(layout.node) or next(iter(running.values()), None)
    try:
        arc = arc or services.archive(s)
        snap = health.snapshot(arc, s.min_free_mb * health.MB)
    except ArchiveError as exc:  # no archive there, or an index that cannot be opened
        snap = health.Snapshot(health.free_bytes(layout), s.min_free_mb * health.MB, str(exc))
    problems = ([] if pid else ["the node is not running"]) + snap.problems
    out: dict[str, Any] = {
        "ready": not problems, "problems": problems, "running": pid is not None, "pid": pid,
        "archive": str(layout.root), "index": {"up": snap.index_error is None, "error": snap.index_error},
        "disk": {"free_bytes": snap.free_bytes, "min_free_bytes": snap.min_free_bytes},
        **snap.counts, "jobs": snap.jobs,
        "last_received_at": snap.last_received_at.replace(tzinfo=UTC).isoformat() if snap.last_received_at else None,
        # what this run counted, when there is a run (a stopped node's files are a past run's)
        **({"nodes": [{"name": n, "pid": p} for n, p in running.items()]} if len(running) > 1 else {}),
        **(counted(metrics.read(layout.metrics)) if pid else {}),
    }
    if today and arc is not None and not snap.index_error:
        out["today"] = health.arrivals_and_findings(arc, health.start_of_day(now()))
    return out


def counted(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """The run's counters, summed over the labels an operator does not need here."""

    def by(name: str, *keys: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for labels, value in samples.get(name, []):
            if not keys:
                out["all"] = out.get("all", 0) + int(value)
                continue
            level = out
            for k in keys[:-1]:
                level = level.setdefault(labels[k], {})
            level[labels[keys[-1]]] = level.get(labels[keys[-1]], 0) + int(value)
        return out

    return {
        "listeners": [{"kind": lb["kind"], "address": lb["address"]} for lb, v in samples.get("dicomnode_listener", [])
                      if v],
        "associations_open": by("dicomnode_associations_open").get("all", 0),
        "associations": by("dicomnode_associations_total").get("all", 0),
        "associations_rejected": by("dicomnode_associations_rejected_total").get("all", 0),
        "received_objects": by("dicomnode_received_objects_total", "status"),
        "received_bytes": by("dicomnode_received_bytes_total", "status"),
        "job_outcomes": by("dicomnode_jobs_total", "action", "outcome"),
    }
