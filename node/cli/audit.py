"""`dicomnode audit`: reading the audit trail (storage/audit.py) of the archive."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional

import typer

from dicomnode.node import services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, JsonOpt, StorageOpt
from dicomnode.storage.audit import EVENTS

_AGO = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_time(text: str) -> datetime:
    """`30m`, `2h`, `7d` ago, or an ISO date/time (UTC when it names no zone)."""
    m = _AGO.match(text.strip())
    if m:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[m[2]]: int(m[1])})
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: a duration (30m, 2h, 7d) or a date/time (2026-11-29T08:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


WHO = ("aet", "host", "user")
WHAT = ("study", "series", "sop", "uid", "copy", "destination", "service", "level", "matches", "instances",
        "failed", "action", "status", "reason", "by", "via", "out")


def audit(since: Annotated[Optional[str], typer.Option("--since", help="30m, 2h, 7d, or a date/time")] = None,
          event: Annotated[Optional[list[str]], typer.Option("--event", help=f"only these: {', '.join(EVENTS)}")]
          = None,
          failures: Annotated[bool, typer.Option("--failures", help="only failed outcomes")] = False,
          limit: Annotated[int, typer.Option("--limit", help="the newest N records (0 = all)")] = 200,
          config: ConfigOpt = None, storage: StorageOpt = None, json_out: JsonOpt = False) -> None:
    """Who did what: associations, queries, stores, retrieves, exports, deletions, de-identification."""
    s = c.settings(config, storage=storage)
    try:
        start = since_time(since) if since else None
    except ValueError as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_USAGE) from None
    unknown = [e for e in event or [] if e not in EVENTS]
    if unknown:
        c.error(f"--event {', '.join(unknown)}: one of {', '.join(EVENTS)}")
        raise typer.Exit(c.EXIT_USAGE)
    trail = services.audit_log(s)
    if trail is None:
        c.error(f"no archive at {s.storage_path.resolve()}")
        raise typer.Exit(c.EXIT_FAIL)
    rows = [r for r in trail.read(start) if (not event or r["event"] in event)
            and (not failures or r.get("outcome") == "failure")]
    rows = rows[-limit:] if limit > 0 else rows
    if json_out:
        c.emit_json(rows)
        return
    c.out.print(c.table(f"audit: {len(rows)} record(s)", ["time", "event", "outcome", "who", "what"],
                        ([r["time"], r["event"], r.get("outcome", ""), _join(r, WHO), _join(r, WHAT)]
                         for r in rows)))


def _join(r: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k}={r[k]}" for k in keys if k in r)


def register(app: typer.Typer) -> None:
    app.command()(audit)
