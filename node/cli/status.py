"""`dicomnode status`: is the node running, can it store, what does it hold; for an operator what
/readyz and /metrics say to a machine (storage/health.py for the archive, node/metrics.py for
what the running node counted). It reads the archive directly, so it works with `--no-web` too,
and never takes the run marker's lock (a starting `serve` must get it)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from dicomnode.node import status as node_status
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, DbOpt, JsonOpt, StorageOpt
from dicomnode.storage import health


def status(config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Running or not, ready or not (index, free disk), counts, jobs, last arrival; exit 1 unless running and ready."""
    report = node_status.report(c.settings(config, storage=storage, db=db))
    if json_out:
        c.emit_json(report)
    else:
        _print(report)
    raise typer.Exit(c.EXIT_OK if report["ready"] else c.EXIT_FAIL)


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
