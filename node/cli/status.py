"""`dicomnode status`: is the node running, can it store, what does it hold; for an operator what
/readyz and /metrics say to a machine (storage/health.py for the archive, node/metrics.py for
what the running node counted). It reads the archive directly, so it works with `--no-web` too,
and never takes the run marker's lock (a starting `serve` must get it)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import typer
from rich.table import Table

from dicomnode.errors import ArchiveError
from dicomnode.node import metrics, services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, DbOpt, JsonOpt, StorageOpt
from dicomnode.storage import health
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.recovery import RunMarker


def status(config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Running or not, ready or not (index, free disk), counts, jobs, last arrival; exit 1 unless running and ready."""
    s = c.settings(config, storage=storage, db=db)
    layout = Layout(s.storage_path.expanduser().resolve())
    pid = RunMarker(layout).running_pid()
    try:
        snap = health.snapshot(services.archive(s), s.min_free_mb * health.MB)
    except ArchiveError as exc:  # no archive there, or an index that cannot be opened
        snap = health.Snapshot(health.free_bytes(layout), s.min_free_mb * health.MB, str(exc))
    problems = ([] if pid else ["the node is not running"]) + snap.problems
    report: dict[str, Any] = {
        "ready": not problems, "problems": problems, "running": pid is not None, "pid": pid,
        "archive": str(layout.root), "index": {"up": snap.index_error is None, "error": snap.index_error},
        "disk": {"free_bytes": snap.free_bytes, "min_free_bytes": snap.min_free_bytes},
        **snap.counts, "jobs": snap.jobs,
        "last_received_at": snap.last_received_at.replace(tzinfo=UTC).isoformat() if snap.last_received_at else None,
        # what this run counted, when there is a run (a stopped node's files are a past run's)
        **(_counted(metrics.read(layout.metrics)) if pid else {}),
    }
    if json_out:
        c.emit_json(report)
    else:
        _print(report)
    raise typer.Exit(c.EXIT_OK if not problems else c.EXIT_FAIL)


def _counted(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
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


def _print(r: dict[str, Any]) -> None:
    state = "[green]ready[/]" if r["ready"] else "[red]not ready: " + "; ".join(r["problems"]) + "[/]"
    t = Table(title=f"dicomnode {state}", show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("node", f"running, PID {r['pid']}" if r["running"] else "not running")
    for lst in r.get("listeners", []):
        t.add_row("listening", f"{lst['kind']} {lst['address']}")
    t.add_row("archive", r["archive"])
    t.add_row("index", "up" if r["index"]["up"] else f"[red]{r['index']['error']}[/]")
    mb = health.MB
    t.add_row("free disk", f"{r['disk']['free_bytes'] // mb:,} MB (min_free_mb {r['disk']['min_free_bytes'] // mb:,})")
    if "instances" in r:
        t.add_row("held", f"{r['patients']:,} patients, {r['studies']:,} studies, {r['series']:,} series, "
                          f"{r['instances']:,} instances, {r['bytes'] / 1e6:,.1f} MB")
        t.add_row("jobs", ", ".join(f"{n} {state}" for state, n in r["jobs"].items()))
    t.add_row("last received", r["last_received_at"] or "never")
    if r["running"]:
        t.add_row("associations", f"{r['associations_open']} open, {r['associations']} since start, "
                                  f"{r['associations_rejected']} rejected")
        t.add_row("objects", ", ".join(f"{n} {code}" for code, n in sorted(r["received_objects"].items())) or "none")
        t.add_row("job outcomes", "; ".join(f"{a}: " + ", ".join(f"{n} {o}" for o, n in outs.items())
                                           for a, outs in sorted(r["job_outcomes"].items())) or "none")
    c.out.print(t)


def register(app: typer.Typer) -> None:
    app.command()(status)
